"""Reports: report.md and one self-contained report.html, rendered from stored results only.

Sources are resolved to stored runs by sources.py (study files, run folders, run ids). Eval numbers come
from `summary.summarize` (means and spreads over trials in its `aggregates`); the columns of an eval's tables
are the metrics its task declares (stored with the run), one column group per shot setting and breakdown
group (e.g. context length). Bench points
and training logs from their store records; each table cell is formatted from one of those values, and
the plots draw the very same values. The only numbers made here are differences between two stored
values (fine-tuned minus base, later run minus earlier run), shown with their sign.
Both files are built from one list of blocks, so they carry the same tables (HTML: report_html.py).
"""
from __future__ import annotations

import json
from pathlib import Path

from archbench import families, fmt, plots, report_lab, tables
from archbench.report_html import to_html
from archbench.store import Store
from archbench.summary import summarize

FAMILIES = tuple(families.names())  # report sections in the registry's order
# two eval results are comparable when these settings match (the task's identity is compared as a whole)
_PROTOCOL = ("task", "data", "gold", "prompt_style", "shots_from", "seed", "max_new_tokens", "stop", "dtype", "limit")
_BENCH_COLS = (("TTFT ms", "ttft_ms_median", ".1f"), ("prefill tok/s", "prefill_tok_s", ".0f"),
               ("decode ms/tok", "decode_ms_median", ".2f"), ("decode tok/s", "decode_tok_s", ".1f"),
               ("peak MB", "peak_mem_mb", ".0f"), ("state", "state_bytes", "size"))


def write_report(refs: list[tuple[str, str]], out: Path) -> list[Path]:
    """Write report.md, report.html and plots/*.png for runs given as (store path, run id) pairs."""
    res = collect(refs)
    figures = _figures(res)
    blocks = build(res, figures)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    for name, _, png in figures:
        (out / "plots" / f"{name}.png").write_bytes(png)
    md, page = out / "report.md", out / "report.html"
    md.write_text(to_markdown(blocks), encoding="utf-8")
    page.write_text(to_html(blocks, res), encoding="utf-8")
    return [md, page]


# reading stored runs ------------------------------------------------------------------------------
def collect(refs: list[tuple[str, str]]) -> dict:
    """Everything the report shows, read from the stores: summaries, examples, points, logs, answers."""
    res = {"title": None, "studies": [], "labels": {}, "untrained": set(), "evals": [], "examples": [],
           "prompts": {}, "bench": [], "train": [], "lab": [], "answers": [], "runs": []}
    for db, run_id in refs:
        with Store(db) as store:
            rows = store.db.execute("SELECT model, MAX(untrained) FROM models GROUP BY model").fetchall()
            res["untrained"] |= {r[0] for r in rows if r[1]}
            run = store.run(run_id)
            if run is None:
                raise ValueError(f"{db}: no run {run_id!r}")
            if run["kind"] == "study":
                _add_study(store, run, res)
            else:
                _add_run(store, run, run_id, res)
    return res


def _add_study(store: Store, run: dict, res: dict) -> None:
    records = {r["key"]: r for r in store.records(run["run_id"], "study")}
    spec, steps = records["config"], records.get("plan", {"stages": []})["stages"]
    res["title"] = res["title"] or spec["report"].get("title") or f"archbench study {spec['name']}"
    res["studies"].append(spec)
    res["labels"].update({m["model"]: m["label"] for m in spec["models"]})
    for ft in spec["finetune"]:
        base = next(m for m in spec["models"] if ft["model"] in (m["model"], m["label"]))
        res["labels"][f"{base['model']}+{ft['name']}"] = ft["label"]
    for step in steps:
        run_id = step["run_id"] or (store.folder_run(Path(step["out"])) if step["out"] else None)
        if run_id and store.run(run_id) is not None:
            _add_run(store, store.run(run_id), step["group"], res)


