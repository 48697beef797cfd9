"""Shared fixtures: offline hub, a per-session zoo cache, and the SQuAD folder from $ARCHBENCH_DATA."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The SQuAD files (seed_eval_100.jsonl, squad_v1.1_dev.jsonl, ...); tests needing them skip without."""
    value = os.environ.get("ARCHBENCH_DATA")
    if not value or not (Path(value) / "seed_eval_100.jsonl").exists():
        pytest.skip("set ARCHBENCH_DATA to the folder of the SQuAD files (make test does)")
    return Path(value)
