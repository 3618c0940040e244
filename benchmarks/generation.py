"""Synthetic generation throughput: kura's vLLM entry point (kura.synth.vllm_worker, what the local backend and the
GPU pods run) against plain `vllm.LLM.generate` on the same prompts and model, plus the transformers fallback.

    .venv/bin/python benchmarks/generation.py [--prompts 256] [--max-tokens 64] [--hidden 256 --layers 4]

The model is a Llama created here from a config (random weights, a BPE tokenizer trained on the generated corpus;
no download); prompts are the Q&A-rewrite recipe over generated documents. Greedy decoding, so every backend
produces the same tokens and the comparison is of the machinery. Prints prompts/s, output tokens/s and start-up
per backend, then `throughput ratio kura / plain vLLM: X.XX` (target >= 0.95; on a GPU run it on the GPU box).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def plain_vllm(req_path: str, out_path: str) -> None:
    """The reference: the plainest use of vLLM's offline API, in its own process like kura's worker."""
    from vllm import LLM, SamplingParams

    req = json.loads(Path(req_path).read_text())
    t0 = time.perf_counter()
    llm = LLM(model=req["model"], dtype=req["dtype"], max_model_len=req["max_model_len"],
              enforce_eager=req["enforce_eager"], gpu_memory_utilization=0.5, seed=req["sampling"]["seed"])
    startup = time.perf_counter() - t0
    s = req["sampling"]
    params = SamplingParams(max_tokens=s["max_tokens"], temperature=s["temperature"], top_p=s["top_p"], seed=s["seed"])
    t1 = time.perf_counter()
    outs = llm.generate(req["prompts"], params, use_tqdm=False)
    Path(out_path).write_text(json.dumps({
        "seconds": time.perf_counter() - t1, "startup_seconds": startup,
        "completions": [o.outputs[0].text for o in outs],
        "completion_tokens": sum(len(o.outputs[0].token_ids) for o in outs)}))


def make_model(out: Path, hidden: int, layers: int) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from kura.corpus.default import DefaultCorpusConfig, generate_documents
    from kura.synth.teacher import train_tokenizer

    tok = train_tokenizer(generate_documents(DefaultCorpusConfig(n_docs=2000)), 2000, out)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
                      num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--plain-worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain_worker:
        plain_vllm(*args.plain_worker)
        return
    from kura.corpus.default import DefaultCorpusConfig, generate_labelled
    from kura.synth.generators import SamplingConfig, TransformersGenerator, VllmGenerator, vllm_env
    from kura.synth.recipes import QADialogueRecipe

    work = Path(tempfile.mkdtemp(prefix="kura-genbench-"))
    model = make_model(work / "model", args.hidden, args.layers)
    recipe = QADialogueRecipe()
    docs = [(t, lab) for t, lab in generate_labelled(DefaultCorpusConfig(n_docs=args.prompts * 2)) if len(t) > 100]
    prompts = [recipe.render(t, lab["lang"]) for t, lab in docs[: args.prompts]]
    sampling = SamplingConfig(max_tokens=args.max_tokens)
    rows = []

    kura = VllmGenerator(model)
    t = time.perf_counter()
    r = kura.generate(prompts, sampling)
    rows.append(("kura vllm_worker", r.seconds, r.completion_tokens, r.extra["startup_seconds"],
                 time.perf_counter() - t))
    kura_out = r.completions

    req, out = work / "req.json", work / "out.json"
    req.write_text(json.dumps(kura.request(prompts, sampling)))
    t = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--plain-worker", str(req), str(out)], env=vllm_env(), check=True,
                   capture_output=True)
    p = json.loads(out.read_text())
    rows.append(("plain vllm.LLM.generate", p["seconds"], p["completion_tokens"], p["startup_seconds"],
                 time.perf_counter() - t))
    same = sum(a == b for a, b in zip(kura_out, p["completions"]))

    if not args.skip_transformers:
        r = TransformersGenerator(model, batch_size=32).generate(prompts, sampling)
        rows.append(("transformers generate", r.seconds, r.completion_tokens, 0.0, r.seconds))

    print(f"{len(prompts)} prompts x <= {args.max_tokens} tokens, Llama hidden {args.hidden} x {args.layers} layers, "
          f"greedy; identical completions kura vs plain: {same}/{len(prompts)}")
    print(f"{'backend':26s} {'prompts/s':>10s} {'out tok/s':>10s} {'startup s':>10s} {'wall s':>8s}")
    for name, secs, toks, startup, wall in rows:
        print(f"{name:26s} {len(prompts) / secs:10.1f} {toks / secs:10.0f} {startup:10.1f} {wall:8.1f}")
    print(f"throughput ratio kura / plain vLLM: {(rows[1][1] / rows[0][1]):.2f}")


if __name__ == "__main__":
    main()
