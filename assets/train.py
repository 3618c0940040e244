"""base_model: a tiny GPT trained on CPU for a bounded number of steps through the mix's phases in order. The
checkpoint folder carries weights, config, tokenizer (SentencePiece and HF export), lineage and the loss curve."""
import dagster as dg

import kura.train.local as local
import kura.train.model as model_mod
from assets._common import output, run_versioned, source_version
from assets.automation import EAGER
from assets.mix import packed_key
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
    """Architecture; vocab size comes from the tokenizer and context length from the longest phase."""
    train: TrainArgs = TrainArgs()
    """Training settings (train_steps are shared by the phases in proportion to their tokens)."""


def build_base_model(phases: list[str]) -> dg.AssetsDefinition:
    ins = {f"packed_{p}": dg.AssetIn(key=packed_key(p)) for p in phases}
    ins["tokenizer"] = dg.AssetIn("tokenizer")

    @dg.asset(name="base_model", group_name="training", ins=ins, automation_condition=EAGER,
              code_version=source_version(local, model_mod))
    def base_model(context: dg.AssetExecutionContext, config: BaseModelConfig, storage: StorageResource,
                   **inputs) -> dg.Output:
        st = storage.get()
        tokenizer = inputs["tokenizer"]
        packed = [inputs[f"packed_{p}"] for p in phases]
        mcfg = model_mod.GPTConfig(**config.model.model_dump(), vocab_size=packed[0]["vocab_size"],
                                   seq_length=max(p["sequence_length"] for p in packed))
        tcfg = local.TrainConfig(**config.train.model_dump())

        def build(stage):
            lineage = {"packed_dataset": {p["phase"]: p["version"] for p in packed},
                       "data_mix": {p["phase"]: p["mix"] for p in packed}, "tokenizer": tokenizer["version"],
                       "packed_dataset_uri": {p["phase"]: p["uri"] for p in packed}}
            stats = local.train_local([st.local_dir(p["dir"]) for p in packed], st.local_dir(tokenizer["dir"]),
                                      stage, mcfg, tcfg, lineage)
            return {"stats": stats, "model_config": mcfg.model_dump(), "lineage": lineage}

        m, reused = run_versioned(context, st, config=config, upstream=inputs, build=build)
        s = m["stats"]
        curve = dg.TableMetadataValue(
            records=[dg.TableRecord({"step": r["step"], "phase": r["phase"], "loss": r["loss"], "lr": r["lr"]})
                     for r in s["loss_curve"]],
            schema=dg.TableSchema(columns=[dg.TableColumn("step", "int"), dg.TableColumn("phase"),
                                           dg.TableColumn("loss", "float"), dg.TableColumn("lr", "float")]))
        return output(m, reused, parameters=s["parameters"], train_tokens=s["train_tokens"],
                      tokens_per_second=s["tokens_per_second"], first_loss=s["first_loss"],
                      final_loss=s["final_loss"], steps_per_phase=s["steps_per_phase"], loss_curve=curve,
                      lineage=m["lineage"])

    return base_model
