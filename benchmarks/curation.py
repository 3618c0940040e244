"""Web-corpus curation: kura against datatrove's standard pipeline, on the same WARC input, in the same run.

    .venv/bin/python benchmarks/curation.py                 # generated labelled crawl, >= 200 MB of HTML
    .venv/bin/python benchmarks/curation.py --mb 50         # smaller
    .venv/bin/python benchmarks/curation.py --input DIR     # your .warc/.warc.gz files (or .html files: packed
                                                            # into WARC first, untimed, so both read the same)

kura: WARC → resiliparse extraction → ftfy/NFKC → language id → Japanese-aware rule filters → exact + MinHash-LSH
dedup (kura.curate.curate_files, 2 worker processes).
datatrove 0.10 (the FineWeb recipe with its defaults): WARC → Trafilatura → GopherRepetition → GopherQuality → C4
→ JSONL, then its 4-stage MinHash dedup (signatures → buckets → cluster → filter), LocalPipelineExecutor with 2
workers. Its LanguageFilter downloads a model at run time and is left out of both. Its WarcReader needs warcio,
cchardet and libmagic, which the pinned environment does not carry; the peer reads the same files through a
datatrove reader built on fastwarc with the same decode rule as its WarcReader (UTF-8, else detected charset) —
at least as fast as warcio, so the comparison does not favour kura.

Printed: docs/s and input MB/s (uncompressed HTML), peak RSS of the whole process tree (sampled every 50 ms),
drops by reason, and on the generator's labels: clean Japanese / clean English kept, junk removed, and dedup
precision/recall on planted duplicates whose original survived. Last line: `throughput ratio vs datatrove: X.XX`.
"""
from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datatrove.pipeline.readers.base import BaseDiskReader  # noqa: E402


class FastWarcReader(BaseDiskReader):
    """datatrove reader over WARC files with fastwarc; same record selection and decoding as datatrove's
    WarcReader.process_record (response records, text/html payloads, UTF-8 else detected charset)."""

    name = "🕷 FastWarc"

    def read_file(self, filepath: str):
        from fastwarc.warc import ArchiveIterator, WarcRecordType
        from resiliparse.parse.encoding import detect_encoding

        with self.data_folder.open(filepath, "rb") as f:
            for ri, rec in enumerate(ArchiveIterator(f, record_types=WarcRecordType.response, parse_http=True)):
                with self.track_time():
                    mime = rec.headers.get("WARC-Identified-Payload-Type")
                    if mime is not None and mime not in ("text/html", "application/xhtml+xml"):
                        continue
                    body = rec.reader.read()
                    try:
                        html = body.decode("utf-8")
                    except UnicodeDecodeError:
                        try:
                            html = body.decode(detect_encoding(body))
                        except (UnicodeDecodeError, LookupError):
                            continue
                    doc = self.get_document_from_dict(
                        {"text": html, "id": rec.headers.get("WARC-Record-ID"),
                         "url": rec.headers.get("WARC-Target-URI")}, filepath, ri)
                if doc:
                    yield doc


class PeakRSS:
    """Peak resident memory of this process and all its descendants, sampled every 50 ms."""

    def __init__(self):
        import psutil

        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()

    def _sample(self):
        import psutil

        while not self._stop.is_set():
            total = 0
            for p in [self.proc, *self.proc.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.05)

    def __enter__(self):
        self.t = threading.Thread(target=self._sample, daemon=True)
        self.t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.t.join()


def html_bytes(paths: list[Path]) -> int:
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    n = 0
    for p in paths:
        with open(p, "rb") as f:
            for rec in ArchiveIterator(f, record_types=WarcRecordType.response, parse_http=True):
                n += len(rec.reader.read())
    return n


