"""Evaluation assets for every checkpoint of the pretraining chain, and the comparisons across them.

Per run (factory over the run specs, so a new run gets all of them; each is `eager`, so the automation sensor
evaluates a new checkpoint as soon as its export exists):
- `eval_tasks/<run>`: exact-match tasks (`pipelines/evals/tasks/*.jsonl`, or a folder / S3 prefix you give): score,
  format compliance and lenient score per task;
- `eval_judge/<run>`: MT-Bench-style multi-turn questions answered by the run's model, graded 1–10 by the judge
  (the `judge` generator resource; its model is an asset input, so the judge's version is in the lineage);
- `contamination/<run>`: n-gram overlap between the evaluation sets and every document that reached the run's
  training data through its chain; asset check `no_contamination` (WARN by default, ERROR with `block: true`).
Across runs:
- `arena`: pairwise judge votes between all runs' answers (+ a human-votes file), Bradley–Terry/Elo with
  bootstrap intervals, with a picture;
- `eval_leaderboard`: one table and plot of every run's perplexity, task scores, judge score, Elo, contamination.
"""
import json
from pathlib import Path
from typing import Literal, Optional

import dagster as dg
import pyarrow.parquet as pq

import kura.arena.store as arena_votes_mod
import kura.eval.arena as arena_mod
import kura.eval.contamination as contamination_mod
import kura.eval.correlation as correlation_mod
import kura.eval.judge as judge_mod
import kura.eval.tasks as tasks_mod
from assets._common import kura_asset, output, png_md, run_versioned, write_json
from assets.automation import EAGER
from assets.mix import mix_key
from assets.pretrain import ckpt_key, hf_key
from assets.synthetic import teacher_key
from kura.io import Storage, stable_hash
from kura.train.spec import RunSpec
from resources import ArenaStoreResource, GeneratorResource, StorageResource

EVALS_DIR = Path(__file__).resolve().parents[1] / "pipelines" / "evals"
DEFAULT_TASKS = str(EVALS_DIR / "tasks")
DEFAULT_QUESTIONS = str(EVALS_DIR / "mt_bench_ja.jsonl")


def read_text_files(storage: StorageResource, location: str, suffix: str) -> dict[str, str]:
    """{name: text} of a file, a folder or an S3 prefix (S3 through the storage resource's endpoint and
    credentials)."""
    if location.startswith("s3://"):
        st = Storage(location.rsplit("/", 1)[0] if location.endswith(suffix) else location,
                     endpoint_url=storage.endpoint_url, key=storage.access_key_id, secret=storage.secret_access_key)
        if location.endswith(suffix):
            name = location.rsplit("/", 1)[1]
            return {name: st.read_bytes(name).decode("utf-8")}
        return {f: st.read_bytes(f).decode("utf-8") for f in st.list_files() if f.endswith(suffix)}
    p = Path(location)
    if p.is_file():
        return {p.name: p.read_text(encoding="utf-8")}
    if not p.is_dir():
        raise FileNotFoundError(f"evaluation data not found: {location}")
    return {f.name: f.read_text(encoding="utf-8") for f in sorted(p.glob(f"*{suffix}"))}


class TasksConfig(dg.Config):
    tasks: str = DEFAULT_TASKS
    """Folder (or s3:// prefix) of task JSONL files."""
    chat_template: str = "plain"
    """Name of the mix's chat template used to render prompts."""
    max_tokens: int = 24
    """Answer length limit (answers are one short line)."""
    limit: Optional[int] = None
    """At most this many items per task (None = all)."""


