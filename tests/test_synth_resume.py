"""Level 1: request-level resume (a killed generation restarts without regenerating finished prompts and yields
the identical shard) and the output checks."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from kura.synth.checks import OutputChecks, check_records
from kura.synth.generators import GenerationResult, Generator, SamplingConfig
from kura.synth.requestlog import RequestLog, generate_resumable

DOCS = [{"doc_id": f"d{i}", "text": f"第{i}回の会議では、{['東京', '大阪', '京都'][i % 3]}の鉄道について{i * 3}分話しました。",
         "lang": "ja"} for i in range(160)]

WORKER = """
import sys
from kura.synth.generators import SamplingConfig, TransformersGenerator
from kura.synth.recipes import QADialogueRecipe
from kura.synth.requestlog import RequestLog
from kura.synth.shard import generate_shard
sys.path.insert(0, {tests!r})
from test_synth_resume import DOCS
generate_shard(DOCS, QADialogueRecipe(), TransformersGenerator({model!r}, batch_size=4),
               SamplingConfig(max_tokens=24), "p", RequestLog({log!r}), model_id="tiny", batch_size=4)
"""


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny random Llama with a BPE tokenizer trained here (no download)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from kura.synth.teacher import train_tokenizer

    d = tmp_path_factory.mktemp("tiny-llama")
    tok = train_tokenizer([x["text"] for x in DOCS] * 3, 300, d)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(d)
    return str(d)


def test_killed_generation_resumes_without_regenerating_and_gives_the_same_shard(tiny_model, tmp_path):
    from kura.synth.generators import TransformersGenerator
    from kura.synth.recipes import QADialogueRecipe
    from kura.synth.shard import generate_shard

    log = tmp_path / "shard.requests.jsonl"
    script = WORKER.format(tests=os.path.dirname(__file__), model=tiny_model, log=str(log))
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and log.read_bytes().count(b"\n") >= 12:
            os.killpg(proc.pid, signal.SIGKILL)  # pre-empted in the middle of the shard
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the generation was killed mid-way"
    finished = len(RequestLog(log).done)
    assert 12 <= finished < len(DOCS)

    gen = TransformersGenerator(tiny_model, batch_size=4)
    resumed = generate_shard(DOCS, QADialogueRecipe(), gen, SamplingConfig(max_tokens=24), "p", RequestLog(log),
                             model_id="tiny", batch_size=4)
    assert resumed.resumed == finished and resumed.generated == len(DOCS) - finished
    fresh = generate_shard(DOCS, QADialogueRecipe(), gen, SamplingConfig(max_tokens=24), "p",
                           RequestLog(tmp_path / "fresh.jsonl"), model_id="tiny", batch_size=4)
    assert fresh.generated == len(DOCS) and fresh.resumed == 0
    assert resumed.kept == fresh.kept and resumed.rejected == fresh.rejected, "identical with or without the kill"
    assert len(resumed.kept) + len(resumed.rejected) == len(DOCS)


class Counting(Generator):
    name = "counting"

    def __init__(self):
        self.calls = 0

    def generate(self, prompts, sampling):
        self.calls += len(prompts)
        return GenerationResult([f"回答: {p[-6:]}" for p in prompts], 1, 1, 0.1, "counting", {},
                                ["stop"] * len(prompts))


def test_torn_last_line_is_generated_again(tmp_path):
    log = tmp_path / "log.jsonl"
    gen = Counting()
    generate_resumable(gen, ["a1", "b2", "c3"], SamplingConfig(), RequestLog(log), "m", "r", batch_size=2)
    data = log.read_bytes()
    log.write_bytes(data[: len(data) - 7])  # the last record was being written when the process died
    again = Counting()
    r = generate_resumable(again, ["a1", "b2", "c3"], SamplingConfig(), RequestLog(log), "m", "r")
    assert again.calls == 1 and r.resumed == 2 and r.generation.completions == ["回答: a1", "回答: b2", "回答: c3"]
    assert len(RequestLog(log).done) == 3 and RequestLog(log).torn_lines == 1
    other = Counting()  # another model or recipe version is another request
    generate_resumable(other, ["a1"], SamplingConfig(), RequestLog(log), "m2", "r")
    assert other.calls == 1


def test_output_checks_name_every_rejection():
    recs, sources, finish, answers = [], [], [], []

    def add(answer: str, source: str, lang: str = "ja", reason: str = "stop"):
        recs.append({"text": f"user: 質問です。\nassistant: {answer}", "lang": lang})
        sources.append(source)
        finish.append(reason)
        answers.append(answer)

    add("京都の寺院は平安時代から続く文化の中心で、今も多くの人が訪れます。", "京都の寺について。")          # kept
    add("京都の寺院は平安時代から続く文化の中心で、今も多くの人が訪れます。", "別の文書です。")            # near dup
    add("途中で切れた回答", "源", reason="length")                                                    # truncated
    add("申し訳ありませんが、その質問にはお答えできません。", "源")                                         # refusal
    add("ループします。" * 30, "源")                                                                # repetition
    add("This answer is written entirely in English, which is not the source language.", "源")   # language
    src = "大阪の商人文化は江戸時代に大きく発展し、独自の言葉と習慣を生みました。"
    add(src, src)                                                                                 # copy
    kept, rejected = check_records(recs, sources, finish, answers, OutputChecks())
    assert kept == [0]
    assert [r for _, r in rejected] == ["near_duplicate", "truncated", "refusal", "degenerate_repetition",
                                        "wrong_language", "copies_source"]
    from kura.synth.checks import reject_rate

    assert reject_rate(len(recs), Counter(r for _, r in rejected)) == pytest.approx(6 / 7)


def test_output_checks_are_an_ordered_list_and_a_new_check_is_one_function():
    from kura.synth import checks as C

    recs = [{"text": "user: 質問\nassistant: 東京の歴史について説明します。TODO", "lang": "ja"},
            {"text": "user: 質問\nassistant: 京都の寺院は平安時代から続く文化の中心です。", "lang": "ja"}]
    answers = ["東京の歴史について説明します。TODO", "京都の寺院は平安時代から続く文化の中心です。"]

    @C.check("placeholder")
    def placeholder(c, shard, cfg):
        return "placeholder" if "TODO" in c.answer else None

    try:
        kept, rejected = check_records(recs, ["源", "源"], [], answers,
                                       OutputChecks(checks=[*C.DEFAULT_CHECKS, "placeholder"]))
        assert kept == [1] and rejected == [(0, "placeholder")]
        assert check_records(recs, ["源", "源"], [], answers, OutputChecks())[0] == [0, 1]
        only = OutputChecks(checks=["refusal"])  # a profile without near_duplicate keeps both copies of one answer
        assert check_records(recs * 2, ["源"] * 4, [], answers * 2, only)[0] == [0, 1, 2, 3]
    finally:
        C.CHECKS.pop("placeholder", None)
    with pytest.raises(ValueError, match="unknown output check"):
        OutputChecks(checks=["no_such_check"])
