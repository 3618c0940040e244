"""eval_perplexity: perplexity of the checkpoint on every phase's held-out documents, per language."""
import dagster as dg

import kura.eval.perplexity as ppl
from assets._common import output, run_versioned, source_version, write_json
from assets.automation import EAGER
from assets.mix import packed_key
from kura.train.local import load_checkpoint
from resources import StorageResource


class PerplexityConfig(dg.Config):
    max_docs: int = 500
    """Held-out documents scored per language and phase."""


def build_eval_perplexity(phases: list[str]) -> dg.AssetsDefinition:
    ins = {f"packed_{p}": dg.AssetIn(key=packed_key(p)) for p in phases}
    ins["base_model"] = dg.AssetIn("base_model")

    @dg.asset(name="eval_perplexity", group_name="evaluation", ins=ins, automation_condition=EAGER,
              code_version=source_version(ppl))
    def eval_perplexity(context: dg.AssetExecutionContext, config: PerplexityConfig, storage: StorageResource,
                        **inputs) -> dg.Output:
        st = storage.get()
        base_model = inputs["base_model"]

        def build(stage):
            model, cfg = load_checkpoint(st.local_dir(base_model["dir"]))
            res = {p: ppl.evaluate_heldout(model, st.local_dir(inputs[f"packed_{p}"]["dir"]),
                                           cfg["model"]["seq_length"], cfg["model"]["vocab_size"], config.max_docs)
                   for p in phases}
            result = {"perplexity": res, "checkpoint": base_model["version"],
                      "packed_dataset": {p: inputs[f"packed_{p}"]["version"] for p in phases}}
            write_json(stage / "perplexity.json", result)
            return result

        m, reused = run_versioned(context, st, config=config, upstream=inputs, build=build)
        md = {f"perplexity_{p}_{lang}": v["perplexity"] for p, langs in m["perplexity"].items()
              for lang, v in langs.items()}
        return output(m, reused, **md, details=m["perplexity"], checkpoint=m["checkpoint"])

    return eval_perplexity
