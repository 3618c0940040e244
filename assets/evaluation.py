"""eval_perplexity: perplexity of the checkpoint on the packed dataset's held-out documents, per language."""

import dagster as dg

import kura.eval.perplexity as ppl
from assets._common import output, run_versioned, source_version, write_json
from assets.automation import EAGER
from kura.train.local import load_checkpoint
from resources import StorageResource


class PerplexityConfig(dg.Config):
    max_docs: int = 500
    """Held-out documents scored per language."""


@dg.asset(group_name="evaluation", code_version=source_version(ppl), automation_condition=EAGER)
def eval_perplexity(context: dg.AssetExecutionContext, config: PerplexityConfig, base_model: dict,
                    packed_dataset: dict, storage: StorageResource) -> dg.Output:
    st = storage.get()

    def build(stage):
        model, cfg = load_checkpoint(st.local_dir(base_model["dir"]))
        res = ppl.evaluate_heldout(model, st.local_dir(packed_dataset["dir"]), cfg["model"]["seq_length"],
                                   cfg["model"]["vocab_size"], config.max_docs)
        result = {"perplexity": res, "checkpoint": base_model["version"], "packed_dataset": packed_dataset["version"]}
        write_json(stage / "perplexity.json", result)
        return result

    m, reused = run_versioned(context, st, config=config,
                              upstream={"base_model": base_model, "packed_dataset": packed_dataset}, build=build)
    md = {f"perplexity_{lang}": v["perplexity"] for lang, v in m["perplexity"].items()}
    return output(m, reused, **md, details=m["perplexity"], checkpoint=m["checkpoint"])
