"""The generation seam: every caller (eval, ask, bench, demo) generates through `generate` here.

`generate(lm, prompts, gen, engine=...)` yields one `BatchResult` (backend.py) per finished batch. Backends:
  - "archbench": archbench's own batched greedy engine (engine.py), the default;
  - "hf": transformers' `model.generate` (hf_generate.py), the reference path.
"""
from __future__ import annotations

import importlib
from typing import Iterator, Sequence

from archbench.backend import BatchResult
from archbench.config import ENGINES, GenConfig

BACKENDS = {"archbench": "archbench.engine", "hf": "archbench.hf_generate"}
DEFAULT_ENGINE = ENGINES[0]


def generate(lm, prompts: Sequence[str], gen: GenConfig, engine: str = DEFAULT_ENGINE) -> Iterator[BatchResult]:
    """Greedy-generate a completion for every prompt; yields batches as they finish."""
    if engine not in BACKENDS:
        raise ValueError(f"--engine {engine!r}: choose one of {', '.join(BACKENDS)}")
    from archbench.loading import check_engine

    check_engine(lm, engine)
    return importlib.import_module(BACKENDS[engine]).generate(lm, prompts, gen)
