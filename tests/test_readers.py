"""Level 1: every kind of bad input is quarantined with a reason; nothing raises; nothing is lost."""
from __future__ import annotations

import gzip
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

from kura.corpus.default import DefaultCorpusConfig, generate_documents, write_default_corpus
from kura.corpus.readers import Document, Rejected, read_corpus_file


def items(path):
    out = list(read_corpus_file(path, path.name))
    return [i for i in out if isinstance(i, Document)], [i for i in out if isinstance(i, Rejected)]


def test_jsonl_with_bad_lines(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"text": "good one", "id": "a"}\n'
                  b'{"text": "broken\n'
                  b'\xff\xfe{"text": "bad utf8"}\n'
                  b'{"title": "no text"}\n'
                  b'\n'
                  b'{"text": "good two", "id": "a"}\n')
    docs, rej = items(p)
    assert [d.text for d in docs] == ["good one", "good two"]
    assert len({d.doc_id for d in docs}) == 2, "ids unique even when the input repeats them"
    assert sorted(r.reason for r in rej) == ["blank_line", "invalid_utf8", "malformed_json", "missing_text_field"]
    assert all(r.position > 0 for r in rej) and any(r.raw.startswith(b"\xff\xfe") for r in rej)


def test_empty_unreadable_and_unsupported(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert [r.reason for r in items(tmp_path / "empty.jsonl")[1]] == ["empty_file"]
    os.symlink(tmp_path / "missing", tmp_path / "dangling.jsonl")
    assert [r.reason for r in items(tmp_path / "dangling.jsonl")[1]] == ["unreadable_file"]
    (tmp_path / "dir.jsonl").mkdir()
    assert [r.reason for r in items(tmp_path / "dir.jsonl")[1]] == ["unreadable_file"]


def test_truncated_gzip_keeps_what_was_read(tmp_path):
    good = "".join(json.dumps({"text": f"doc {i} " * 50}) + "\n" for i in range(200)).encode()
    blob = gzip.compress(good)
    p = tmp_path / "t.jsonl.gz"
    p.write_bytes(blob[: len(blob) // 2])
    docs, rej = items(p)
    assert 0 < len(docs) < 200 and [r.reason for r in rej] == ["truncated_file"]


def test_truncated_parquet_and_missing_column(tmp_path):
    p = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "id": ["1", "2"]}), p)
    assert [d.text for d in items(p)[0]] == ["a", "b"]
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 20])
    assert [r.reason for r in items(p)[1]] == ["unreadable_parquet"]
    q = tmp_path / "q.parquet"
    pq.write_table(pa.table({"body": ["a"]}), q)
    assert [r.reason for r in items(q)[1]] == ["missing_text_field"]


def test_txt_and_html(tmp_path):
    (tmp_path / "a.txt").write_text("これは本文です。")
    (tmp_path / "b.txt").write_bytes(b"caf\xe9")
    (tmp_path / "c.html").write_text("<html><body><p>本文の段落です。</p><script>x()</script></body></html>")
    assert items(tmp_path / "a.txt")[0][0].text == "これは本文です。"
    assert items(tmp_path / "b.txt")[1][0].reason == "invalid_utf8"
    html = items(tmp_path / "c.html")[0][0].text
    assert "本文の段落です。" in html and "x()" not in html


def test_default_corpus_is_deterministic_and_has_defects(tmp_path):
    cfg = DefaultCorpusConfig(n_docs=400)
    assert generate_documents(cfg) == generate_documents(cfg)
    a = write_default_corpus(tmp_path / "a", cfg)
    b = write_default_corpus(tmp_path / "b", cfg)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert {p.suffix for p in a} >= {".jsonl", ".gz", ".parquet", ".html", ".txt"}
    docs = generate_documents(DefaultCorpusConfig())
    assert len(docs) - len(set(docs)) > 100, "exact duplicates"
    assert any("送料無料" in d for d in docs) and any(len(d) > 20000 for d in docs) and "" in docs
    assert any("ã" in d for d in docs), "mojibake"


