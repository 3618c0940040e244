"""Read one corpus file into documents, accounting for every byte of bad input.

Formats: `.jsonl`, `.jsonl.gz` (one JSON object per line, text in a configurable field), `.parquet` (a text
column), `.txt` (one UTF-8 document per file), `.html`/`.htm` (one page per file) and `.warc`/`.warc.gz` (every
response/resource record is a page). Pages are decoded with their detected charset (Japanese sites still serve
Shift_JIS and EUC-JP) and their main text is extracted with resiliparse (measured here ~78× faster than
Trafilatura; it keeps some navigation lines, which the boilerplate filter removes).
Nothing here raises on bad data: an unreadable file, a truncated gzip or parquet file, a line that is not valid
UTF-8, a malformed JSON line, a record without text, or an empty file each become a `Rejected` entry with a reason
and the raw bytes (capped), so the caller can quarantine and count them. Lines, rows and WARC records are
streamed, so a multi-GB file never has to fit in memory; a single document over `max_bytes` (a 50 MB page, a log
dump pasted into one JSON line) is rejected as `document_too_large` without being decoded or extracted.
A page that would stall extraction is stopped at its time or memory bound (`extract_timeout`, `extract_memory`;
kura.corpus.guard), and a file that resolves outside the corpus folder is `outside_root`, never read.
"""
from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

SUPPORTED_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet", ".txt", ".html", ".htm", ".warc", ".warc.gz")
RAW_CAP = 4096  # bytes of a rejected record kept for inspection
MAX_DOCUMENT_BYTES = 8 << 20  # default cap of one document's raw size (no useful web page is this large)


@dataclass(frozen=True)
class Document:
    doc_id: str    # "<source>:<position>": unique across the corpus even when input ids repeat
    text: str
    source: str
    position: int  # line number (1-based) or row index
    orig_id: str = ""  # the id field of the input record, if any


@dataclass(frozen=True)
class Rejected:
    source: str
    position: int
    reason: str
    detail: str
    raw: bytes


Item = Union[Document, Rejected]


def is_supported(name: str) -> bool:
    return name.lower().endswith(SUPPORTED_SUFFIXES)


def outside_root(path: str | Path, root: str | Path) -> str | None:
    """Why `path` is not inside the corpus folder `root` once links and `..` are resolved (a symlink to
    /etc/passwd, `../other/x.jsonl`), or None. Such a file is quarantined as `outside_root` and never read."""
    try:
        real, base = Path(path).resolve(), Path(root).resolve()
    except (OSError, RuntimeError) as e:  # a link loop
        return f"cannot resolve {Path(path).name}: {e}"
    if real == base or base in real.parents:
        return None
    return f"resolves outside the corpus folder (to {real})"


def unsafe_key(key: str) -> str | None:
    """Why an object-store key would leave its prefix (`..` segments, an absolute path), or None."""
    if key.startswith("/") or "\\" in key or ".." in key.split("/"):
        return f"object key {key!r} leaves the corpus prefix"
    return None


def read_corpus_file(path: str | Path, source: str, text_field: str = "text", id_field: str = "id",
                     max_bytes: int = MAX_DOCUMENT_BYTES, root: str | Path | None = None,
                     extract_timeout_s: float = 2.0, extract_memory_mb: int = 1024) -> Iterator[Item]:
    """`root`: the corpus folder; a path resolving outside it is quarantined unread. HTML pages are extracted
    within `extract_timeout_s` and `extract_memory_mb` each (kura.corpus.guard)."""
    path = Path(path)
    name = path.name.lower()
    if root is not None and (why := outside_root(path, root)):
        yield Rejected(source, 0, "outside_root", why, b"")
        return
    if name.endswith((".html", ".htm", ".warc", ".warc.gz")):
        from kura.corpus.guard import shared

        yield from _read_file(path, name, source, text_field, id_field, max_bytes,
                              shared(extract_timeout_s, extract_memory_mb))
    else:
        yield from _read_file(path, name, source, text_field, id_field, max_bytes, None)


