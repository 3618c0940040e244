"""The bundled default corpus: a few thousand Japanese and English "web" documents, generated from a fixed seed.

Why generated: the project ships no data and downloads none, yet the demo must exercise every defect real web
text has. The generator plants them at known rates: exact and near duplicates (also across files), ad and
boilerplate lines (送料無料, 今すぐクリック, "Click here"), very short and very long documents, mixed-language
documents, mojibake (UTF-8 read as cp1252), runs of empty lines and empty documents. Size at the defaults:
3,000 documents, ~1.5 MB of text, in four record files (.jsonl ×2, .jsonl.gz, .parquet), one .html page, one .txt
file, and a small WARC crawl (40 pages, half Shift_JIS, with their request records).
Same seed → byte-identical files.
"""
from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

JA_TOPICS = ["天気", "料理", "歴史", "音楽", "旅行", "科学", "数学", "経済", "健康", "読書", "映画", "宇宙",
             "農業", "言語", "建築", "鉄道", "教育", "環境", "写真", "将棋"]
JA_PLACES = ["東京", "大阪", "京都", "札幌", "福岡", "名古屋", "横浜", "神戸", "仙台", "奈良"]
JA_PEOPLE = ["田中さん", "佐藤さん", "鈴木先生", "山本さん", "学生たち", "研究者", "私の祖母", "友人"]
JA_ADJ = ["面白い", "大切な", "新しい", "古い", "難しい", "美しい", "身近な", "奥深い"]
JA_NOUNS = ["話題", "分野", "考え方", "習慣", "技術", "文化", "問題", "方法"]
JA_VERBS = ["調べました", "学びました", "紹介しました", "楽しみました", "話し合いました", "記録しました"]
JA_TIMES = ["昨日", "先週", "去年の春", "今朝", "夏休みに", "週末に"]
JA_TEMPLATES = [
    "{topic}は{adj}{noun}です。",
    "{time}、{person}は{place}で{topic}について{verb}。",
    "{place}には{topic}に関する{adj}{noun}がたくさんあります。",
    "{topic}を理解するためには、まず基本的な{noun}を知ることが必要です。",
    "{person}によると、{topic}の{noun}は{place}で生まれたそうです。",
    "多くの人が{topic}に興味を持っていますが、その{noun}はあまり知られていません。",
    "{time}、私たちは{topic}の{adj}{noun}を{verb}。",
]
EN_TOPICS = ["weather", "cooking", "history", "music", "travel", "science", "mathematics", "economics",
             "health", "reading", "film", "astronomy", "farming", "language", "architecture", "railways"]
EN_PLACES = ["Tokyo", "Osaka", "London", "Boston", "Kyoto", "Berlin", "Sydney", "Toronto"]
EN_PEOPLE = ["my neighbour", "the teacher", "a student", "the researchers", "my grandmother", "a friend"]
EN_ADJ = ["interesting", "important", "new", "old", "difficult", "beautiful", "familiar", "deep"]
EN_NOUNS = ["topic", "field", "idea", "habit", "technique", "tradition", "problem", "method"]
EN_VERBS = ["studied", "learned about", "introduced", "enjoyed", "discussed", "recorded"]
EN_TIMES = ["Yesterday", "Last week", "Last spring", "This morning", "Over the summer", "On the weekend"]
EN_TEMPLATES = [
    "{Topic} is an {adj} {noun}.",
    "{time}, {person} {verb} {topic} in {place}.",
    "There are many {adj} examples of {topic} in {place}.",
    "To understand {topic}, one first needs to know the basic {noun}.",
    "According to {person}, the {noun} of {topic} began in {place}.",
    "Many people are curious about {topic}, but its {noun} is not widely known.",
]
AD_LINES = ["送料無料！今すぐクリック", "【公式】最安値に挑戦中", "カートに入れる", "ポイント10倍キャンペーン実施中",
            "Click here to subscribe!", "Buy now - free shipping on all orders", "今すぐ購入 >>",
            "Cookie settings | Privacy policy"]


