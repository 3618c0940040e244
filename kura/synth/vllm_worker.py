"""Generation entry point run in its own process (locally by `VllmGenerator`, in a GPU pod by the cluster
generator): `python -m kura.synth.vllm_worker request.json result.json`."""
from __future__ import annotations

import json
import sys
import time


def main(req_path: str, out_path: str) -> None:
    import vllm
    from vllm import LLM, SamplingParams

    req = json.loads(open(req_path).read())
    t0 = time.perf_counter()
    llm = LLM(model=req["model"], dtype=req["dtype"], max_model_len=req["max_model_len"],
              enforce_eager=req["enforce_eager"], gpu_memory_utilization=0.5, seed=req["sampling"]["seed"])
    startup = time.perf_counter() - t0
    s = req["sampling"]
    params = SamplingParams(max_tokens=s["max_tokens"], temperature=s["temperature"], top_p=s["top_p"], seed=s["seed"])
    t1 = time.perf_counter()
    outs = llm.generate(req["prompts"], params, use_tqdm=False)
    seconds = time.perf_counter() - t1
    result = {
        "completions": [o.outputs[0].text for o in outs],
        "prompt_tokens": sum(len(o.prompt_token_ids) for o in outs),
        "completion_tokens": sum(len(o.outputs[0].token_ids) for o in outs),
        "seconds": seconds, "startup_seconds": startup, "vllm_version": vllm.__version__,
    }
    with open(out_path + ".tmp", "w") as f:
        json.dump(result, f)
    import os
    os.replace(out_path + ".tmp", out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
