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