class JudgeConfig(dg.Config):
    questions: str = DEFAULT_QUESTIONS
    """Question file in FastChat's question.jsonl format (question_id, category, turns, reference for math /
    reasoning / coding) or an s3:// URI, e.g. the 80 questions of Japanese MT-Bench."""
    references: Optional[str] = None
    """Reference answers in FastChat's answer format (question_id, choices[0].turns), e.g.
    `reference_answer/gpt-4.jsonl`; they fill in (or replace) the questions' `reference`."""
    sampling: Literal["greedy", "fastchat"] = "greedy"
    """Candidate decoding: greedy everywhere, or FastChat's per-category temperatures (writing/roleplay 0.7,
    stem/humanities 0.1, the rest 0)."""
    max_answer_chars: int = 2000
    """An answer is cut to this many characters where the judge sees it (a small judge's context)."""
    chat_template: str = "plain"
    """Chat template for the candidate and the judge."""
    max_tokens: int = 96
    """Candidate answer length limit per turn."""
    judge_max_tokens: int = 96
    """Judge reply length limit (rationale + [[N]])."""
    max_retries: int = 2
    """Re-asks for a judge reply without a parsable grade."""
    force_grade: bool = True
    """After the re-asks, take the grade by constrained decoding after the judge's own reply (counted as `forced`)
    instead of leaving the answer ungraded (FastChat's −1). Needs vLLM or the local judge: set it off for a chat
    endpoint of another server."""


class ContaminationConfig(dg.Config):
    tasks: str = DEFAULT_TASKS
    """Task folder checked (the same as eval_tasks reads)."""
    questions: str = DEFAULT_QUESTIONS
    """Judge question file checked."""
    extra: list[str] = []
    """More evaluation files (JSONL) to check."""
    ngram: int = 13
    """Character n-gram length."""
    min_hits: int = 3
    """N-grams of one item that must occur in one training document."""
    block: bool = False
    """Fail the check with ERROR severity (blocks the leaderboard) instead of WARN."""


class ArenaConfig(dg.Config):
    human_votes: Optional[str] = None
    """JSONL file of human votes (model_a, model_b, winner a|b|tie); model names are run names."""
    chat_template: str = "plain"
    """Chat template for the judge."""
    judge_max_tokens: int = 96
    """Judge reply length limit."""
    max_retries: int = 1
    """Re-asks for a verdict that did not parse."""
    force_verdict: bool = True
    """After the re-asks, take the verdict by constrained decoding ([[A]]/[[B]]/[[C]]) after the judge's own reply;
    such votes are marked `forced`."""
    turns: list[int] = [1, 2]
    """Turns voted on: 1 with FastChat's pair prompt, 2 with its multi-turn pair prompt (the whole conversation)."""
    max_answer_chars: int = 2000
    """An answer is cut to this many characters where the judge sees it."""
    bootstrap: int = 200
    """Bootstrap resamples for the confidence intervals."""


def _tmpl(templates: dict, name: str) -> tuple[str, str, str]:
    if name not in templates:
        raise ValueError(f"chat template {name!r} is not in the mix's chat_templates {sorted(templates)}")
    t = templates[name]
    return t["user_prefix"], t["assistant_prefix"], t["turn_separator"]


def build_eval_tasks(spec: RunSpec, templates: dict) -> dg.AssetsDefinition:
    @kura_asset(key=dg.AssetKey(["eval_tasks", spec.name]), group_name="evaluation", automation_condition=EAGER,
              ins={"model": dg.AssetIn(key=hf_key(spec.name))},
              description=f"Exact-match tasks for {spec.name}: score and format compliance")
    def eval_tasks(context: dg.AssetExecutionContext, config: TasksConfig, storage: StorageResource,
                   candidates: GeneratorResource, model: dict) -> dg.Output:
        st = storage.get()
        files = read_text_files(storage, config.tasks, ".jsonl")
        tasks = tasks_mod.load_task_dir(files)
        user, assistant, sep = _tmpl(templates, config.chat_template)

        def build(stage: Path) -> dict:
            gen = candidates.build_for(st, model["dir"])
            res = tasks_mod.run_tasks(tasks, judge_mod.candidate_fn(gen, config.max_tokens), user, assistant, sep,
                                      config.limit)
            with open(stage / "records.jsonl", "w", encoding="utf-8") as f:
                for r in res["records"]:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
            summary = {"tasks": res["tasks"], "overall": res["overall"], "model": model["version"], "run": spec.name,
                       "task_files": {k: stable_hash(v) for k, v in files.items()}}
            write_json(stage / "summary.json", summary)
            return summary

        upstream = {"model": model, "task_data": stable_hash(files)}
        m, reused = run_versioned(context, st, config=config, upstream=upstream, build=build)
        table = dg.TableMetadataValue(
            records=[dg.TableRecord({"task": k, "metric": v["metric"], "items": v["items"], "score": v["score"],
                                     "format_compliance": v["format_compliance"],
                                     "lenient_score": v["lenient_score"]}) for k, v in m["tasks"].items()],
            schema=dg.TableSchema(columns=[dg.TableColumn("task"), dg.TableColumn("metric"),
                                           dg.TableColumn("items", "int"), dg.TableColumn("score", "float"),
                                           dg.TableColumn("format_compliance", "float"),
                                           dg.TableColumn("lenient_score", "float")]))
        return output(m, reused, score=m["overall"]["score"], format_compliance=m["overall"]["format_compliance"],
                      lenient_score=m["overall"]["lenient_score"], tasks=table)

    return eval_tasks