def pack_html_folder(src: Path, dst: Path) -> list[Path]:
    """A folder of .html files → one WARC.gz per 500 pages (untimed), so both pipelines read the same bytes."""
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in (".html", ".htm"))
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(0, len(files), 500):
        buf = bytearray()
        for j, p in enumerate(files[k:k + 500]):
            block = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n" + p.read_bytes()
            buf += (b"WARC/1.0\r\nWARC-Type: response\r\nWARC-Record-ID: <urn:uuid:%08d-0000-4000-8000-%012d>\r\n"
                    b"WARC-Target-URI: file:///%s\r\nContent-Length: %d\r\n\r\n"
                    % (k, j, p.relative_to(src).as_posix().encode(), len(block))) + block + b"\r\n\r\n"
        path = dst / f"packed-{k // 500:05d}.warc.gz"
        path.write_bytes(gzip.compress(bytes(buf)))
        out.append(path)
    return out


def run_kura(paths: list[Path], work: Path, workers: int):
    from kura.curate import curate_files

    t = time.perf_counter()
    with PeakRSS() as mem:
        r = curate_files(paths, work / "kura-out", workers=workers)
    return {"seconds": time.perf_counter() - t, "peak": mem.peak, "docs_in": r.documents_in, "kept": r.kept,
            "dropped": r.dropped, "kept_urls": r.kept_urls, "dup_urls": r.duplicate_urls}


def run_datatrove(paths: list[Path], work: Path, workers: int):
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                                  MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    inp = work / "dt-input"
    inp.mkdir()
    for p in paths:
        (inp / p.name).symlink_to(p.resolve())
    tasks = len(paths)
    cfg = MinhashConfig()
    stages = [
        LocalPipelineExecutor(pipeline=[FastWarcReader(str(inp), glob_pattern="*.warc*"), Trafilatura(),
                                        GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(),
                                        JsonlWriter(str(work / "dt-filtered"))],
                              tasks=tasks, workers=workers, logging_dir=str(work / "dt-logs/filter")),
        LocalPipelineExecutor(pipeline=[JsonlReader(str(work / "dt-filtered")),
                                        MinhashDedupSignature(str(work / "dt-sigs"), config=cfg)],
                              tasks=tasks, workers=workers, logging_dir=str(work / "dt-logs/sigs")),
        LocalPipelineExecutor(pipeline=[MinhashDedupBuckets(str(work / "dt-sigs"), str(work / "dt-buckets"),
                                                            config=cfg)],
                              tasks=cfg.num_buckets, workers=workers, logging_dir=str(work / "dt-logs/buckets")),
        LocalPipelineExecutor(pipeline=[MinhashDedupCluster(str(work / "dt-buckets"), str(work / "dt-remove"),
                                                            config=cfg)],
                              tasks=1, workers=1, logging_dir=str(work / "dt-logs/cluster")),
        LocalPipelineExecutor(pipeline=[JsonlReader(str(work / "dt-filtered")),
                                        MinhashDedupFilter(str(work / "dt-remove"),
                                                           exclusion_writer=JsonlWriter(str(work / "dt-removed"))),
                                        JsonlWriter(str(work / "dt-out"))],
                              tasks=tasks, workers=workers, logging_dir=str(work / "dt-logs/filter-dups")),
    ]
    t = time.perf_counter()
    with PeakRSS() as mem:
        for ex in stages:
            ex.run()
    seconds = time.perf_counter() - t

    def urls(folder: Path) -> set:
        out = set()
        for f in folder.glob("*.jsonl.gz"):
            with gzip.open(f, "rt", encoding="utf-8") as fh:
                out.update(json.loads(line)["metadata"].get("url") for line in fh)
        return out

    dropped: Counter = Counter()
    for st in json.loads((work / "dt-logs/filter/stats.json").read_text()):
        for k, v in st.get("stats", {}).items():
            if k.startswith("dropped_"):
                dropped[f"{st['name'].split()[-1]}:{k[8:]}"] += v["total"] if isinstance(v, dict) else v
            elif k == "dropped" and "Trafilatura" in st["name"]:
                dropped["trafilatura:no_text"] += v["total"] if isinstance(v, dict) else v
    dup = urls(work / "dt-removed")
    dropped["minhash_duplicate"] = len(dup)
    kept = urls(work / "dt-out")
    return {"seconds": seconds, "peak": mem.peak, "kept": len(kept), "dropped": dropped, "kept_urls": kept,
            "dup_urls": dup}


