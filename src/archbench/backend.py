"""The generation seam's shared types: what every backend (engine.py, hf_generate.py) yields, and the protocol
a backend satisfies. generation.py picks the backend; eval, ask and bench all call it.

A backend is a module with `generate(lm, prompts, gen: GenConfig) -> Iterator[BatchResult]`; one BatchResult
per finished batch, so callers can store results as they come. Both report the same typed timings: prefill
(time to first token, device synchronised) and decode.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence


@dataclass
class Completion:
    index: int  # position in the `prompts` list given to `generate`
    text: str  # generated text cut at the first stop string (not stripped)
    raw: str  # all generated text (special tokens skipped)
    new_tokens: int  # tokens generated, including the one that hit a stop string or EOS
    prompt_tokens: int


@dataclass
class BatchResult:
    completions: list[Completion]
    prefill_s: float  # time to first token of the batch (prompt forward + first sample)
    decode_s: float  # the rest of the batch's generation
    prefill_tokens: int  # prompt tokens processed in prefill (excluding padding and cached prefix)
    decode_tokens: int  # tokens produced after the first one of each sequence
    info: dict = field(default_factory=dict)  # engine, batch policy, kernel path, ...


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` at the earliest stop string; return (text, whether a stop was found)."""
    cuts = [text.find(s) for s in stop if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)