def load_bench(storage: StorageResource, questions: str, references: Optional[str] = None):
    """(question file name, {what was read: content hash}, questions) of a FastChat question file and optional
    reference answer file."""
    (qname, qtext), = read_text_files(storage, questions, ".jsonl").items()
    refs, hashes = None, {"questions": stable_hash(qtext)}
    if references:
        (rname, rtext), = read_text_files(storage, references, ".jsonl").items()
        refs, hashes["references"] = judge_mod.load_references(rtext, references), stable_hash(rtext)
    return qname, hashes, judge_mod.load_questions(qtext, questions, refs)


def build_eval_judge(spec: RunSpec, templates: dict, judge_teacher: str) -> dg.AssetsDefinition:
    @kura_asset(key=dg.AssetKey(["eval_judge", spec.name]), group_name="evaluation", automation_condition=EAGER,
              ins={"model": dg.AssetIn(key=hf_key(spec.name)),
                   "judge_model": dg.AssetIn(key=teacher_key(judge_teacher))},
              description=f"Japanese MT-Bench (FastChat's single-answer grading) of {spec.name}")
    def eval_judge(context: dg.AssetExecutionContext, config: JudgeConfig, storage: StorageResource,
                   candidates: GeneratorResource, judge: GeneratorResource, model: dict,
                   judge_model: dict) -> dg.Output:
        st = storage.get()
        _, read, questions = load_bench(storage, config.questions, config.references)
        tmpl = _tmpl(templates, config.chat_template)

        def build(stage: Path) -> dict:
            answers, res = judge_mod.run_bench(
                questions, candidates.build_for(st, model["dir"]), judge.build_for(st, judge_model["dir"]), tmpl,
                max_tokens=config.max_tokens, judge_max_tokens=config.judge_max_tokens,
                max_retries=config.max_retries, force=config.force_grade, sampling=config.sampling,
                max_answer_chars=config.max_answer_chars)
            write_json(stage / "answers.json", answers)
            with open(stage / "grades.jsonl", "w", encoding="utf-8") as f:
                for r in res["records"]:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
            summary = {k: v for k, v in res.items() if k != "records"}
            summary.update(model=model["version"], run=spec.name, judge_model=judge.model_label(judge_model["version"]),
                           judge_backend=judge.backend, questions=len(questions), answers=answers)
            return summary

        upstream = {"model": model, "judge_model": judge_model, **read}
        m, reused = run_versioned(context, st, config=config, upstream=upstream, build=build)
        return output(m, reused, mean_score=m["mean_score"], per_category=m["per_category"], graded=m["graded"],
                      ungraded=m["ungraded"], parse_failures=m["parse_failures"], forced=m["forced"],
                      retries=m["retries"], per_turn=m["per_turn"],
                      categories=_table(m["category_table"], ["category", "turn_1", "turn_2", "score", "graded"]),
                      radar=png_md(judge_mod.radar(m["category_table"], f"MT-Bench {spec.name}"), "radar"),
                      judge_prompt_version=m["judge_prompt_version"], judge_model=m["judge_model"])

    return eval_judge


def _training_docs(st: Storage, mixes: dict[str, dict], phases: list[str]):
    for p in phases:
        t = pq.read_table(st.local_dir(mixes[p]["dir"]) / "documents.parquet")
        cols = set(t.column_names)
        for r in t.to_pylist():
            text = r.get("text") or ""
            if "turns" in cols and r.get("turns"):  # chat documents: every turn reached the model
                turns = r["turns"] if isinstance(r["turns"], list) else json.loads(r["turns"])
                text += "\n" + "\n".join(x["content"] for x in turns)
            yield r.get("source", p), f"{p}:{r.get('doc_id')}", text