@dataclass(frozen=True)
class DefaultCorpusConfig:
    seed: int = 20241122
    n_docs: int = 3000
    n_files: int = 4


def _ja_sentence(r: random.Random) -> str:
    return r.choice(JA_TEMPLATES).format(topic=r.choice(JA_TOPICS), place=r.choice(JA_PLACES),
                                         person=r.choice(JA_PEOPLE), adj=r.choice(JA_ADJ),
                                         noun=r.choice(JA_NOUNS), verb=r.choice(JA_VERBS), time=r.choice(JA_TIMES))


def _en_sentence(r: random.Random) -> str:
    topic = r.choice(EN_TOPICS)
    return r.choice(EN_TEMPLATES).format(topic=topic, Topic=topic.capitalize(), place=r.choice(EN_PLACES),
                                         person=r.choice(EN_PEOPLE), adj=r.choice(EN_ADJ),
                                         noun=r.choice(EN_NOUNS), verb=r.choice(EN_VERBS), time=r.choice(EN_TIMES))


def _paragraphs(r: random.Random, sentence, n_par: int, joiner: str) -> str:
    return "\n\n".join(joiner.join(sentence(r) for _ in range(r.randint(2, 5))) for _ in range(n_par))


def generate_documents(cfg: DefaultCorpusConfig) -> list[str]:
    """The documents in file order (before they are split into files)."""
    return [t for t, _ in generate_labelled(cfg)]


def generate_labelled(cfg: DefaultCorpusConfig) -> list[tuple[str, dict]]:
    """(text, label) pairs. The label says what was planted: kind (clean, exact_dup, near_dup, short, long,
    empty, mixed_language, mojibake, ads), the language, and for duplicates the index of the original — the ground
    truth for dedup precision/recall and filter benchmarks."""
    r = random.Random(cfg.seed)
    docs: list[str] = []
    labels: list[dict] = []

    def add(text: str, **label) -> None:
        docs.append(text)
        labels.append(label)

    for i in range(cfg.n_docs):
        roll = r.random()
        lang_ja = r.random() < 0.6
        lang = "ja" if lang_ja else "en"
        sentence, joiner = (_ja_sentence, "") if lang_ja else (_en_sentence, " ")
        if roll < 0.08 and docs:                       # exact duplicate of an earlier document
            j = r.randrange(len(docs))
            add(docs[j], kind="exact_dup", of=j, lang=labels[j]["lang"])
            continue
        if roll < 0.13 and docs:                       # near duplicate: one sentence appended
            j = r.randrange(len(docs))
            add(docs[j] + joiner + sentence(r), kind="near_dup", of=j, lang=labels[j]["lang"])
            continue
        if roll < 0.17:                                # very short
            add(sentence(r)[: r.randint(3, 15)], kind="short", lang=lang)
            continue
        if roll < 0.175:                               # very long (tens of thousands of characters)
            add(_paragraphs(r, sentence, 400, joiner), kind="long", lang=lang)
            continue
        if roll < 0.185:                               # empty or whitespace only
            add(r.choice(["", "   ", "\n\n\n"]), kind="empty", lang=lang)
            continue
        text = _paragraphs(r, sentence, r.randint(1, 4), joiner)
        kind = "clean"
        if roll < 0.23:                                # mixed language
            text += "\n\n" + _paragraphs(r, _en_sentence if lang_ja else _ja_sentence, 1, " " if lang_ja else "")
            kind = "mixed_language"
        elif roll < 0.26:                              # mojibake: UTF-8 bytes decoded as cp1252
            text = text.encode("utf-8").decode("cp1252", errors="replace")
            kind = "mojibake"
        elif roll < 0.30:                              # mostly ads
            text = "\n".join(r.choice(AD_LINES) for _ in range(r.randint(3, 8))) + "\n" + sentence(r)
            kind = "ads"
        ads_inside = False
        if r.random() < 0.25:                          # a few ad lines inside a good document
            lines = text.split("\n")
            for _ in range(r.randint(1, 2)):
                lines.insert(r.randint(0, len(lines)), r.choice(AD_LINES))
            text = "\n".join(lines)
            ads_inside = True
        if r.random() < 0.2:                           # runs of empty lines
            text = text.replace("\n\n", "\n\n\n\n\n", 1)
        add(text, kind=kind, lang=lang, ad_lines=ads_inside)
    return list(zip(docs, labels))