def _read_file(path: Path, name: str, source: str, text_field: str, id_field: str, max_bytes: int,
               guard) -> Iterator[Item]:
    try:
        if path.stat().st_size == 0:
            yield Rejected(source, 0, "empty_file", "file has 0 bytes", b"")
            return
        if name.endswith((".jsonl", ".jsonl.gz")):
            yield from _read_jsonl(path, source, text_field, id_field, max_bytes)
        elif name.endswith(".parquet"):
            yield from _read_parquet(path, source, text_field, id_field, max_bytes)
        elif name.endswith((".html", ".htm")):
            yield from _read_single(path, source, html=True, max_bytes=max_bytes, guard=guard)
        elif name.endswith((".warc", ".warc.gz")):
            yield from _read_warc(path, source, max_bytes, guard)
        elif name.endswith(".txt"):
            yield from _read_single(path, source, html=False, max_bytes=max_bytes, guard=None)
        else:
            yield Rejected(source, 0, "unsupported_format", f"suffix not in {SUPPORTED_SUFFIXES}", b"")
    except OSError as e:  # permission denied, I/O error, vanished file
        yield Rejected(source, 0, "unreadable_file", f"{type(e).__name__}: {e}", b"")


def _too_large(source: str, n: int, size: int, max_bytes: int, head: bytes) -> Rejected:
    return Rejected(source, n, "document_too_large", f"{size} bytes > max {max_bytes}", head[:RAW_CAP])


def _read_jsonl(path: Path, source: str, text_field: str, id_field: str, max_bytes: int) -> Iterator[Item]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    n = 0
    with opener(path, "rb") as f:
        try:
            for n, line in enumerate(f, start=1):
                if len(line) > max_bytes:
                    yield _too_large(source, n, len(line), max_bytes, line)
                    continue
                yield _parse_jsonl_line(line, n, source, text_field, id_field)
        except (EOFError, zlib.error, gzip.BadGzipFile) as e:
            # a truncated or corrupt .gz: everything read so far is kept, the rest is named and counted
            yield Rejected(source, n + 1, "truncated_file", f"{type(e).__name__}: {e} after line {n}", b"")


def _parse_jsonl_line(line: bytes, n: int, source: str, text_field: str, id_field: str) -> Item:
    raw = line[:RAW_CAP]
    if not line.strip():
        return Rejected(source, n, "blank_line", "line is empty", raw)
    try:
        s = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return Rejected(source, n, "invalid_utf8", f"byte {e.start}: {e.reason}", raw)
    try:
        obj = json.loads(s)
    except json.JSONDecodeError as e:
        return Rejected(source, n, "malformed_json", f"{e.msg} at column {e.colno}", raw)
    if not isinstance(obj, dict) or not isinstance(obj.get(text_field), str):
        return Rejected(source, n, "missing_text_field", f"no string field {text_field!r}", raw)
    return Document(f"{source}:{n}", obj[text_field], source, n, str(obj.get(id_field) or ""))


def _read_parquet(path: Path, source: str, text_field: str, id_field: str, max_bytes: int) -> Iterator[Item]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid / OSError for a truncated footer
        yield Rejected(source, 0, "unreadable_parquet", f"{type(e).__name__}: {e}", b"")
        return
    if text_field not in pf.schema_arrow.names:
        yield Rejected(source, 0, "missing_text_field", f"no column {text_field!r}", b"")
        return
    cols = [c for c in (text_field, id_field) if c in pf.schema_arrow.names]
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=4096, columns=cols):
            d = batch.to_pydict()
            ids = d.get(id_field, [None] * batch.num_rows)
            for text, did in zip(d[text_field], ids):
                if not isinstance(text, str):
                    yield Rejected(source, row, "missing_text_field", "null text", b"")
                elif len(text) > max_bytes // 4 and len(text.encode()) > max_bytes:
                    yield _too_large(source, row, len(text.encode()), max_bytes, text[:RAW_CAP].encode())
                else:
                    yield Document(f"{source}:{row}", text, source, row, str(did or ""))
                row += 1
    except Exception as e:  # noqa: BLE001 - a corrupt row group: keep what was read
        yield Rejected(source, row, "truncated_file", f"{type(e).__name__}: {e} after row {row}", b"")


