"""Export a kura SentencePiece model as a Hugging Face `tokenizers` tokenizer (tokenizer.json + config), so
checkpoints load in the HF ecosystem with `AutoTokenizer.from_pretrained`.

The conversion reads pieces, scores and piece types through SentencePiece's own API (its bundled protobuf module
does not load beside this stack's protobuf runtime): the same pieces and scores (Unigram) or the same merges
ordered by score (BPE), byte fallback, and the identity normalization kura trains with — spaces become
U+2581 and nothing else changes, so ids match SentencePiece's and text round-trips exactly. No pre-tokenizer: like
SentencePiece, the model segments the whole string (digit splitting is already in the vocabulary).
"""
from __future__ import annotations

from pathlib import Path


def _pieces(model_path: Path):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    return sp, [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]


def _bpe_merges(pieces: list[tuple[str, float]], vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Merges implied by a SentencePiece BPE vocabulary: every split of a piece into two pieces, the piece's
    score giving the merge's rank (higher score = earlier merge), ties by piece ids."""
    merges = []
    for piece, score in pieces:
        local = [(piece[:k], piece[k:], score) for k in range(1, len(piece))
                 if piece[:k] in vocab and piece[k:] in vocab]
        merges += sorted(local, key=lambda x: (vocab[x[0]], vocab[x[1]]))
    merges.sort(key=lambda x: x[2], reverse=True)
    return [(a, b) for a, b, _ in merges]


def build_hf_tokenizer(model_path: str | Path, model_type: str):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers

    sp, pieces = _pieces(Path(model_path))
    unk = sp.unk_id()
    if model_type == "unigram":
        model = models.Unigram(pieces, unk_id=unk, byte_fallback=True)
    elif model_type == "bpe":
        vocab = {p: i for i, (p, _) in enumerate(pieces)}
        model = models.BPE(vocab, _bpe_merges(pieces, vocab), unk_token=pieces[unk][0], fuse_unk=True,
                           byte_fallback=True)
    else:
        raise ValueError(f"unsupported SentencePiece model type {model_type!r}")
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Replace(Regex(" "), "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([p for i, (p, _) in enumerate(pieces) if sp.is_control(i) or sp.is_unknown(i)])
    return tok


def export_hf(model_path: str | Path, out_dir: str | Path, model_type: str, model_max_length: int) -> Path:
    from transformers import PreTrainedTokenizerFast

    sp, _ = _pieces(Path(model_path))
    p = sp.id_to_piece
    fast = PreTrainedTokenizerFast(tokenizer_object=build_hf_tokenizer(model_path, model_type),
                                   unk_token=p(sp.unk_id()), bos_token=p(sp.bos_id()), eos_token=p(sp.eos_id()),
                                   pad_token=p(sp.pad_id()), model_max_length=model_max_length,
                                   clean_up_tokenization_spaces=False)
    out = Path(out_dir)
    fast.save_pretrained(out)
    return out