def _add_run(store: Store, run: dict, group: str, res: dict) -> None:
    run_id, kind = run["run_id"], run["kind"]
    res["runs"].append({"run_id": run_id, "kind": kind, "group": group, "config": run["config"], "env": run["env"],
                        "models": {r["key"]: r for r in store.records(run_id, "model_identity")}})
    if kind == "eval":
        summary = summarize(store, run_id)
        res["evals"].append({"group": group, "run_id": run_id, "summary": summary})
        first, second = (headline(summary["task"]) + [None])[:2]
        for p in store.predictions(run_id):
            index = res["prompts"].setdefault(p["prompt"], len(res["prompts"]))
            top = p["scores"].get(first["name"], 0.0)
            res["examples"].append({"m": label(res, p["model"]), "k": p["shots"], "t": p["trial"], "g": group,
                                    "id": p["example_id"], "p": index, "y": p["prediction"], "a": p["golds"],
                                    "em": top, "f1": p["scores"].get(second["name"], top) if second else top,
                                    "ok": int(top >= 1)})
    elif kind == "bench":
        res["bench"] += [{**p, "run_id": run_id} for p in store.records(run_id, "bench") if "context" in p]
    elif kind == "train":  # a lab run: from-scratch training (lab/train.py)
        records = {r["key"]: r for r in store.records(run_id, "train")}
        if "result" in records:
            log = [records[k] for k in sorted(records) if k.startswith("log-")]
            res["lab"].append({**records["result"], "name": Path(run["config"].get("out", run_id)).name, "log": log})
    elif kind == "finetune":
        log = sorted(store.records(run_id, "train_log"), key=lambda e: e["step"])
        result = next(iter(store.records(run_id, "finetune")), {})
        res["train"].append({"run_id": run_id, "name": Path(run["config"].get("out", run_id)).name,
                             "model": run["config"].get("model"), "log": log, "result": result})
    elif kind == "ask":
        res["answers"] += store.records(run_id, "answer")


def headline(spec: dict) -> list[dict]:
    """The task's rate metrics in order (EM, F1, ... for SQuAD): the first is the headline."""
    return [m for m in spec["metrics"] if m["percent"]]


def label(res: dict, model: str) -> str:
    """A model's display name (the study's label), marked when it is an untrained zoo model."""
    return res["labels"].get(model, model) + (" (untrained)" if model in res["untrained"] else "")


# tables ------------------------------------------------------------------------------------------
def model_points(res: dict) -> list[dict]:
    """One point per eval group x model x setting: the summary's aggregate plus model facts."""
    points = []
    for ev in res["evals"]:
        s = ev["summary"]
        meta = {r["model"]: r for r in s["results"]}
        spec = s["task"]
        by_name = {m["name"]: m for m in spec["metrics"]}
        top = [by_name[c] for c in spec.get("columns") or by_name if by_name[c]["percent"]]  # plotted: the last
        for a in s["aggregates"]:
            m = meta[a["model"]]
            n = next(r["n"] for r in s["results"] if r["model"] == a["model"] and r["shots"] == a["shots"]
                     and r["group"] == a["group"])
            points.append({"group": ev["group"], "run_id": ev["run_id"], "config": s["config"], "spec": s["task"],
                           "model": a["model"], "label": label(res, a["model"]), "family": m["family"],
                           "layers": m.get("layers"),
                           "params": m["params"], "untrained": a["model"] in res["untrained"], "adapter": m["adapter"],
                           "n": n, "shots": a["shots"], "agg": a, "score": a[f"{top[-1]['name']}_mean"],
                           "score_label": f"{s['task']['title']} {top[-1]['label']}", "tok_s": a["gen_tok_s_mean"]})
    return points


def family_tables(points: list[dict]) -> list[tuple[str, list[str], list[list[str]]]]:
    """Seed-style tables of one eval group, one per family (tables.eval_table: the CLI's cells)."""
    out, settings = [], tables.settings_of(points)
    for family in [f for f in FAMILIES if any(p["family"] == f for p in points)] + \
            sorted({p["family"] for p in points} - set(FAMILIES)):
        ps = [{**p, "params": fmt.params(p["params"])} for p in points if p["family"] == family]
        first = ("Model", "layers", "params") if any(p["layers"] for p in ps) else ("Model", "params")
        head, rows = tables.eval_table(ps[0]["spec"], [{**p, "layers": p["layers"] or "?"} for p in ps], first,
                                       settings)
        out.append((family, head, rows))
    return out


def _signed(a: float, b: float) -> str:
    return f"{b - a:+.2f}"


