"""`base_model/<name>`: an imported Hugging Face model (`pipelines/bases/*.yaml`, typed in kura.train.import_hf),
content-hashed and converted to kura's checkpoint format (megatron-core state dict + config.json at the asset's
root, the original folder under `hf/`), so a run can continue it (`init_from: base_model/<name>`) or upcycle it.
The blocking check compares the converted model's logits with transformers on the original folder: a conversion
that does not reproduce the model feeds nothing.
"""
import shutil
from pathlib import Path

import dagster as dg

from assets._common import kura_asset, output, run_versioned
from kura.io.hashing import hash_dir
from kura.train.import_hf import BaseSpec, import_hf, logits_check
from resources import StorageResource


def base_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["base_model", name])


def build_base_model(spec: BaseSpec, root: Path) -> dg.AssetsDefinition:
    key = base_key(spec.name)

    @kura_asset(key=key, group_name="base_models", automation_condition=dg.AutomationCondition.code_version_changed(),
                code_version_extra=f"{spec.name}:{spec.logits_atol}", kinds={"huggingface", "pytorch"},
                description=f"Imported base model {spec.name} ({spec.path}, licence {spec.licence})"
                            + (f": {spec.description}" if spec.description else ""),
                check_specs=[dg.AssetCheckSpec("logits_match_transformers", asset=key, blocking=True,
                                               description=f"max |logit difference| vs transformers <= "
                                                           f"{spec.logits_atol:g}")])
    def _base(context: dg.AssetExecutionContext, storage: StorageResource):
        st, folder = storage.get(), spec.folder(root)
        content, files = hash_dir(folder)  # the weights' content is the version, not the folder's location

        def build(stage: Path) -> dict:
            info = import_hf(folder, stage, spec.name)
            shutil.copytree(folder, stage / "hf")
            diff = logits_check(folder, stage)
            return {**info, "content": content, "files": len(files), "logits_max_abs_diff": diff,
                    "gate_passed": diff <= spec.logits_atol, "lineage": {"chain": [f"base_model/{spec.name}"],
                                                                         "base_model": content}}

        m, reused = run_versioned(context, st, config={"content": content, "atol": spec.logits_atol}, upstream={},
                                  build=build)
        yield output(m, reused, **{k: m[k] for k in ("architecture", "parameters", "vocab_size", "context_length",
                                                     "tied_embeddings", "logits_max_abs_diff")},
                     licence=spec.licence)
        yield dg.AssetCheckResult(
            check_name="logits_match_transformers", passed=m["gate_passed"], severity=dg.AssetCheckSeverity.ERROR,
            metadata={"max_abs_diff": m["logits_max_abs_diff"]},
            description=None if m["gate_passed"] else (
                f"base_model/{spec.name}: the converted model's logits differ from transformers' by "
                f"{m['logits_max_abs_diff']:.3g} (limit {spec.logits_atol:g}); the folder {spec.path} uses something "
                f"kura's Llama/Mixtral layers do not compute the same way — report it with the folder's config.json"))

    return _base