def build_contamination(spec: RunSpec, specs: dict[str, RunSpec], phases: list[str]) -> dg.AssetsDefinition:
    key = dg.AssetKey(["contamination", spec.name])
    ins = {"checkpoint": dg.AssetIn(key=ckpt_key(spec.name))}
    ins.update({f"mix_{p}": dg.AssetIn(key=mix_key(p)) for p in phases})

    @kura_asset(key=key, group_name="evaluation", automation_condition=EAGER, ins=ins,
              description=f"Evaluation items found in {spec.name}'s training data (through its lineage)",
              check_specs=[dg.AssetCheckSpec("no_contamination", asset=key, blocking=True,
                                             description="No evaluation item's n-grams in the run's training data.")])
    def contamination(context: dg.AssetExecutionContext, config: ContaminationConfig, storage: StorageResource,
                      **inputs):
        st = storage.get()
        chain = inputs["checkpoint"]["lineage"]["chain"]
        used = sorted({specs[r].phase for r in chain if r in specs})
        items: dict[str, list] = {}
        for name, items_ in tasks_mod.load_task_dir(read_text_files(storage, config.tasks, ".jsonl")).items():
            items[f"tasks/{name}"] = [(f"{name}:{it.index}", it.text()) for it in items_]
        for fname, text in read_text_files(storage, config.questions, ".jsonl").items():
            items[f"judge/{Path(fname).stem}"] = [(q.qid, "\n".join(q.turns))
                                                  for q in judge_mod.load_questions(text, fname)]
        for extra in config.extra:
            for fname, text in read_text_files(storage, extra, ".jsonl").items():
                rows = [json.loads(x) for x in text.splitlines() if x.strip()]
                items[f"extra/{Path(fname).stem}"] = [(str(i), "\n".join(str(v) for v in r.values()
                                                                         if isinstance(v, (str, list))))
                                                      for i, r in enumerate(rows)]

        def build(stage: Path) -> dict:
            res = contamination_mod.check(items, _training_docs(st, {p: inputs[f"mix_{p}"] for p in phases}, used),
                                          config.ngram, config.min_hits)
            res.update(run=spec.name, chain=chain, phases=used,
                       data_mix={p: inputs[f"mix_{p}"]["version"] for p in used})
            write_json(stage / "contamination.json", res)
            return res

        upstream = {"checkpoint": inputs["checkpoint"], **{p: inputs[f"mix_{p}"] for p in used},
                    "items": stable_hash(items)}
        m, reused = run_versioned(context, st, config=config, upstream=upstream, build=build)
        bad = {s: v for s, v in m["eval_sets"].items() if v["contaminated"]}
        yield output(m, reused, contaminated_items=sum(v["contaminated"] for v in bad.values()),
                     training_documents=m["training_documents"], eval_sets=m["eval_sets"], phases=m["phases"])
        yield dg.AssetCheckResult(
            check_name="no_contamination", passed=not bad,
            severity=dg.AssetCheckSeverity.ERROR if config.block else dg.AssetCheckSeverity.WARN,
            metadata={"contaminated": {s: {"items": v["contaminated"], "sources": v["sources"]}
                                       for s, v in bad.items()},
                      "offending_sources": sorted({x for v in bad.values() for x in v["sources"]})},
            description=("contaminated: " + "; ".join(f"{s}: {v['contaminated']}/{v['items']} items, from "
                                                      f"{', '.join(v['sources'])}" for s, v in bad.items()))
            if bad else "no evaluation item found in the training data")

    return contamination