def quality(res: dict, labels: dict) -> dict:
    kept = res["kept_urls"]
    out = {}
    for name, sel in (("clean ja kept", lambda lab: lab["kind"] == "clean" and lab["lang"] == "ja"),
                      ("clean en kept", lambda lab: lab["kind"] == "clean" and lab["lang"] == "en")):
        us = [u for u, lab in labels.items() if sel(lab)]
        out[name] = sum(u in kept for u in us) / max(1, len(us))
    junk = [u for u, lab in labels.items() if lab["kind"] in ("ads", "short", "empty", "shop", "spam")
            or (lab["kind"] == "mojibake" and lab["lang"] == "ja")]
    out["junk removed"] = sum(u not in kept for u in junk) / max(1, len(junk))
    # dedup: planted duplicates whose original survived must go; documents flagged as duplicates must be planted
    planted = {u for u, lab in labels.items() if lab["kind"] in ("exact_dup", "near_dup") and lab["of"] in kept}
    flagged = res["dup_urls"]
    out["dedup recall"] = len(planted & flagged) / max(1, len(planted))
    dups_any = {u for u, lab in labels.items() if lab["kind"] in ("exact_dup", "near_dup")}
    out["dedup precision"] = len(flagged & dups_any) / max(1, len(flagged))
    return out


def minhash_speed() -> tuple[float, float]:
    import subprocess

    out = subprocess.run([sys.executable, str(Path(__file__).with_name("minhash.py")), "--docs", "8000"],
                         capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("speed ratio"))
    return float(line.split(":")[1]), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", help="folder of .warc/.warc.gz (or .html) files; default: the generated crawl")
    ap.add_argument("--mb", type=float, default=200.0, help="size of the generated crawl (uncompressed HTML)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "kura-bench"))
    ap.add_argument("--skip-datatrove", action="store_true")
    args = ap.parse_args()
    from kura.corpus.webcrawl import read_labels, write_web_crawl

    labels = {}
    work = Path(tempfile.mkdtemp(prefix="kura-curation-"))
    if args.input:
        src = Path(args.input)
        paths = sorted(p for p in src.rglob("*") if p.name.endswith((".warc", ".warc.gz")))
        if not paths:
            paths = pack_html_folder(src, work / "packed")
        if (src / "labels.jsonl").exists():
            labels = read_labels(src)
    else:
        crawl = Path(args.cache) / f"crawl-{args.mb:g}mb"
        t = time.perf_counter()
        paths = write_web_crawl(crawl, target_mb=args.mb)
        print(f"input: generated crawl in {crawl} ({time.perf_counter() - t:.0f} s, reused when present)")
        labels = read_labels(crawl)
    mb = html_bytes(paths) / 1e6
    print(f"input: {len(paths)} WARC files, {mb:.1f} MB of HTML, {args.workers} workers\n")
    try:
        results = {"kura": run_kura(paths, work, args.workers)}
        if not args.skip_datatrove:
            results["datatrove"] = run_datatrove(paths, work, args.workers)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n_docs = results["kura"]["docs_in"]
    print(f"{'pipeline':10s} {'seconds':>8s} {'docs/s':>8s} {'MB/s':>7s} {'peak MB':>8s} {'kept':>7s}"
          + "".join(f" {k:>15s}" for k in (quality(results["kura"], labels) if labels else {})))
    for name, r in results.items():
        q = quality(r, labels) if labels else {}
        print(f"{name:10s} {r['seconds']:8.1f} {n_docs / r['seconds']:8.0f} {mb / r['seconds']:7.2f} "
              f"{r['peak'] / 2**20:8.0f} {r['kept']:7d}" + "".join(f" {v:15.3f}" for v in q.values()))
    for name, r in results.items():
        print(f"\n{name} drops by reason:")
        for k, v in sorted(r["dropped"].items(), key=lambda kv: -kv[1]):
            print(f"  {k:40s} {v:7d}")
    ratio, _ = minhash_speed()
    print(f"\nMinHash signatures (shingling included, benchmarks/minhash.py --docs 8000): {ratio:.1f}x datasketch")
    if "datatrove" in results:
        print(f"throughput ratio vs datatrove: {results['datatrove']['seconds'] / results['kura']['seconds']:.2f}")


if __name__ == "__main__":
    main()
