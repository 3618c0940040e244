"""The default cleaning profile on real Japanese documentation, against a human review of every drop.

    python benchmarks/rules_real.py --fetch          # downloads 8 Japanese Debian doc packages (apt), then runs
    python benchmarks/rules_real.py --pages DIR      # DIR/debian-ja already extracted

Sets: `debian-ja` — the HTML of debian-reference-ja, debian-faq-ja, maint-guide-ja, developers-reference-ja,
aptitude-doc-ja, debian-edu-doc-ja, gimp-help-ja and lilypond-doc-html-ja (1,308 pages; the rules were reworked on
these); `rust-by-example-ja` — the Japanese Rust by Example of a rustup toolchain when one is installed (199 pages,
held out: never looked at while the rules changed). Pages go through the product's reader (`read_corpus_file`:
resiliparse extraction in the bounded helper) and `clean_documents` with the default `CleanConfig`, as the `cleaned`
asset runs them. `benchmarks/data/real_ja_review.tsv` holds the verdict for every page the profile dropped at review
time; a drop not in it is printed as unreviewed (read it with `python -m pipelines.cli drops` or here, and add it).
"""
from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PACKAGES = ["debian-reference-ja", "debian-faq-ja", "maint-guide-ja", "developers-reference-ja", "aptitude-doc-ja",
            "debian-edu-doc-ja", "gimp-help-ja", "lilypond-doc-html-ja"]
REVIEW = ROOT / "benchmarks" / "data" / "real_ja_review.tsv"


def fetch(dest: Path) -> None:
    """apt-get download + dpkg -x (no root needed, nothing installed)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["apt-get", "download", *PACKAGES], cwd=tmp, check=True, capture_output=True)
        for deb in Path(tmp).glob("*.deb"):
            subprocess.run(["dpkg", "-x", str(deb), str(dest)], check=True)


def review() -> dict[tuple[str, str], dict]:
    with open(REVIEW, encoding="utf-8") as f:
        rows = csv.DictReader((ln for ln in f if not ln.startswith("#")), delimiter="\t")
        return {(r["set"], r["path"]): r for r in rows}


def run_set(name: str, root: Path, labels: dict) -> dict:
    from kura.corpus.readers import Document, read_corpus_file
    from kura.text.filters import CleanConfig, clean_documents

    t0 = time.perf_counter()
    docs, unreadable = [], 0
    for p in sorted(root.rglob("*.html")):
        for it in read_corpus_file(p, p.relative_to(root).as_posix()):
            if isinstance(it, Document):
                docs.append({"doc_id": it.doc_id, "source": it.source, "text": it.text})
            else:
                unreadable += 1
    res = clean_documents(docs, CleanConfig())
    verdicts: Counter = Counter()
    wrong, unreviewed = [], []
    for r in res.rejected:
        lab = labels.get((name, r["source"]))
        if lab is None:
            unreviewed.append((r["reason"], r["source"]))
        else:
            verdicts[lab["verdict"]] += 1
            if lab["verdict"] == "good":
                wrong.append((r["reason"], r["source"], lab["why"]))
    kept_bad = [s for (st, s), lab in labels.items()
                if st == name and lab["verdict"] == "bad" and s in {d["source"] for d in res.kept}]
    good_total = len(res.kept) - len(kept_bad) + verdicts["good"] + len(unreviewed)
    return {"set": name, "pages": len(docs), "unreadable": unreadable, "kept": len(res.kept),
            "dropped": len(res.rejected), "drops": dict(res.drops), "bad": verdicts["bad"], "good": verdicts["good"],
            "unreviewed": unreviewed, "wrong": wrong, "kept_bad": kept_bad,
            "drop_precision": verdicts["bad"] / len(res.rejected) if res.rejected else 1.0,
            "good_kept": (len(res.kept) - len(kept_bad)) / good_total if good_total else 1.0,
            "seconds": time.perf_counter() - t0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", default=str(ROOT / ".kura" / "real_ja"), help="folder holding debian-ja/")
    ap.add_argument("--fetch", action="store_true", help="download and extract the Debian packages first")
    args = ap.parse_args()
    pages = Path(args.pages)
    if args.fetch and not (pages / "debian-ja").exists():
        fetch(pages / "debian-ja")
    sets = [("debian-ja", pages / "debian-ja")]
    rbe = sorted(Path.home().glob(".rustup/toolchains/*/share/doc/rust/html/rust-by-example/ja"))
    if rbe:
        sets.append(("rust-by-example-ja", rbe[0]))
    sets = [(n, p) for n, p in sets if p.exists()]
    if not sets:
        print(f"no pages under {pages}: run with --fetch (downloads {len(PACKAGES)} Debian packages)", file=sys.stderr)
        return 2
    labels = review()
    results = [run_set(n, p, labels) for n, p in sets]
    print(f"{'set':<20} {'pages':>6} {'kept':>6} {'dropped':>8} {'drops right':>12} {'good kept':>10} {'s':>6}")
    for r in results:
        print(f"{r['set']:<20} {r['pages']:>6} {r['kept']:>6} {r['dropped']:>8} {r['drop_precision']:>11.1%} "
              f"{r['good_kept']:>10.1%} {r['seconds']:>6.1f}")
    for r in results:
        print(f"\n{r['set']}: drops by reason {dict(sorted(r['drops'].items()))}")
        for reason, src, why in r["wrong"]:
            print(f"  wrong drop  {reason:<20} {src}  ({why})")
        for reason, src in r["unreviewed"]:
            print(f"  unreviewed  {reason:<20} {src}")
        for src in r["kept_bad"]:
            print(f"  reviewed bad, now kept  {src}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