def html_to_text(data: bytes, declared_charset: str | None = None) -> str:
    """Decode a page with its declared or detected charset and extract the main text."""
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    enc = declared_charset or detect_encoding(data)
    return extract_plain_text(bytes_to_str(data, enc), main_content=True)


def _page(guard, data: bytes, charset: str | None, source: str, n: int, orig_id: str = "") -> Item:
    """One page through the bounded extractor (or directly, when no guard is given)."""
    if guard is None:
        return Document(f"{source}:{n}", html_to_text(data, charset), source, n, orig_id)
    text, reason, detail = guard.extract(data, charset)
    if reason:
        return Rejected(source, n, reason, f"{orig_id}: {detail}" if orig_id else detail, data[:RAW_CAP])
    return Document(f"{source}:{n}", text, source, n, orig_id)


def _read_single(path: Path, source: str, html: bool, max_bytes: int, guard) -> Iterator[Item]:
    size = path.stat().st_size
    if size > max_bytes:
        with open(path, "rb") as f:
            yield _too_large(source, 0, size, max_bytes, f.read(RAW_CAP))
        return
    data = path.read_bytes()
    if html:
        yield _page(guard, data, None, source, 0)
        return
    try:
        s = data.decode("utf-8")
    except UnicodeDecodeError as e:
        yield Rejected(source, 0, "invalid_utf8", f"byte {e.start}: {e.reason}", data[:RAW_CAP])
        return
    yield Document(f"{source}:0", s, source, 0)


def _read_warc(path: Path, source: str, max_bytes: int, guard) -> Iterator[Item]:
    """Each WARC record is accounted for: HTML responses become documents; other records (requests, metadata,
    non-HTML responses) and truncated or unparseable records are rejected with their reason."""
    from fastwarc.warc import ArchiveIterator

    n = 0
    with open(path, "rb") as f:
        try:
            for n, rec in enumerate(ArchiveIterator(f, parse_http=False), start=1):
                rtype = rec.headers.get("WARC-Type", "")
                uri = rec.headers.get("WARC-Target-URI", "")
                if rec.content_length > max_bytes:  # skipped by the iterator without being read into memory
                    yield _too_large(source, n, rec.content_length, max_bytes, uri.encode())
                    continue
                block = rec.reader.read()
                if len(block) < rec.content_length:
                    yield Rejected(source, n, "truncated_record",
                                   f"{uri}: {len(block)} of {rec.content_length} bytes", block[:RAW_CAP])
                    continue
                if rtype not in ("response", "resource"):
                    yield Rejected(source, n, "not_a_page", f"WARC-Type {rtype}", b"")
                    continue
                headers, body, charset = _split_http(block) if rtype == "response" else ("", block, None)
                ctype = headers.lower() if rtype == "response" else rec.headers.get("Content-Type", "").lower()
                if "html" not in ctype and "text/plain" not in ctype:
                    yield Rejected(source, n, "not_html", f"{uri}: {ctype[:80] or 'no content type'}", b"")
                    continue
                yield _page(guard, body, charset, source, n, uri)
        except Exception as e:  # noqa: BLE001 - a corrupt gzip member or record header: keep what was read
            yield Rejected(source, n + 1, "truncated_file", f"{type(e).__name__}: {e} after record {n}", b"")


def _split_http(block: bytes) -> tuple[str, bytes, str | None]:
    head, sep, body = block.partition(b"\r\n\r\n")
    if not sep:
        return "", block, None
    headers = head.decode("latin-1")
    charset = None
    for line in headers.split("\r\n"):
        if line.lower().startswith("content-type:") and "charset=" in line.lower():
            charset = line.lower().split("charset=", 1)[1].split(";")[0].strip().strip('"') or None
    ctype = next((ln.split(":", 1)[1] for ln in headers.split("\r\n") if ln.lower().startswith("content-type:")), "")
    return ctype, body, charset