def _same_protocol(p: dict, q: dict) -> bool:
    return (p["shots"] == q["shots"] and p["agg"]["group"] == q["agg"]["group"]
            and all(p["config"].get(k, "squad" if k == "task" else None) ==
                    q["config"].get(k, "squad" if k == "task" else None) for k in _PROTOCOL))


def _pair(a: dict, b: dict) -> list[str]:
    """Cells of two aggregates of the same task side by side: for its first two rate metrics A, B, Δ."""
    out = []
    for m in headline(b["spec"])[:2]:
        key = m["name"]
        out += [fmt.spread(a["agg"][f"{key}_values"], ".2f"), fmt.spread(b["agg"][f"{key}_values"], ".2f"),
                _signed(a["agg"][f"{key}_mean"], b["agg"][f"{key}_mean"])]
    return out


def _pair_header(points: list[dict], a: str, b: str) -> list[str]:
    names = [m["label"] for m in headline(points[0]["spec"])[:2]] if points else ["EM", "F1"]
    return [h for n in names for h in (f"{n} {a}", f"{n} {b}" if b else n, f"Δ {n}")]


def finetune_table(points: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Fine-tuned models against their base model under the same protocol and shot setting."""
    header = ["Fine-tuned", "base", "eval", "shots"] + _pair_header(points, "base", "")
    rows = []
    for p in (p for p in points if p["adapter"]):
        base = next((q for q in points if q["model"] == p["model"].split("+")[0] and _same_protocol(p, q)), None)
        if base is not None:
            rows.append([p["label"], base["label"], p["group"], str(p["shots"])] + _pair(base, p))
    return header, rows


def comparison_table(points: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The same model and setting in two runs of the same task: each later run against the first (B − A)."""
    header = ["Model", "shots", "run A", "run B"] + _pair_header(points, "A", "B")
    rows, first = [], {}
    for p in points:
        a = first.setdefault((p["model"], p["shots"], p["spec"]["name"], str(p["agg"]["group"])), p)
        if a is not p:
            rows.append([p["label"], str(p["shots"]), a["group"], p["group"]] + _pair(a, p))
    return header, rows


def recall_points(res: dict) -> list[dict]:
    """Per eval result of a task broken down by a context size (length, entries): its headline score."""
    points = []
    for ev in res["evals"]:
        spec = ev["summary"]["task"]
        size = next((k for k in spec["breakdown"] if k in ("length", "entries")), None)
        if size is None:
            continue
        by_name = {m["name"]: m for m in spec["metrics"]}
        metric = next(by_name[c] for c in spec.get("columns") or by_name if by_name[c]["percent"])
        for r in ev["summary"]["results"]:
            points.append({"task": f"{spec['name']} ({ev['group']})", "label": label(res, r["model"]),
                           "family": r["family"], "untrained": r["model"] in res["untrained"],
                           "x": r["group"][size], "x_label": f"{size} (tokens)" if size == "length" else size,
                           "depth": r["group"].get("depth"), "score": r[metric["name"]], "metric": metric["label"]})
    return points


def bench_points(res: dict) -> list[dict]:
    return [{**p, "label": label(res, p["model"]), "untrained": p["model"] in res["untrained"] or
             bool(p.get("untrained"))} for p in res["bench"]]


def bench_table(points: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["Model", "family", "context", "batch", "status"] + [c[0] for c in _BENCH_COLS]
    rows = []
    for p in sorted(points, key=lambda p: (p["label"], p["context"], p["batch"])):
        cells = []
        for _, key, spec in _BENCH_COLS:
            value = p.get(key)
            cells.append("-" if value is None else fmt.size(value) if spec == "size" else format(value, spec))
        rows.append([p["label"], fmt.family(p.get("family"), p.get("layers")), str(p["context"]), str(p["batch"]),
                     fmt.status(p.get("status"), p.get("reason")), *cells])
    return header, rows


def lab_table(res: dict) -> tuple[list[str], list[list[str]]]:
    """Models trained from scratch the same way (lab): shape, budget, and what they reached."""
    header = ["Run", "arch", "family", "shape", "steps", "tokens", "val loss", "bits/char", "MQAR acc", "tok/s",
              "wall s", "kernel"]
    rows = []
    for r in res["lab"]:
        num = lambda key, spec, r=r: "-" if r.get(key) is None else format(r[key], spec)  # noqa: E731
        shp = r.get("shape") or {}
        shape = f"{shp['blocks']}x{shp['width']} ({shp['non_embedding_params']:,} non-emb.)" if "blocks" in shp else "-"
        rows.append([r["name"], r["arch"], r["family"], shape, str(r["steps"]), str(r["tokens"]),
                     num("val_loss", ".3f"), num("val_bpc", ".3f"), num("mqar_mean_accuracy", ".3f"),
                     num("tok_s", ".0f"), num("wall_s", ".0f"), str(r.get("kernel", "-"))])
    return header, rows


def train_table(res: dict) -> tuple[list[str], list[list[str]]]:
    header = ["Fine-tune", "base", "rows", "steps", "first loss", "final loss", "trainable params", "wall s"]
    rows = []
    for t in res["train"]:
        r = t["result"]
        rows.append([t["name"], label(res, t["model"] or "?"), str(r.get("rows", "-")), str(r.get("steps", "-")),
                     format(r["first_loss"], ".3f") if "first_loss" in r else "-",
                     format(r["final_loss"], ".3f") if "final_loss" in r else "-",
                     str(r.get("trainable_params", "-")), format(r["wall_s"], ".0f") if "wall_s" in r else "-"])
    return header, rows


# the document: blocks rendered to Markdown and HTML -------------------------------------------------
def _figures(res: dict) -> list[tuple[str, str, bytes]]:
    points = model_points(res)
    train = [{"label": t["name"], "steps": [e["step"] for e in t["log"] if "loss" in e],
              "losses": [e["loss"] for e in t["log"] if "loss" in e]} for t in res["train"]]
    title = points[0]["score_label"] if points else "score"
    made = [("accuracy_vs_params", f"{title} vs parameters, by family", plots.accuracy_vs_params(points)),
            ("speed_vs_params", "Generated tokens/s vs parameters", plots.speed_vs_params(points)),
            ("bench_vs_context", "Decode latency and peak memory vs context length",
             plots.bench_vs_context(bench_points(res))),
            ("recall_vs_context", "Recall vs context size (shaded: spread over depths and trials), beside decode "
                                  "latency vs context of the same models", plots.recall_beside_cost(
                                      recall_points(res), bench_points(res))),
            ("recall_heatmaps", "Recall by depth x context size, per model", plots.depth_heatmaps(recall_points(res))),
            ("loss_curves", "Fine-tuning loss", plots.loss_curves(train)),
            ("lab_loss_curves", "Training loss from scratch vs tokens and vs wall-clock (same data, order and batch "
                                "for every family)", plots.lab_losses(report_lab.loss_runs(res))),
            ("lab_mqar", "MQAR recall vs sequence length and vs state bytes (best learning rate per point), beside "
                         "decode latency vs context", plots.mqar_frontier(report_lab.mqar_points(res),
                                                                          bench_points(res)))]
    return [(name, title, png) for name, title, png in made if png]


_LEGEND = ("SQuAD EM/F1: official SQuAD v1.1 scores over all gold answers (0-1). tok/s: generated tokens per second of "
           "generation (prefill + decode). seed acc: the seed study's strict single-answer match. With several "
           "trials a cell is mean ± standard deviation over trials. Models marked (untrained) are random-init zoo "
           "checkpoints: their numbers only show that the pipeline runs.")


def build(res: dict, figures: list) -> list[tuple]:
    """The report as blocks: ("h1"|"h2"|"h3"|"p", text), ("table", header, rows), ("code", text), ("plot", ...)."""
    title = res["title"] or "archbench report"
    blocks: list[tuple] = [("h1", title)]
    for spec in res["studies"]:
        blocks.append(("p", spec.get("description") or ""))
    points = model_points(res)
    if res["evals"] or res["answers"]:  # the legend of the quality tables (a lab or bench study has none)
        blocks.append(("p", _LEGEND))
    groups = list(dict.fromkeys(p["group"] for p in points))
    for group in groups:
        ps = [p for p in points if p["group"] == group]
        c = ps[0]["config"]
        blocks += [("h2", f"{ps[0]['spec']['title']}: {group}"),
                   ("p", _eval_settings(c, ps))]
        for family, header, rows in family_tables(ps):
            blocks += [("h3", family), ("table", header, rows)]
    for heading, (header, rows) in (("Base vs fine-tuned", finetune_table(points)),
                                    ("Same model, two runs (B − A)", comparison_table(points)),
                                    ("Fine-tuning runs", train_table(res)),
                                    ("Trained from scratch (lab)", lab_table(res)),
                                    ("MQAR recall of the lab models (best of each learning-rate sweep)",
                                     report_lab.mqar_table(res)),
                                    ("Efficiency sweep", bench_table(bench_points(res)))):
        if rows:
            blocks += [("h2", heading), ("table", header, rows)]
    if figures:
        blocks.append(("h2", "Plots"))
        blocks += [("plot", name, title, png) for name, title, png in figures]
    if res["answers"]:
        rows = [[label(res, a["model"]), str(a["shots"]), a["question"], a["answer"][:300] or "(empty)"]
                for a in res["answers"]]
        blocks += [("h2", "Free-form answers"), ("table", ["Model", "shots", "question", "answer"], rows)]
    blocks += _provenance(res)
    return blocks


def _provenance(res: dict) -> list[tuple]:
    blocks: list[tuple] = [("h2", "Environment")]
    envs: dict[str, list[str]] = {}
    for r in res["runs"]:
        envs.setdefault(json.dumps(r["env"], indent=1, sort_keys=True), []).append(r["run_id"])
    for env, run_ids in envs.items():
        blocks += [("p", "runs: " + ", ".join(run_ids)), ("code", env)]
    digests = [_digests(r) for r in res["runs"] if r["config"].get("identity")]
    if digests:
        blocks += [("p", "What each eval run is (content digests, identity.py): a resumed run matched all of them."),
                   ("code", "\n".join(digests))]
    blocks.append(("h2", "Commands and config"))
    for spec in res["studies"]:
        blocks += [("p", f"study {spec['name']}:"), ("code", f"archbench run {spec['path']}"), ("code", spec["text"])]
    lines = [json.dumps({"run_id": r["run_id"], "kind": r["kind"], "config": r["config"]}) for r in res["runs"]]
    if lines:
        blocks += [("p", "The stored config of every run in this report:"), ("code", "\n".join(lines))]
    return blocks


def _eval_settings(c: dict, ps: list[dict]) -> str:
    """One line of an eval group's settings: the task's options that are set, and the generation settings."""
    styles = sorted({str(p["config"].get("prompt_style")) for p in ps if p["config"].get("prompt_style")})
    options = [f"{k.replace('_', ' ')} {c[k]}" for k in ("data", "lengths", "depths", "entries", "jrt", "shots_from")
               if c.get(k) is not None]
    return ", ".join(options + [f"{max(p['n'] for p in ps)} items per setting"]
                     + ([f"prompt style {', '.join(styles)}"] if styles else [])
                     + [f"up to {c.get('max_new_tokens')} new tokens, stop {c.get('stop')}."])


def _digests(run: dict) -> str:
    """One line of what a run is: its identity's digests (eval: task, items, golds, shots; fine-tune: training
    rows and base weights) and, for evals, each model's weights / adapter."""
    ident = {k: v for k, v in run["config"]["identity"].items() if not isinstance(v, dict)}
    models = ", ".join(f"{m} weights {d['weights']}" + (f" adapter {d['adapter']}" if d.get("adapter") else "")
                       for m, d in run["models"].items())
    return f"{run['run_id']} ({run['kind']}): " + ", ".join(f"{k} {v}" for k, v in ident.items()) + \
        (f"; {models}" if models else "")


def _md_cell(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[tuple]) -> str:
    parts = []
    for b in blocks:
        if b[0] in ("h1", "h2", "h3"):
            parts.append("#" * int(b[0][1]) + " " + b[1])
        elif b[0] == "p":
            parts.append(b[1])
        elif b[0] == "table":
            parts.append(tables.markdown([_md_cell(h) for h in b[1]], [[_md_cell(c) for c in r] for r in b[2]]))
        elif b[0] == "code":
            fence = "````" if "```" in b[1] else "```"
            parts.append(f"{fence}\n{b[1]}\n{fence}")
        elif b[0] == "plot":
            parts.append(f"![{b[2]}](plots/{b[1]}.png)")
    return "\n\n".join(p for p in parts if p) + "\n"
