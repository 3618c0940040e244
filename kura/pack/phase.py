"""Pack one mix phase: tokenize its documents (in parallel; chat sources rendered with their template and loss
mask), best-fit pack each source into Megatron .bin/.idx (+ mask), write held-out documents per language and the
blend files. Input is what `data_mix/<phase>` wrote: the selection rows and the documents they reference."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from kura.mix.spec import ChatTemplate
from kura.pack import chat
from kura.pack import megatron as packing
from kura.tokenize.parallel import encode_parallel
from kura.tokenize.hf import load_tokenizer


def pack_phase(out_dir: Path, selection: list[dict], docs: list[dict], templates: dict[str, ChatTemplate],
               tokenizer_model: Path, seq_len: int, workers: int | None = None) -> dict:
    tok = load_tokenizer(tokenizer_model)  # kura's SentencePiece model, or a base model's HF tokenizer folder
    masked = [d for d in docs if d.get("chat_template") and d.get("loss_mask") == "assistant_only"]
    plain = [d for d in docs if not (d.get("chat_template") and d.get("loss_mask") == "assistant_only")]
    encoded = {}
    for d, ids in zip(plain, encode_parallel(str(tokenizer_model), [d["text"] for d in plain], workers)):
        encoded[(d["source"], d["doc_id"])] = (ids, None)  # None: every token carries loss
    for d in masked:
        encoded[(d["source"], d["doc_id"])] = chat.render_conversation(
            d["turns"], templates[d["chat_template"]], tok.encode, assistant_only=True)
    train_docs: dict[str, list] = defaultdict(list)
    heldout: dict[str, list] = defaultdict(list)
    for r in selection:
        ids_mask = encoded[(r["source"], r["doc_id"])]
        if r["split"] == "train":
            train_docs[r["source"]].append(ids_mask)
        else:
            heldout[r["lang"] or "all"].append(ids_mask[0])
    train = {label: packing.write_packed_source(out_dir, label, lists, seq_len, tok.eos_id, tok.pad_id,
                                                tok.vocab_size)
             for label, lists in sorted(train_docs.items())}
    held = {lang: packing.write_indexed(out_dir / f"heldout_{packing.safe_name(lang)}", lists, tok.vocab_size)
            for lang, lists in sorted(heldout.items())}
    blend = packing.write_blend(out_dir, train)
    real = sum(v["real_tokens"] for v in train.values())
    total = sum(v["tokens"] for v in train.values())
    return {"sequence_length": seq_len, "vocab_size": tok.vocab_size, "train": train, "heldout": held,
            "blend": blend, "train_tokens": real, "utilization": round(real / total, 5) if total else 1.0}
