"""Shared fixtures: the hub forced offline, the SQuAD folder from $ARCHBENCH_DATA, and a way to swap one function
of a registered family for a test."""
import dataclasses
import importlib
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # forced: no test may reach the hub, whatever the caller's environment
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The SQuAD files (seed_eval_100.jsonl, squad_v1.1_dev.jsonl, ...); tests needing them skip without."""
    value = os.environ.get("ARCHBENCH_DATA")
    if not value or not (Path(value) / "seed_eval_100.jsonl").exists():
        pytest.skip("set ARCHBENCH_DATA to the folder of the SQuAD files (make test does)")
    return Path(value)


@pytest.fixture
def patch_family(monkeypatch):
    """patch_family(name, prefill=fn, ...): the registered family `name` with some functions replaced, for
    this test only."""
    from archbench import families

    def patch(name: str, **fields):
        module = importlib.import_module(families._MODULES[name])
        monkeypatch.setattr(module, "FAMILY", dataclasses.replace(module.FAMILY, **fields))

    return patch


def _write_jsonl(path, rows) -> str:
    import json

    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def write_jsonl():
    """write_jsonl(path, rows) -> str(path): one JSON object per line."""
    return _write_jsonl


_TASK_KEYS = ("data", "gold", "shots_from", "limit", "prompt_style", "seed", "lengths", "depths", "entries", "jrt")
_GEN_KEYS = ("batch_size", "max_new_tokens", "stop", "min_new_tokens", "compile")
_RUNTIME_KEYS = ("device", "dtype", "engine")


def eval_config(**kw):
    """An EvalConfig from the flat keyword arguments the CLI takes (models, data, shots, batch_size, ...)."""
    from archbench.config import EvalConfig, GenConfig, RuntimeConfig

    pick = lambda keys: {k: kw.pop(k) for k in keys if k in kw}  # noqa: E731
    task, gen, runtime = pick(_TASK_KEYS), pick(_GEN_KEYS), pick(_RUNTIME_KEYS)
    if "stop" in gen:
        gen["stop"] = tuple(gen["stop"])
    return EvalConfig(models=tuple(kw.pop("models")), task_options=task, gen=GenConfig(**gen),
                      runtime=RuntimeConfig(**runtime), shots=tuple(kw.pop("shots", (0,))), **kw)


@pytest.fixture
def run_eval():
    """run_eval(models=[...], data=..., shots=[0, 3], ...) -> summary: the eval recipe from flat options."""
    from archbench.evaluate import evaluate

    return lambda **kw: evaluate(eval_config(**kw))


@pytest.fixture(params=sorted({alias for name in __import__("archbench.families", fromlist=["names"]).names()
                               for alias in __import__("archbench.families", fromlist=["get"]).get(name).tiny}))
def tiny_model(request) -> str:
    """Every tiny zoo model of every registered family (tests parametrize over the registry)."""
    return request.param
