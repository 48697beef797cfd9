"""Studies: one YAML file lists models, data, shot settings, fine-tunes, bench sweeps and the report.

A study is planned into stages, each one call of a library function (`ask`, `evaluate`, `finetune`,
`bench`), then its report is rendered from the store. Stage names are what `--only` selects:
  ask:N                       free-form question N (1-based) to the listed models
  eval:EVAL:MODEL             one model under one eval protocol (its own run directory)
  finetune:NAME               a LoRA run; its adapter becomes model NAME of the study
  bench:NAME                  an efficiency sweep
  train:NAME                  a from-scratch lab run (lab/train.py); its model directory is OUT/lab/NAME
`--only eval` selects every eval stage, `--only eval:squad` every model of that eval. A stage is done
when its results are stored (eval: every question of every shot setting and trial; finetune:
finetune.json; bench: every point in bench.json; ask: an answer per model), so a rerun skips it.

Strings may use `${VAR}` or `${VAR:-default}`; relative paths are relative to the working directory.
Everything goes to `out:`: its own SQLite store (OUT/archbench.sqlite), run folders, report.md/.html.
"""
from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from archbench import distributed, families
from archbench.bench_config import BenchConfig
from archbench.config import AskConfig, EvalConfig, GenConfig, RuntimeConfig, defaults, field_types
from archbench.finetune_config import STUDY_ARGS, FinetuneConfig

REQ = object()  # marks a required key
_INT, _NUM, _STR = (int,), (int, float), (str,)


def _derived(cls, names: tuple[str, ...]) -> dict:
    """Schema entries (types, default) of config fields, so a default is written only in config.py."""
    types, values = field_types(cls), defaults(cls)
    return {n: (types[n], list(values[n]) if isinstance(values[n], tuple) else values[n]) for n in names}


TOP = {"name": (_STR, REQ), "description": (_STR, ""), "out": (_STR, REQ),
       **_derived(RuntimeConfig, ("device", "dtype", "engine", "trust_remote_code")), "seed": (_INT, 1234),
       "data": ((dict,), {}),
       "models": ((list,), []), "ask": ((list,), []), "evals": ((list,), []), "finetune": ((list,), []),
       "bench": ((list,), []), "train": ((list,), []), "report": ((dict,), {})}
DATA = {"eval": (_STR, None), "gold": (_STR, None), "shots_from": (_STR, None), "train": (_STR, None)}
MODEL = {"model": (_STR, REQ), "label": (_STR, None), "family": (_STR, REQ)}
ASK = {"question": (_STR, REQ), **_derived(AskConfig, ("shots", "max_new_tokens")), "models": ((list,), None)}
# an eval: EvalConfig's and GenConfig's fields, plus the task options (None = the task's own default)
EVAL = {"name": (_STR, REQ), "models": ((list,), None), **_derived(EvalConfig, ("task", "shots", "trials")),
        **_derived(GenConfig, ("batch_size", "max_new_tokens", "stop")), "limit": (_INT, None),
        "prompt_style": ((str, dict), None), "data": (_STR, None), "gold": (_STR, None), "shots_from": (_STR, None),
        "lengths": ((list,), None), "depths": ((list,), None), "entries": ((list,), None), "jrt": ((bool,), None)}
TASK_OPTIONS = ("limit", "gold", "lengths", "depths", "entries", "jrt")  # passed to the task when set
FINETUNE = {"name": (_STR, REQ), "model": (_STR, REQ), "label": (_STR, None), "train": (_STR, None),
            "args": ((dict,), {})}
BENCH = {"name": (_STR, REQ), "models": ((list,), REQ), "contexts": ((list,), REQ), "batches": ((list,), [1]),
         **_derived(BenchConfig, ("new_tokens", "prompt_source", "min_runs", "min_seconds", "rounds"))}
REPORT = {"title": (_STR, None), "out": (_STR, None)}
TRAIN = {"name": (_STR, REQ), "args": ((dict,), {}),  # a lab run: TrainConfig's fields in args
         "lrs": ((list,), None)}  # a learning-rate sweep: one run NAME-lrLR per value (the report keeps the best)
