"""A labelled synthetic web crawl (WARC.gz shards of HTML pages) for curation benchmarks and tests.

Every page wraps one document of the default generator (`generate_labelled`: clean Japanese and English prose,
planted exact and near duplicates, short, empty, mojibake and ad-only documents) in the markup that real pages
carry and that extraction must remove: a <head> with inline CSS and JavaScript, a navigation menu, a sidebar of
links, a cookie banner and a footer. Two kinds of Japanese web junk are added that rule filters must catch:
shop listings (送料無料 / カートに入れる lines) and keyword-spam tag clouds. A third of the Japanese pages are
served as Shift_JIS. `labels.jsonl` maps each page's URI to its kind and language — the ground truth for
"clean kept" and "junk removed".
"""
from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

from kura.corpus.default import (AD_LINES, JA_NOUNS, JA_PLACES, JA_TOPICS, DefaultCorpusConfig, generate_labelled)

JUNK_KINDS = ("ads", "short", "empty", "mojibake", "shop", "spam")
CLEAN_KINDS = ("clean",)

_CSS = "".join(f".c{i}{{margin:{i}px;padding:{i % 7}px;color:#{i * 2654435761 % 0xFFFFFF:06x}}}" for i in range(120))
_JS = "".join(f"function f{i}(a,b){{return a*{i}+b-{i % 13};}}var v{i}=f{i}({i},{i + 1});" for i in range(90))
_MENU = ["ホーム", "ニュース", "製品情報", "会社概要", "採用情報", "お問い合わせ", "サイトマップ", "Home", "About"]


def _page(title: str, body_html: str, r: random.Random) -> str:
    nav = "".join(f'<li><a href="/{i}">{m}</a></li>' for i, m in enumerate(r.sample(_MENU, 6)))
    side = "".join(f'<li><a href="/tag/{i}">{r.choice(JA_TOPICS)}の{r.choice(JA_NOUNS)}</a></li>' for i in range(25))
    return (f"<!DOCTYPE html><html lang=\"ja\"><head><meta charset=\"{{charset}}\"><title>{title}</title>"
            f"<style>{_CSS}</style><script>{_JS}</script></head><body>"
            f"<div class=\"cookie\">このサイトはクッキーを使用しています。 Cookie settings | Privacy policy</div>"
            f"<header><nav><ul>{nav}</ul></nav></header><main><article><h1>{title}</h1>{body_html}</article>"
            f"</main><aside><h3>人気のタグ</h3><ul>{side}</ul></aside>"
            f"<footer><p>{r.choice(AD_LINES)}</p><p>© 2026 example.invalid All rights reserved.</p></footer>"
            f"<script>{_JS[:2000]}</script></body></html>")


def _paragraph_html(text: str) -> str:
    return "".join(f"<p>{p.replace(chr(10), '<br>')}</p>" for p in text.split("\n\n") if p.strip()) or "<p></p>"


def _shop(r: random.Random) -> str:
    items = [f"<li>{r.choice(JA_TOPICS)}{r.choice(JA_NOUNS)}セット ¥{r.randint(5, 300) * 100:,} "
             f"{r.choice(AD_LINES)} カートに入れる</li>" for _ in range(r.randint(8, 20))]
    return f"<ul>{''.join(items)}</ul>"


def _spam(r: random.Random) -> str:
    words = [f"{r.choice(JA_PLACES)}{r.choice(JA_TOPICS)}{r.choice(['求人', '格安', '比較', 'ランキング', '口コミ'])}"
             for _ in range(r.randint(30, 80))]
    return f"<p>{' '.join(words)}</p>"


def write_web_crawl(out_dir: str | Path, target_mb: float = 200.0, seed: int = 20261122,
                    pages_per_file: int = 1000) -> list[Path]:
    """WARC.gz shards of labelled pages until the uncompressed HTML reaches `target_mb`; returns the shard paths.
    Deterministic for a seed; each shard is written to a temp name and renamed; `_COMPLETE` is written last."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "_COMPLETE").exists():
        return sorted(out.glob("*.warc.gz"))
    r = random.Random(seed)
    html_bytes, n, shard = 0, 0, 0
    paths: list[Path] = []
    labels = open(out / "labels.jsonl.tmp", "w", encoding="utf-8")
    while html_bytes < target_mb * 1e6:
        docs = generate_labelled(DefaultCorpusConfig(seed=seed + shard, n_docs=pages_per_file))
        buf = bytearray()
        for j, (text, lab) in enumerate(docs):
            roll = r.random()
            if roll < 0.03:
                body, lab = _shop(r), {"kind": "shop", "lang": "ja"}
            elif roll < 0.06:
                body, lab = _spam(r), {"kind": "spam", "lang": "ja"}
            else:
                body = _paragraph_html(text)
            uri = f"https://example.invalid/s{shard}/p{j}"
            ja = lab.get("lang") == "ja"
            charset = "shift_jis" if ja and r.random() < 0.33 else "utf-8"
            title = f"{random.Random(body).choice(JA_TOPICS)}について"  # same body, same title: dups stay dups
            html = _page(title, body, r).replace("{charset}", charset)
            try:
                payload = html.encode(charset)
            except UnicodeEncodeError:  # mojibake text is not Shift_JIS-encodable: serve it as UTF-8
                charset, payload = "utf-8", html.replace('charset="shift_jis"', 'charset="utf-8"').encode()
            html_bytes += len(payload)
            block = f"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset={charset}\r\n\r\n".encode() + payload
            buf += (b"WARC/1.0\r\nWARC-Type: response\r\nWARC-Record-ID: <urn:uuid:%08d-0000-4000-8000-%012d>\r\n"
                    b"WARC-Date: 2026-11-01T00:00:00Z\r\nWARC-Target-URI: %s\r\n"
                    b"WARC-Identified-Payload-Type: text/html\r\n"
                    b"Content-Type: application/http; msgtype=response\r\nContent-Length: %d\r\n\r\n"
                    % (shard, j, uri.encode(), len(block))) + block + b"\r\n\r\n"
            of = lab.get("of")
            labels.write(json.dumps({"uri": uri, "kind": lab["kind"], "lang": lab.get("lang"),
                                     "of": f"https://example.invalid/s{shard}/p{of}" if of is not None else None})
                         + "\n")
            n += 1
        path = out / f"crawl-{shard:05d}.warc.gz"
        tmp = path.with_name(path.name + ".tmp")
        with gzip.GzipFile(tmp, "wb", mtime=0, compresslevel=6) as f:
            f.write(bytes(buf))
        tmp.rename(path)
        paths.append(path)
        shard += 1
    labels.close()
    (out / "labels.jsonl.tmp").rename(out / "labels.jsonl")
    (out / "_COMPLETE").write_text(json.dumps({"pages": n, "html_bytes": html_bytes, "shards": shard}))
    return paths


def read_labels(folder: str | Path) -> dict[str, dict]:
    with open(Path(folder) / "labels.jsonl", encoding="utf-8") as f:
        return {d["uri"]: d for d in map(json.loads, f)}
