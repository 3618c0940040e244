"""base_model: a tiny GPT trained on CPU for a bounded number of steps from the packed dataset. The checkpoint
folder carries weights, config, tokenizer, lineage and the loss curve."""

import dagster as dg

import kura.train.local as local
import kura.train.model as model_mod
from assets._common import output, run_versioned, source_version
from assets.automation import EAGER
from resources import StorageResource


class ModelArgs(dg.Config):
    num_layers: int = 2
    """Transformer layers."""
    hidden_size: int = 128
    """Model width."""
    num_attention_heads: int = 4
    """Attention heads."""
    ffn_hidden_size: int = 384
    """SwiGLU inner width."""
    rotary_base: float = 10000.0
    """RoPE base."""


class TrainArgs(dg.Config, local.TrainConfig):
    """Optimizer, schedule and budget (see kura.train.local.TrainConfig)."""


class BaseModelConfig(dg.Config):
    model: ModelArgs = ModelArgs()
    """Architecture; vocab size comes from the tokenizer and context length from the mix."""
    train: TrainArgs = TrainArgs()
    """Training settings."""


@dg.asset(group_name="training", code_version=source_version(local, model_mod), automation_condition=EAGER)
def base_model(context: dg.AssetExecutionContext, config: BaseModelConfig, packed_dataset: dict, tokenizer: dict,
               storage: StorageResource) -> dg.Output:
    st = storage.get()
    mcfg = model_mod.GPTConfig(**config.model.model_dump(), vocab_size=packed_dataset["vocab_size"],
                               seq_length=packed_dataset["sequence_length"])
    tcfg = local.TrainConfig(**config.train.model_dump())

    def build(stage):
        lineage = {"packed_dataset": packed_dataset["version"], "data_mix": packed_dataset["mix"],
                   "tokenizer": tokenizer["version"], "packed_dataset_uri": packed_dataset["uri"]}
        stats = local.train_local(st.local_dir(packed_dataset["dir"]), st.local_dir(tokenizer["dir"]), stage,
                                  mcfg, tcfg, lineage)
        return {"stats": stats, "model_config": mcfg.model_dump(), "lineage": lineage}

    m, reused = run_versioned(context, st, config=config,
                              upstream={"packed_dataset": packed_dataset, "tokenizer": tokenizer}, build=build)
    s = m["stats"]
    return output(m, reused, parameters=s["parameters"], train_tokens=s["train_tokens"],
                  tokens_per_second=s["tokens_per_second"], first_loss=s["first_loss"], final_loss=s["final_loss"],
                  loss_curve=dg.TableMetadataValue(
                      records=[dg.TableRecord({"step": r["step"], "loss": r["loss"], "lr": r["lr"]})
                               for r in s["loss_curve"]],
                      schema=dg.TableSchema(columns=[dg.TableColumn("step", "int"), dg.TableColumn("loss", "float"),
                                                     dg.TableColumn("lr", "float")])),
                  lineage=m["lineage"])
