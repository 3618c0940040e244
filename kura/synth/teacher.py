"""A tiny teacher model the project trains itself (no downloads): a Llama-architecture causal LM with a
byte-level BPE tokenizer, saved in Hugging Face format so vLLM, transformers and a GPU pod load it the same way.

It is trained on (prompt, rule-based rewrite) pairs from the cleaned corpus, so it learns the recipe's output
format; at ~0.4M parameters its content is poor, which the recipe validator then measures. On a cluster the
teacher is a real model (Calm3-22B, Mixtral) from the model store and this stage is skipped.
Size and speed at the defaults: ~0.4M parameters, ~300 steps of 16×192 tokens, ~30 s on 2 CPU cores.
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

from pydantic import BaseModel, Field, model_validator

from kura.io.hashing import content_only


class TeacherConfig(BaseModel):
    """Architecture and training budget of the tiny teacher."""

    vocab_size: int = Field(1024, description="Byte-level BPE vocabulary size (includes 3 special tokens).")
    hidden_size: int = Field(128, description="Model width.")
    num_layers: int = Field(2, description="Transformer layers.")
    num_heads: int = Field(4, description="Attention heads; hidden/heads must be 32, 64, 80, ... (vLLM CPU).")
    intermediate_size: int = Field(384, description="MLP width.")
    max_position_embeddings: int = Field(2048, description="Context length (vLLM max_model_len); as the demo's "
                                         "judge it reads whole two-turn MT-Bench conversations.")
    steps: int = Field(800, description="Optimizer steps (fewer and the 0.7M-parameter teacher ignores its input "
                                       "and repeats a few answers, which the output checks then reject).")
    batch_size: int = Field(16, description="Sequences per step.")
    seq_len: int = Field(192, description="Training sequence length (examples are truncated to it).")
    lr: float = Field(3e-3, description="Peak AdamW learning rate (cosine decay, 10% warmup).")
    seed: int = Field(0, description="Seed for tokenizer sampling, init and batches.")

    @model_validator(mode="after")
    def _check(self) -> "TeacherConfig":
        head_dim = self.hidden_size // self.num_heads
        if self.hidden_size % self.num_heads or head_dim not in (32, 64, 80, 96, 112, 128, 256):
            raise ValueError(f"head_dim {self.hidden_size}/{self.num_heads} is not supported by vLLM's CPU attention")
        if self.seq_len > self.max_position_embeddings:
            raise ValueError("seq_len exceeds max_position_embeddings")
        return self


# The teacher learned plain `prompt + completion` text, so its chat template is that format: a conversation is its
# turns' contents in order (an assistant turn closed by </s>). Served by vLLM, the chat API then sends the model
# exactly what the completions API would, as an instruction-tuned teacher's own template does for it.
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['content'] }}{% if m['role'] == 'assistant' %}{{ eos_token }}"
                 "{% endif %}{% endfor %}")


def train_tokenizer(texts: list[str], vocab_size: int, out_dir: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def train_teacher(examples: list[str], out_dir: str | Path, cfg: TeacherConfig) -> dict:
    """Train on `examples` (prompt + completion strings) and save an HF model folder; returns training stats."""
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    transformers.utils.logging.disable_progress_bar()

    out = Path(out_dir)
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    tok = train_tokenizer(examples, cfg.vocab_size, out)
    ids = [tok(e)["input_ids"][: cfg.seq_len - 1] + [tok.eos_token_id] for e in examples]
    mc = LlamaConfig(vocab_size=len(tok), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                     num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                     num_key_value_heads=cfg.num_heads, max_position_embeddings=cfg.max_position_embeddings,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                     tie_word_embeddings=True)
    model = LlamaForCausalLM(mc)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    warm = max(1, cfg.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.steps)))))
    losses, t0, ntok = [], time.perf_counter(), 0
    model.train()
    for step in range(cfg.steps):
        batch = [ids[rng.randrange(len(ids))] for _ in range(cfg.batch_size)]
        width = max(len(b) for b in batch)
        x = torch.full((len(batch), width), tok.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        for i, b in enumerate(batch):
            x[i, : len(b)] = torch.tensor(b)
            labels[i, : len(b)] = torch.tensor(b)
        loss = model(input_ids=x, attention_mask=(labels != -100).long(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ntok += int((labels != -100).sum())
        losses.append(round(loss.item(), 4))
    seconds = time.perf_counter() - t0
    model.save_pretrained(out, safe_serialization=True)
    stats = {"parameters": sum(p.numel() for p in model.parameters()), "steps": cfg.steps,
             "final_loss": losses[-1], "first_loss": losses[0], "train_tokens": ntok,
             "tokens_per_second": round(ntok / seconds, 1), "seconds": round(seconds, 1), "examples": len(examples)}
    # The card is hashed into the teacher's content version: only what the same inputs reproduce goes in it.
    # Timings and throughput differ on every rebuild; they are returned for the materialization's metadata.
    (out / "kura_teacher.json").write_text(json.dumps({"config": cfg.model_dump(), "stats": content_only(stats),
                                                       "losses": losses}, indent=1))
    return stats