FINETUNE_ARGS = sorted(STUDY_ARGS)  # what a study's fine-tune `args` may set
_ENV = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class StudyError(ValueError):
    """A study file that does not validate; the one-line message names the file, the key and the reason."""


@dataclass
class Stage:
    name: str  # what --only selects, e.g. "eval:squad:tiny-gpt2"
    kind: str  # ask / eval / finetune / bench
    group: str  # the eval / fine-tune / bench name, or "ask"
    model: str  # store model name (eval stages), else ""
    what: str  # one line for the plan
    call: dict  # keyword arguments of the library function
    out: str  # its output folder ("" for ask)
    needs: str = ""  # the finetune stage an eval of a fine-tuned model waits for


# loading and validation ----------------------------------------------------------------------------
def find(study: str) -> Path:
    """A study file path, or the name of a shipped study (demo, seed)."""
    path = Path(study)
    if path.is_file():
        return path
    shipped = resources.files("archbench") / "studies" / f"{study}.yaml"
    if "/" not in study and not study.endswith((".yaml", ".yml")) and shipped.is_file():
        return Path(str(shipped))
    names = sorted(p.name.removesuffix(".yaml") for p in (resources.files("archbench") / "studies").iterdir()
                   if p.name.endswith(".yaml"))
    raise FileNotFoundError(f"study {study!r}: no such file, and not a shipped study ({', '.join(names)})")


def load(study: str, *, env: dict | None = None, out: str | None = None, need_env: bool = True) -> dict:
    """Read, expand and validate a study; `env` overrides environment variables, `out` the output folder.

    With need_env=False an unset variable stays as written (the report needs only the study's `out`)."""
    path = find(study)
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise StudyError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    fail = functools.partial(_fail, path)
    if not isinstance(raw, dict):
        fail("(top level)", "a study is a mapping of keys (name, out, data, models, ...)")
    raw = _expand(raw, "", {**os.environ, **(env or {})}, fail if need_env else None)
    if out is not None:
        raw["out"] = out
    spec = _check(raw, TOP, "", fail)
    spec["data"] = _check(spec["data"], DATA, "data", fail)
    spec["report"] = _check(spec["report"], REPORT, "report", fail)
    for key, schema in (("models", MODEL), ("ask", ASK), ("evals", EVAL), ("finetune", FINETUNE), ("bench", BENCH),
                        ("train", TRAIN)):
        spec[key] = [_check(item, schema, f"{key}[{i}]", fail) for i, item in enumerate(spec[key])]
    _validate(spec, fail)
    return {**spec, "path": str(path), "text": text}


def _fail(path: Path, key: str, reason: str):
    raise StudyError(f"{path}: {key}: {reason}")