def write_default_corpus(out_dir: str | Path, cfg: DefaultCorpusConfig = DefaultCorpusConfig()) -> list[Path]:
    """Write the corpus files into `out_dir` (created); returns the file paths. Each file is written to a temp
    name and renamed, so a killed run never leaves a half-written corpus file."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    docs = generate_documents(cfg)
    n = cfg.n_files
    chunks = [docs[i::n] for i in range(n)]
    paths: list[Path] = []
    for i, chunk in enumerate(chunks):
        kind = ["jsonl", "jsonl", "jsonl.gz", "parquet"][i % 4]
        path = out / f"web-{i:02d}.{kind}"
        tmp = path.with_name(path.name + ".tmp")
        rows = [{"id": f"web-{i:02d}-{j:05d}", "text": t, "url": f"https://example.invalid/{i}/{j}"}
                for j, t in enumerate(chunk)]
        if kind == "jsonl":
            tmp.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows), encoding="utf-8")
        elif kind == "jsonl.gz":
            with gzip.GzipFile(tmp, "wb", mtime=0) as f:   # mtime=0: byte-identical across runs
                f.write("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows).encode("utf-8"))
        else:
            pq.write_table(pa.Table.from_pylist(rows), tmp)
        tmp.rename(path)
        paths.append(path)
    r = random.Random(cfg.seed + 1)
    singles = {
        "page-about.html": "<html><head><title>会社案内</title></head><body><nav>ホーム | 戻る | 次へ</nav>"
                           + "".join(f"<p>{_paragraphs(r, _ja_sentence, 1, '')}</p>" for _ in range(3))
                           + "<footer>送料無料！今すぐクリック</footer></body></html>",
        "notes-en.txt": _paragraphs(r, _en_sentence, 3, " "),
    }
    for name, text in singles.items():
        path = out / name
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.rename(path)
        paths.append(path)
    paths.append(_write_warc(out / "crawl-00.warc.gz", r))
    return paths


def _write_warc(path: Path, r: random.Random, n_pages: int = 40) -> Path:
    """A small crawl: HTML pages with navigation and footer boilerplate, half of them served as Shift_JIS (as
    many Japanese sites still are), plus the request records a crawler writes."""
    out = bytearray()
    for i in range(n_pages):
        ja = i % 4 != 3
        body_text = _paragraphs(r, _ja_sentence if ja else _en_sentence, r.randint(1, 3), "" if ja else " ")
        html = ("<html><head><title>page</title></head><body><nav>ホーム | 戻る | 次へ</nav><article>"
                + "".join(f"<p>{p}</p>" for p in body_text.split("\n\n"))
                + f"</article><footer>{r.choice(AD_LINES)}</footer></body></html>")
        charset = "shift_jis" if i % 2 else "utf-8"
        payload = (f"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset={charset}\r\n\r\n".encode()
                   + html.encode(charset))
        uri = f"https://example.invalid/crawl/{i}".encode()
        for rtype, block in ((b"request", b"GET /crawl HTTP/1.1\r\nHost: example.invalid\r\n\r\n"),
                             (b"response", payload)):
            out += (b"WARC/1.0\r\nWARC-Type: " + rtype + b"\r\nWARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-"
                    + f"{2 * i + (rtype == b'response'):012d}".encode() + b">\r\nWARC-Date: 2026-11-01T00:00:00Z\r\n"
                    b"WARC-Target-URI: " + uri + b"\r\nContent-Type: application/http; msgtype=" + rtype
                    + b"\r\nContent-Length: " + str(len(block)).encode() + b"\r\n\r\n" + block + b"\r\n\r\n")
    tmp = path.with_name(path.name + ".tmp")
    with gzip.GzipFile(tmp, "wb", mtime=0) as f:
        f.write(bytes(out))
    tmp.rename(path)
    return path
