"""Generation entry point run in its own process (locally by `VllmGenerator`, in a GPU pod by the Kubernetes
generator): `python -m kura.synth.vllm_worker REQUEST RESULT`.

REQUEST and RESULT are paths or URIs (s3://…; endpoint from KURA_S3_ENDPOINT, credentials from the environment),
and so is the request's model: a model folder on S3 is copied to local disk first. The result is written
atomically (temp + rename locally; a single PUT on S3), so a pre-empted pod never leaves a half result.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time


def _fs(uri: str):
    from kura.io.storage import pod_fs

    return pod_fs(uri)


def load_request(uri: str) -> dict:
    fs, path = _fs(uri)
    with fs.open(path, "rb") as f:
        return json.loads(f.read())


def fetch_model(uri: str) -> str:
    """A local folder with the model: the folder itself, or a copy of a remote one."""
    if "://" not in uri:
        return uri
    fs, path = _fs(uri)
    local = tempfile.mkdtemp(prefix="kura-model-")
    fs.get(path.rstrip("/") + "/", local + "/", recursive=True)
    return local


def write_result(uri: str, result: dict) -> None:
    data = json.dumps(result).encode()
    if "://" not in uri:
        with open(uri + ".tmp", "wb") as f:
            f.write(data)
        os.replace(uri + ".tmp", uri)
        return
    fs, path = _fs(uri)
    fs.pipe_file(path, data)  # one PUT: the object appears whole or not at all


@contextlib.contextmanager
def _pipes():
    """Dagster Pipes when a Pipes client launched this process (a PipesSubprocessClient locally, a PipesK8sClient
    in a GPU pod): progress goes to the run's log, the summary back as a custom message. Otherwise nothing."""
    if "DAGSTER_PIPES_CONTEXT" not in os.environ:
        yield None
        return
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        yield pipes


def main(req_uri: str, out_uri: str) -> None:
    if os.environ.get("KURA_WORKER_LOG"):  # vLLM's own chatter goes to a file, not the orchestrator's terminal
        fd = os.open(os.environ["KURA_WORKER_LOG"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    with _pipes() as pipes:
        _run(req_uri, out_uri, pipes)


def _run(req_uri: str, out_uri: str, pipes) -> None:
    import vllm
    from vllm import LLM, SamplingParams

    say = pipes.log.info if pipes else (lambda msg: print(msg, file=sys.stderr))
    req = load_request(req_uri)
    say(f"kura.synth.vllm_worker: {len(req['prompts'])} prompts, loading {req['model']}")
    t0 = time.perf_counter()
    llm = LLM(model=fetch_model(req["model"]), dtype=req["dtype"], max_model_len=req["max_model_len"],
              enforce_eager=req["enforce_eager"], gpu_memory_utilization=req.get("gpu_memory_utilization", 0.5),
              seed=req["sampling"]["seed"], tensor_parallel_size=req.get("tensor_parallel_size", 1),
              pipeline_parallel_size=req.get("pipeline_parallel_size", 1))
    startup = time.perf_counter() - t0
    say(f"kura.synth.vllm_worker: engine ready in {startup:.1f} s (vLLM {vllm.__version__})")
    s = req["sampling"]
    guided = {}
    if req.get("choices"):  # constrained decoding: the completion is one of these strings
        from vllm.sampling_params import StructuredOutputsParams

        guided = {"structured_outputs": StructuredOutputsParams(choice=list(req["choices"]))}
    params = SamplingParams(max_tokens=s["max_tokens"], temperature=s["temperature"], top_p=s["top_p"], seed=s["seed"],
                            top_k=s.get("top_k", -1), repetition_penalty=s.get("repetition_penalty", 1.0), **guided)
    t1 = time.perf_counter()
    outs = llm.generate(req["prompts"], params, use_tqdm=False)
    seconds = time.perf_counter() - t1
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    say(f"kura.synth.vllm_worker: generated {len(outs)} completions, {tokens} tokens in {seconds:.1f} s")
    if pipes:
        pipes.report_custom_message({"prompts": len(outs), "completion_tokens": tokens, "seconds": seconds,
                                     "startup_seconds": startup})
    write_result(out_uri, {
        "completions": [o.outputs[0].text for o in outs],
        "prompt_tokens": sum(len(o.prompt_token_ids) for o in outs),
        "completion_tokens": sum(len(o.outputs[0].token_ids) for o in outs),
        "seconds": seconds, "startup_seconds": startup, "vllm_version": vllm.__version__,
        "finish_reasons": [o.outputs[0].finish_reason or "stop" for o in outs],
    })


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