def build_arena(specs: list[RunSpec], templates: dict, judge_teacher: str) -> dg.AssetsDefinition:
    ins = {f"judge_{s.name}": dg.AssetIn(key=dg.AssetKey(["eval_judge", s.name])) for s in specs}
    ins["judge_model"] = dg.AssetIn(key=teacher_key(judge_teacher))

    @kura_asset(name="arena", group_name="evaluation", automation_condition=EAGER, ins=ins, deps=["arena_votes"],
              description="Blind pairwise comparisons (judge votes between all runs + human votes from the arena "
                          "web app and a votes file): Bradley–Terry / Elo, win rates, battles, per category")
    def arena(context: dg.AssetExecutionContext, config: ArenaConfig, storage: StorageResource,
              judge: GeneratorResource, arena_store: ArenaStoreResource, **inputs) -> dg.Output:
        st = storage.get()
        runs = [s.name for s in specs]
        answers = {r: inputs[f"judge_{r}"]["answers"] for r in runs}
        _, read, questions = load_bench(storage, DEFAULT_QUESTIONS)
        questions = [q for q in questions if all(q.qid in a for a in answers.values())]
        human = []
        if config.human_votes:
            (hname, htext), = read_text_files(storage, config.human_votes, ".jsonl").items()
            human = [v for v in arena_mod.load_votes(htext, hname) if v["model_a"] in runs and v["model_b"] in runs]
        # the web app's votes: kura runs meet trials and external models there, so every contestant is rated
        human += arena_votes_mod.rating_votes(arena_store.get().votes(with_turns=False))
        models = runs + sorted({m for v in human for m in (v["model_a"], v["model_b"])} - set(runs))
        category = {q.qid: q.category for q in questions}

        def build(stage: Path) -> dict:
            call, force = judge_mod.judge_fns(judge.build_for(st, inputs["judge_model"]["dir"]),
                                              config.judge_max_tokens, _tmpl(templates, config.chat_template),
                                              config.force_verdict)
            votes = judge_mod.pairwise(questions, answers, call, config.max_retries, force, tuple(config.turns),
                                       config.max_answer_chars)
            for v in votes:
                v["category"] = category.get(v["question_id"], "unknown")
            allv = votes + human
            res = arena_mod.ratings(allv, models, config.bootstrap)
            res["by_category"] = arena_mod.ratings_by_category(allv, models, max(20, config.bootstrap // 2))
            with open(stage / "votes.jsonl", "w", encoding="utf-8") as f:
                for v in allv:
                    f.write(json.dumps(v, ensure_ascii=False) + "\n")
            res.update(judge_votes=len(votes), human_votes=len(human),
                       judge_model=judge.model_label(inputs["judge_model"]["version"]),
                       judge_prompt_version=judge_mod.JUDGE_PROMPT_VERSION,
                       asked=sum(t <= len(q.turns) for q in questions for t in config.turns)
                       * len(runs) * (len(runs) - 1),
                       ties=sum(v["winner"] == "tie" for v in allv),
                       forced_votes=sum(bool(v.get("forced")) for v in votes))
            write_json(stage / "ratings.json", res)
            return res

        upstream = {**{k: v for k, v in inputs.items()}, "human": stable_hash(human), **read}
        m, reused = run_versioned(context, st, config=config, upstream=upstream, build=build)
        cols = ["model", "elo", "ci_low", "ci_high", "games", "wins", "losses", "ties", "win_rate"]
        return output(m, reused, leaderboard=_table(m["leaderboard"], cols),
                      by_category=_table([{"category": c, **r} for c, b in m["by_category"].items()
                                          for r in b["leaderboard"]], ["category"] + cols),
                      judge_votes=m["judge_votes"], human_votes=m["human_votes"], ties=m["ties"],
                      forced_votes=m["forced_votes"],
                      elo_plot=_elo_plot(m["leaderboard"]))

    return arena


def _table(rows: list[dict], cols: list[str]) -> dg.TableMetadataValue:
    def typ(v):
        return "float" if isinstance(v, float) else "int" if isinstance(v, int) else "string"

    return dg.TableMetadataValue(records=[dg.TableRecord({c: r.get(c) for c in cols}) for r in rows],
                                 schema=dg.TableSchema(columns=[dg.TableColumn(c, typ(rows[0].get(c)) if rows else
                                                                               "string") for c in cols]))


def _elo_plot(board: list[dict]) -> dg.MetadataValue:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 0.45 * len(board) + 1.0), dpi=90)
    names = [r["model"] for r in board][::-1]
    elo = [r["elo"] for r in board][::-1]
    err = [[max(0.0, r["elo"] - r["ci_low"]) for r in board][::-1],
           [max(0.0, r["ci_high"] - r["elo"]) for r in board][::-1]]
    ax.errorbar(elo, range(len(names)), xerr=err, fmt="o", color="#4c72b0", capsize=3)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("Elo (Bradley–Terry), 95% bootstrap CI", fontsize=8)
    return png_md(fig, "arena")