def _warc_record(rtype: bytes, body: bytes, uri: bytes = b"http://example.invalid/a") -> bytes:
    return (b"WARC/1.0\r\nWARC-Type: " + rtype + b"\r\nWARC-Record-ID: <urn:uuid:12345678-1234-1234-1234-123456789012>"
            b"\r\nWARC-Date: 2024-01-01T00:00:00Z\r\nWARC-Target-URI: " + uri + b"\r\nContent-Type: application/http;"
            b" msgtype=" + rtype + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body + b"\r\n\r\n")


def test_warc_pages_with_charsets_and_every_record_accounted(tmp_path):
    page = "<html><body><nav>ホーム | 戻る</nav><article><p>これは日本語の本文です。東京の歴史について説明します。</p>" \
           "</article></body></html>"
    sjis = b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=shift_jis\r\n\r\n" + page.encode("shift_jis")
    eucjp = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n" + page.encode("euc_jp")  # no charset: detected
    image = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n\r\n\x89PNG\x00\x01"
    data = (_warc_record(b"response", sjis) + _warc_record(b"request", b"GET / HTTP/1.1\r\n\r\n")
            + _warc_record(b"response", eucjp) + _warc_record(b"response", image) + _warc_record(b"response", sjis))
    p = tmp_path / "crawl.warc.gz"
    p.write_bytes(gzip.compress(data[:-60]))  # the last record is cut short
    docs, rej = items(p)
    assert [d.text for d in docs] == ["これは日本語の本文です。東京の歴史について説明します。"] * 2
    assert docs[0].orig_id == "http://example.invalid/a"
    assert sorted(r.reason for r in rej) == ["not_a_page", "not_html", "truncated_record"]


def test_html_in_a_legacy_japanese_encoding(tmp_path):
    p = tmp_path / "old.html"
    p.write_bytes("<html><head><meta charset='euc-jp'></head><body><p>昔のページの本文です。</p></body></html>"
                  .encode("euc_jp"))
    assert items(p)[0][0].text == "昔のページの本文です。"


def test_fifty_megabyte_documents_and_binary_junk_are_quarantined_not_read(tmp_path):
    """A 50 MB single document is rejected as document_too_large in every format without being decoded; binary
    junk in a .txt and in a JSONL line is invalid UTF-8; all is counted, nothing raises."""
    big = ("これは巨大な一つの文書です。" * 1_200_000).encode()  # ~50 MB of UTF-8
    assert len(big) > 50_000_000
    (tmp_path / "giant.txt").write_bytes(big)
    (tmp_path / "giant.html").write_bytes(b"<html><body><p>" + big + b"</p></body></html>")
    with open(tmp_path / "mixed.jsonl", "wb") as f:
        f.write(json.dumps({"text": "普通の文書です。"}, ensure_ascii=False).encode() + b"\n")
        f.write(b'{"text": "' + big + b'"}\n')
        f.write(os.urandom(2000).replace(b"\n", b"") + b"\n")
    http = b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    (tmp_path / "giant.warc").write_bytes(_warc_record(b"response", http + b"<p>" + big + b"</p>")
                                          + _warc_record(b"response", http + "<p>小さなページ。</p>".encode()))
    (tmp_path / "junk.txt").write_bytes(os.urandom(5000))
    for name in ("giant.txt", "giant.html"):
        docs, rej = items(tmp_path / name)
        assert not docs and [r.reason for r in rej] == ["document_too_large"] and len(rej[0].raw) <= 4096
        assert "bytes > max" in rej[0].detail
    docs, rej = items(tmp_path / "mixed.jsonl")
    assert [d.text for d in docs] == ["普通の文書です。"]
    assert [r.reason for r in rej] == ["document_too_large", "invalid_utf8"]
    docs, rej = items(tmp_path / "giant.warc")
    assert [d.text for d in docs] == ["小さなページ。"] and [r.reason for r in rej] == ["document_too_large"]
    docs, rej = items(tmp_path / "junk.txt")
    assert not docs and rej[0].reason == "invalid_utf8"