def _expand(value, where: str, env: dict, fail):
    if isinstance(value, dict):
        return {k: _expand(v, f"{where}.{k}" if where else str(k), env, fail) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{where}[{i}]", env, fail) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def sub(match):
        name, default = match.group(1), match.group(2)
        if env.get(name):
            return env[name]
        if default is not None:
            return default
        if fail is None:
            return match.group(0)
        fail(where, f"environment variable {name} is not set (e.g. {name}=../shared/data/squad)")

    return _ENV.sub(sub, value)


def _check(obj, schema: dict, where: str, fail) -> dict:
    if not isinstance(obj, dict):
        fail(where, f"expected a mapping with keys {', '.join(schema)}, got {type(obj).__name__}")
    for key in obj:
        if key not in schema:
            fail(f"{where}.{key}" if where else key, f"unknown key (known: {', '.join(schema)})")
    out = {}
    for key, (types, default) in schema.items():
        name = f"{where}.{key}" if where else key
        if key not in obj or obj[key] is None:
            if default is REQ:
                fail(name, "required key is missing")
            out[key] = default
        elif not isinstance(obj[key], types) or (isinstance(obj[key], bool) and bool not in types):
            fail(name, f"expected {' or '.join(t.__name__ for t in types)}, got {obj[key]!r}")
        else:
            out[key] = obj[key]
    return out


def _list_of(value, types, where: str, fail, minimum=None):
    if not value or not all(isinstance(v, types) and not isinstance(v, bool) for v in value):
        fail(where, f"expected a non-empty list of {types.__name__}, got {value!r}")
    if minimum is not None and min(value) < minimum:
        fail(where, f"values must be >= {minimum}, got {value!r}")


def _validate(spec: dict, fail) -> None:
    if not _NAME.match(spec["name"]):
        fail("name", f"use letters, digits, '-', '_' or '.', got {spec['name']!r}")
    if not spec["models"] and not spec["train"]:
        fail("models", "a study needs at least one model (or a train run)")
    seen: set[str] = set()
    for i, m in enumerate(spec["models"]):
        if m["family"] not in families.names():
            fail(f"models[{i}].family", f"unknown family {m['family']!r} (known: {', '.join(families.names())})")
        detected = _detected_family(m["model"], f"models[{i}].model", fail)
        if detected not in (None, m["family"]):
            fail(f"models[{i}].family", f"declared {m['family']!r}, but {m['model']!r} is a {detected!r} model")
        m["label"] = m["label"] or m["model"]
        for key in {m["model"], m["label"]}:
            if key in seen:
                fail(f"models[{i}]", f"model or label {key!r} appears twice")
            seen.add(key)
    for key in ("evals", "finetune", "bench", "train"):
        names = [s["name"] for s in spec[key]]
        for i, n in enumerate(names):
            if not _NAME.match(n) or names.index(n) != i:
                fail(f"{key}[{i}].name", f"names are unique and use letters, digits, '-', '_' or '.': {n!r}")
    for i, ft in enumerate(spec["finetune"]):
        where = f"finetune[{i}]"
        base = _base(spec, ft["model"], f"{where}.model", fail)
        ft["label"] = ft["label"] or f"{base['label']} + LoRA ({ft['name']})"
        if not (ft["train"] or spec["data"]["train"]):
            fail(f"{where}.train", "no training data: set it or data.train")
        for key in ft["args"]:
            if key not in FINETUNE_ARGS:
                fail(f"{where}.args.{key}", f"not a fine-tuning option (known: {', '.join(FINETUNE_ARGS)})")
        if ft["name"] in seen:
            fail(f"{where}.name", f"{ft['name']!r} is already a model name or label")
    _validate_evals(spec, fail)
    _validate_train(spec, fail)
    for i, q in enumerate(spec["ask"]):
        if q["shots"] not in (0, 3):
            fail(f"ask[{i}].shots", f"free-form questions take 0 or 3 shots, got {q['shots']}")
        for ref in q["models"] or []:
            _base(spec, ref, f"ask[{i}].models", fail)
    for i, b in enumerate(spec["bench"]):
        for ref in b["models"]:
            _base(spec, ref, f"bench[{i}].models", fail)
        _list_of(b["contexts"], int, f"bench[{i}].contexts", fail, minimum=1)
        _list_of(b["batches"], int, f"bench[{i}].batches", fail, minimum=1)


def _validate_train(spec: dict, fail) -> None:
    if not spec["train"]:
        return
    import dataclasses

    from archbench.lab.train import TrainConfig

    known = sorted(f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("out", "db", "stop_after"))
    for i, t in enumerate(spec["train"]):
        for key in t["args"]:
            if key not in known:
                fail(f"train[{i}].args.{key}", f"not a training option (known: {', '.join(known)})")
        if t["lrs"] is not None:
            _list_of(t["lrs"], float, f"train[{i}].lrs", fail)
            if min(t["lrs"]) <= 0 or "lr" in t["args"]:
                fail(f"train[{i}].lrs", "learning rates must be > 0, and args.lr must not be set beside them")


def _runs(t: dict) -> list[tuple[str, dict]]:
    """A train entry's runs as (name, TrainConfig args): one, or one per learning rate of its sweep."""
    if t["lrs"] is None:
        return [(t["name"], t["args"])]
    return [(f"{t['name']}-lr{lr:g}", {**t["args"], "lr": lr}) for lr in t["lrs"]]


def _validate_evals(spec: dict, fail) -> None:
    from archbench.prompts import list_styles
    from archbench.tasks import names as task_names

    styles = list_styles()
    for i, ev in enumerate(spec["evals"]):
        where = f"evals[{i}]"
        _list_of(ev["shots"], int, f"{where}.shots", fail, minimum=0)
        _list_of(ev["stop"], str, f"{where}.stop", fail)
        if ev["trials"] < 1 or (ev["limit"] is not None and ev["limit"] < 1):
            fail(where, "trials and limit must be >= 1")
        if ev["task"] not in task_names():
            fail(f"{where}.task", f"unknown task {ev['task']!r} (known: {', '.join(task_names())})")
        if ev["task"] == "squad" and not (ev["data"] or spec["data"]["eval"]):
            fail(f"{where}.data", "the squad task needs data: set it or data.eval")
        if max(ev["shots"]) > 0 and not (ev["shots_from"] or spec["data"]["shots_from"]):
            fail(f"{where}.shots_from", "few-shot settings need a shot pool: set it or data.shots_from")
        for ref in ev["models"] or [m["model"] for m in spec["models"]]:
            family = _entry(spec, ref, f"{where}.models", fail)[1]
            style = _style(ev, family)
            if style is not None and style not in styles:
                fail(f"{where}.prompt_style", f"no known style for {ref!r} ({family}): {style!r}; "
                                              f"styles: {', '.join(styles)}")


def _detected_family(model: str, where: str, fail) -> str | None:
    """The family of a zoo model or local model directory from its config; None where it cannot be read
    without loading (a hub id: checked when the model loads)."""
    from archbench import zoo

    if zoo.is_zoo(model):
        model_type = zoo.config(model).model_type
    elif (Path(model) / "config.json").is_file():
        model_type = json.loads((Path(model) / "config.json").read_text()).get("model_type", "")
    else:
        return None
    try:
        return families.family_of(model_type)
    except KeyError as err:
        fail(where, err.args[0])


def _style(ev: dict, family: str) -> str | None:
    """The eval's prompt style for a family (None: the task's default)."""
    style = ev["prompt_style"]
    return style.get(family) if isinstance(style, dict) else style


def _base(spec: dict, ref: str, where: str, fail) -> dict:
    for m in spec["models"]:
        if ref in (m["model"], m["label"]):
            return m
    fail(where, f"{ref!r} is not a model of the study ({', '.join(m['model'] for m in spec['models'])})")


def _entry(spec: dict, ref: str, where: str, fail) -> tuple[dict, str, dict | None]:
    """(base model entry, family, fine-tune entry or None) for a model or fine-tune name."""
    for ft in spec["finetune"]:
        if ref == ft["name"]:
            base = _base(spec, ft["model"], where, fail)
            return base, base["family"], ft
    base = _base(spec, ref, where, fail)
    return base, base["family"], None


# planning ------------------------------------------------------------------------------------------
def db_path(spec: dict) -> str:
    return str(Path(spec["out"]) / "archbench.sqlite")


def plan(spec: dict) -> list[Stage]:
    """The study's stages in run order: ask, evals of base models, fine-tunes, evals of fine-tunes, bench."""
    out, db, data = Path(spec["out"]), db_path(spec), spec["data"]
    runtime = RuntimeConfig(device=spec["device"], dtype=spec["dtype"], engine=spec["engine"],
                            trust_remote_code=spec["trust_remote_code"])
    every = [m["model"] for m in spec["models"]]
    asks, evals, tuned, fts, benches = [], [], [], [], []
    for i, q in enumerate(spec["ask"], 1):
        ids = [_base(spec, r, "", None)["model"] for r in q["models"] or every]
        asks.append(Stage(f"ask:{i}", "ask", "ask", "", f"{q['question']!r} {q['shots']}-shot to {len(ids)} models",
                          AskConfig(models=tuple(ids), question=q["question"], shots=q["shots"],
                                    max_new_tokens=q["max_new_tokens"], runtime=runtime, db=db,
                                    run_id=f"{spec['name']}-ask-{i}"), ""))
    for ev in spec["evals"]:
        for ref in ev["models"] or every:
            base, family, ft = _entry(spec, ref, "", None)
            style = _style(ev, family)
            label = ft["label"] if ft else base["label"]
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", ft["name"] if ft else label)
            run_dir = out / "eval" / ev["name"] / slug
            adapter = str(out / "finetune" / ft["name"]) if ft else None
            shared = data if ev["task"] == "squad" else {}  # the study's SQuAD files are SQuAD's defaults only
            options = {"data": ev["data"] or shared.get("eval"), "shots_from": ev["shots_from"] or
                       shared.get("shots_from"), "gold": ev["gold"] or shared.get("gold"), "prompt_style": style,
                       "seed": spec["seed"],
                       **{k: tuple(ev[k]) if isinstance(ev[k], list) else ev[k] for k in TASK_OPTIONS}}
            gen = GenConfig(batch_size=ev["batch_size"], max_new_tokens=ev["max_new_tokens"], stop=tuple(ev["stop"]))
            call = EvalConfig(models=(base["model"],), task=ev["task"], shots=tuple(ev["shots"]), trials=ev["trials"],
                              task_options={k: v for k, v in options.items() if v is not None}, gen=gen,
                              runtime=runtime, adapter=adapter, run_dir=str(run_dir), db=db)
            shots = ",".join(map(str, ev["shots"]))
            what = (f"{label} ({family}) {ev['task']} {shots}-shot x {ev['trials']} trial(s), "
                    f"{ev['limit'] or 'all'} items, style {style or 'default'}")
            model = f"{base['model']}+{ft['name']}" if ft else base["model"]
            stage = Stage(f"eval:{ev['name']}:{slug}", "eval", ev["name"], model, what, call,
                          str(run_dir), f"finetune:{ft['name']}" if ft else "")
            (tuned if ft else evals).append(stage)
    for ft in spec["finetune"]:
        base = _base(spec, ft["model"], "", None)
        args = {"seed": spec["seed"], "resume": True, **ft["args"]}  # a rerun continues; finetune fills the rest
        args = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
        call = FinetuneConfig(model=base["model"], train=ft["train"] or data["train"],
                              out=str(out / "finetune" / ft["name"]), device=spec["device"], db=db, **args)
        options = ", ".join(f"{k}={v}" for k, v in ft["args"].items())
        what = f"LoRA on {base['label']} -> model {ft['name']} ({options})"
        fts.append(Stage(f"finetune:{ft['name']}", "finetune", ft["name"], "", what, call, call.out))
    for b in spec["bench"]:
        ids = [_base(spec, r, "", None)["model"] for r in b["models"]]
        call = BenchConfig(models=tuple(ids), contexts=tuple(b["contexts"]), batches=tuple(b["batches"]),
                           new_tokens=b["new_tokens"], runtime=runtime, prompt_source=b["prompt_source"],
                           min_runs=b["min_runs"], min_seconds=b["min_seconds"], rounds=b["rounds"],
                           out=str(out / "bench" / b["name"]), db=db)
        what = f"{', '.join(ids)} at contexts {b['contexts']}, batches {b['batches']}, {b['new_tokens']} new tokens"
        benches.append(Stage(f"bench:{b['name']}", "bench", b["name"], "", what, call, call.out))
    return _train_stages(spec, out, db) + asks + evals + fts + tuned + benches


def _train_stages(spec: dict, out: Path, db: str) -> list[Stage]:
    """Lab runs (from-scratch training) come first: the study's models may be their output directories."""
    if not spec["train"]:
        return []
    from archbench.lab.train import TrainConfig

    stages = []
    for name, args in (run for t in spec["train"] for run in _runs(t)):
        call = TrainConfig(out=str(out / "lab" / name), db=db, **args)
        what = f"train {call.arch} from scratch on {call.data} ({', '.join(f'{k}={v}' for k, v in args.items())})"
        stages.append(Stage(f"train:{name}", "train", name, "", what, call, call.out))
    return stages


@functools.lru_cache(maxsize=32)
def _task(name: str, options: str):
    from archbench import tasks

    return tasks.make(name, **json.loads(options))


def _items(cfg: EvalConfig, task) -> int | None:
    """How many items an eval covers; None for the hub split without a limit (not read offline)."""
    if cfg.task_options.get("data") == "squad":
        return cfg.task_options.get("limit")
    return len(task.items())


def status(stage: Stage, store) -> tuple[bool, str]:
    """(done, note) for a stage, from the store and the files the library functions write."""
    if stage.kind == "train":  # train.json says whether every step ran
        result = Path(stage.out) / "train.json"
        done = result.exists() and json.loads(result.read_text()).get("finished", False)
        return done, "done" if done else "to do"
    if stage.kind == "finetune":  # finetune.json is written once training has finished
        done = (Path(stage.out) / "finetune.json").exists()
        return done, "done" if done else "to do"
    if stage.kind == "bench":
        return _bench_status(stage)
    if stage.kind == "ask":
        have = {a["model"] for a in store.records(stage.call.run_id, "answer")}
        missing = [m for m in stage.call.models if m not in have]
        stored = len(stage.call.models) - len(missing)
        return not missing, "done" if not missing else f"to do ({stored} answers stored)" if stored else "to do"
    return _eval_status(stage, store)


_PER_POINT = ("models", "contexts", "batches", "rounds")  # a bench stage's settings checked point by point


def _bench_status(stage: Stage) -> tuple[bool, str]:
    """bench.json is rewritten after every point: the stage is done when it was measured with the study's
    settings (new tokens, engine, runs, ...) and every point the study asks for is there with every round."""
    marker, call = Path(stage.out) / "bench.json", stage.call
    saved = json.loads(marker.read_text()) if marker.exists() else {"points": []}
    before = saved.get("config", {})
    changed = [f"{k} {before[k]!r} -> {v!r}" for k, v in call.record().items()
               if k not in _PER_POINT and k in before and before[k] != v]
    if changed:
        return False, f"to do (settings changed: {', '.join(changed)})"
    wanted = {(m, t, b) for m in call.models for t in call.contexts for b in call.batches}
    have = sum((p["model"], p["context"], p["batch"]) in wanted and
               (p["status"] != "ok" or p.get("rounds", 1) >= call.rounds) for p in saved["points"])
    want = len(wanted)
    return have >= want, "done" if have >= want else f"to do ({have}/{want} points stored)" if have else "to do"


def _eval_status(stage: Stage, store) -> tuple[bool, str]:
    from archbench.evaluate import run_identity, stored_run

    call = stage.call
    if not (Path(stage.out) / "run.json").exists():
        return False, "to do"
    task = _task(call.task, json.dumps(call.task_options, sort_keys=True))
    items = [] if call.task_options.get("data") == "squad" else task.items()  # the hub split is not read offline
    shot_sets = {(k, t): task.shots(k, t) for k in call.shots if k > 0 for t in range(call.trials)}
    found = stored_run(Path(stage.out), run_identity(call, task, items, shot_sets))
    if found is None:
        return False, "to do"
    run_id, changed = found
    if changed:
        return False, f"settings changed ({'; '.join(changed)}): remove {stage.out} to rerun"
    want = _items(call, task)
    settings = [(k, t) for k in call.shots for t in range(call.trials if k else 1)]
    have = [len(store.done_ids(run_id, stage.model, k, t)) for k, t in settings]
    if want is None:
        done = (Path(stage.out) / "summary.json").exists() and min(have) > 0
    else:
        done = min(have) >= want
    total = f"{sum(have)}/{want * len(settings)}" if want else f"{sum(have)}"
    return done, "done" if done else f"to do ({total} predictions stored)"


def selected(stage: Stage, only: list[str] | None) -> bool:
    return not only or any(stage.name == o or stage.name.startswith(o + ":") for o in only)


# running -------------------------------------------------------------------------------------------
def _library(kind: str):
    if kind == "ask":
        from archbench.ask import ask as fn
    elif kind == "eval":
        from archbench.evaluate import evaluate as fn
    elif kind == "finetune":
        from archbench.finetune import finetune as fn
    elif kind == "train":
        from archbench.lab.train import train as fn
    else:
        from archbench.bench import bench as fn
    return fn


def _run_stages(todo: list[Stage], echo) -> None:
    """Each stage's library call. Under several processes: evals share out their units (distributed.py),
    fine-tuning and training run as DDP, ask and bench run on rank 0 only."""
    for s in todo:
        if s.kind not in ("eval", "finetune", "train") and not distributed.is_main():
            continue
        echo(f"== {s.name}: {s.what}")
        _library(s.kind)(s.call)


def run_study(*, study: str, dry_run: bool = False, only: list[str] | None = None, env: dict | None = None,
              out: str | None = None, echo=print) -> dict:
    """Run (or with dry_run, list) the stages of a study that are not done yet, then write its report."""
    from archbench.store import Store
    from archbench.trackers import environment

    spec = load(study, env=env, out=out)
    stages = plan(spec)
    if only:
        unknown = [o for o in only if o != "report" and not any(selected(s, [o]) for s in stages)]
        if unknown:
            raise StudyError(f"{spec['path']}: --only {unknown[0]}: no such stage; stages: "
                             + ", ".join(s.name for s in stages) + ", report")
    chosen = [s for s in stages if selected(s, only)]
    for s in chosen:
        needs = next((n for n in stages if n.name == s.needs), None)
        if needs and needs not in chosen and not Path(needs.out, "finetune.json").exists():
            raise StudyError(f"{spec['path']}: {s.name} needs {s.needs} to finish first")
    study_id = f"study-{spec['name']}"
    report_out = spec["report"]["out"] or spec["out"]
    fresh = not Path(db_path(spec)).exists()
    with Store(":memory:" if dry_run and fresh else db_path(spec)) as store:  # a dry run writes nothing
        states = {s.name: status(s, store) for s in stages}
        echo(f"study {spec['name']} ({spec['path']}) -> {spec['out']}")
        for s in stages:
            mark = "   " if s in chosen else " - "
            echo(f"{mark}[{states[s.name][1]}] {s.name}: {s.what}")
        echo(f"   report: {report_out}/report.md, {report_out}/report.html")
        if dry_run:
            return {"spec": spec, "stages": stages, "status": states, "report": []}
        if distributed.is_main():  # under torchrun / accelerate only rank 0 writes the store and the report
            store.ensure_run(study_id, "study", {"path": spec["path"]}, environment(spec["device"]))
            store.put(study_id, "study", "config", spec)
    _run_stages([s for s in chosen if not states[s.name][0]], echo)
    if not distributed.is_main():
        return {"spec": spec, "stages": stages, "status": states, "report": []}
    from archbench.report import write_report

    with Store(db_path(spec)) as store:  # the report reads the plan and what is done from the store
        steps = [{"name": s.name, "kind": s.kind, "group": s.group, "model": s.model, "out": s.out,
                  "run_id": getattr(s.call, "run_id", None), "done": status(s, store)[0]} for s in stages]
        store.put(study_id, "study", "plan", {"stages": steps})
    written = write_report([(db_path(spec), study_id)], Path(report_out))
    echo("wrote " + ", ".join(str(p) for p in written))
    return {"spec": spec, "stages": stages, "status": states, "report": written}