def build_leaderboard(specs: list[RunSpec]) -> dg.AssetsDefinition:
    runs = [s.name for s in specs]
    ins = {"arena": dg.AssetIn("arena")}
    for r in runs:
        for kind in ("eval_perplexity", "eval_tasks", "eval_judge", "contamination"):
            ins[f"{kind}__{r}"] = dg.AssetIn(key=dg.AssetKey([kind, r]))

    @kura_asset(name="eval_leaderboard", group_name="evaluation", automation_condition=EAGER, ins=ins,
              description="Every checkpoint's evaluations in one table")
    def eval_leaderboard(context: dg.AssetExecutionContext, storage: StorageResource, **inputs) -> dg.Output:
        st = storage.get()
        elo = {r["model"]: r for r in inputs["arena"]["leaderboard"]}
        rows = []
        for r in runs:
            ppl = inputs[f"eval_perplexity__{r}"]["perplexity"]
            row = {"run": r}
            for phase, langs in ppl.items():
                for lang, v in langs.items():
                    row[f"ppl_{phase}_{lang}"] = v["perplexity"]
            t = inputs[f"eval_tasks__{r}"]["overall"]
            j = inputs[f"eval_judge__{r}"]
            c = inputs[f"contamination__{r}"]["eval_sets"]
            row.update(task_score=t["score"], format_compliance=t["format_compliance"],
                       lenient_score=t["lenient_score"],
                       judge_score=j["mean_score"], judge_parse_failures=j["parse_failures"], judge_forced=j["forced"],
                       elo=elo.get(r, {}).get("elo"), contaminated_items=sum(v["contaminated"] for v in c.values()))
            rows.append(row)

        metrics = ["elo", "judge_score", "task_score", "lenient_score"] + sorted(k for k in rows[0] if
                                                                               k.startswith("ppl_"))

        def build(stage: Path) -> dict:
            write_json(stage / "leaderboard.json", rows)
            corr = correlation_mod.correlations(rows, metrics)
            write_json(stage / "correlations.json", corr)
            return {"rows": rows, "correlations": corr}

        m, reused = run_versioned(context, st, config={}, upstream=inputs, build=build)
        cols = list(m["rows"][0])
        return output(m, reused, leaderboard=_table(m["rows"], cols), plot=_board_plot(m["rows"]),
                      metric_correlations=_table(m["correlations"], correlation_mod.COLUMNS))

    return eval_leaderboard


def _board_plot(rows: list[dict]) -> dg.MetadataValue:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [k for k in ("task_score", "format_compliance", "lenient_score") if k in rows[0]]
    ppl_keys = [k for k in rows[0] if k.startswith("ppl_")]
    fig, (a, b) = plt.subplots(1, 2, figsize=(8.5, 3.2), dpi=90)
    x = range(len(rows))
    for i, k in enumerate(metrics):
        a.bar([xi + 0.25 * (i - 1) for xi in x], [r[k] or 0 for r in rows], width=0.25, label=k)
    a.set_xticks(list(x), [r["run"] for r in rows], fontsize=8)
    a.set_ylim(0, 1)
    a.legend(fontsize=7)
    a.set_title("tasks", fontsize=9)
    for k in ppl_keys:
        b.plot(list(x), [r[k] for r in rows], marker="o", label=k.removeprefix("ppl_"))
    b.set_xticks(list(x), [r["run"] for r in rows], fontsize=8)
    b.set_title("held-out perplexity", fontsize=9)
    b.legend(fontsize=7)
    return png_md(fig, "leaderboard")


def build_evaluation_assets(specs: list[RunSpec], phases: list[str], templates: dict,
                            judge_teacher: str) -> list[dg.AssetsDefinition]:
    """`judge_teacher`: the teacher asset whose model grades locally (an endpoint judge replaces it: KURA_JUDGE_URL)."""
    by_name = {s.name: s for s in specs}
    out: list[dg.AssetsDefinition] = []
    for s in specs:
        out += [build_eval_tasks(s, templates), build_eval_judge(s, templates, judge_teacher),
                build_contamination(s, by_name, phases)]
    return out + [build_arena(specs, templates, judge_teacher), build_leaderboard(specs)]