def test_pages_that_would_stall_extraction_are_stopped_at_their_bound(tmp_path):
    """Constructed pages that keep resiliparse busy for minutes (measured here: 200,000 nested divs, one tag with
    300,000 attributes: each past 60 s) are quarantined as extract_timeout within the bound; the file goes on and
    the pages after them are extracted; the process keeps one live helper."""
    import time

    import multiprocessing as mp

    deep = b"<html><body>" + b"<div>" * 200_000 + b"deep" + b"</div>" * 200_000 + b"</body></html>"
    attrs = b"<html><body><div " + b" ".join(b"a%d=1" % i for i in range(300_000)) + b">x</div></body></html>"
    table = b"<html><body><table>" + (b"<tr>" + b"<td>c</td>" * 300 + b"</tr>") * 300 + b"</table></body></html>"
    (tmp_path / "deep.html").write_bytes(deep)
    http = b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    (tmp_path / "crawl.warc").write_bytes(b"".join(_warc_record(b"response", http + p) for p in (
        "<p>前のページです。</p>".encode(), attrs, table, deep, "<p>後のページです。</p>".encode())))
    t = time.monotonic()
    out = list(read_corpus_file(tmp_path / "deep.html", "deep.html", extract_timeout_s=1.0))
    assert time.monotonic() - t < 10
    assert [(type(i).__name__, getattr(i, "reason", "")) for i in out] == [("Rejected", "extract_timeout")]
    assert "past 1 s" in out[0].detail
    t = time.monotonic()
    docs, rej = [], []
    for i in read_corpus_file(tmp_path / "crawl.warc", "crawl.warc", extract_timeout_s=1.0):
        (docs if isinstance(i, Document) else rej).append(i)
    assert time.monotonic() - t < 20, "two stalls cost their bound each, not minutes"
    assert [d.text for d in docs][0] == "前のページです。" and docs[-1].text == "後のページです。"
    assert len(docs) == 3 and docs[1].text.count("c") > 80_000, "the big table is fine and kept"
    assert [(r.position, r.reason) for r in rej] == [(2, "extract_timeout"), (4, "extract_timeout")]
    helpers = [p for p in mp.active_children() if p.name == "kura-html-extract"]
    assert len(helpers) == 1, "one helper per process, reused across pages and files (a stalled one was replaced)"


def test_links_and_keys_out_of_the_corpus_root_are_refused_unread(tmp_path):
    from kura.corpus.readers import outside_root, unsafe_key

    root, secret = tmp_path / "corpus", tmp_path / "secret.jsonl"
    (root / "sub").mkdir(parents=True)
    secret.write_text(json.dumps({"text": "秘密"}) + "\n")
    (root / "ok.jsonl").write_text(json.dumps({"text": "普通の文書です。"}, ensure_ascii=False) + "\n")
    os.symlink(secret, root / "evil.jsonl")
    os.symlink("../../secret.jsonl", root / "sub" / "rel.jsonl")
    os.symlink(root / "ok.jsonl", root / "sub" / "inside.jsonl")  # a link that stays inside is fine
    for name in ("evil.jsonl", "sub/rel.jsonl"):
        out = list(read_corpus_file(root / name, name, root=root))
        assert [(type(i).__name__, i.reason) for i in out] == [("Rejected", "outside_root")], name
        assert "outside the corpus folder" in out[0].detail
    assert outside_root(root / "sub" / "inside.jsonl", root) is None
    assert [d.text for d in read_corpus_file(root / "sub" / "inside.jsonl", "x", root=root)] == ["普通の文書です。"]
    assert outside_root(root / ".." / "secret.jsonl", root)
    assert unsafe_key("a/../../b.jsonl") and unsafe_key("/etc/passwd") and unsafe_key("a/b.jsonl") is None
