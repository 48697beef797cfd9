"""The generation seam: every caller (eval, ask, bench, demo) generates through `generate` here.

`generate(lm, prompts, settings, engine=...)` yields one `BatchResult` per finished batch, so callers can
store results as they come. Two engines sit behind it:
  - "archbench": archbench's own batched greedy engine (engine.py), the default;
  - "hf": transformers' `model.generate`, greedy, left padding, stop strings — the reference path.
Both report the same typed timings: prefill (time to first token, device synchronised) and decode.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from archbench import families
from archbench.trackers import TokenClock, synchronize

ENGINES = ("archbench", "hf")
DEFAULT_ENGINE = "archbench"


@dataclass(frozen=True)
class GenSettings:
    max_new_tokens: int = 32
    stop: tuple[str, ...] = ("\n",)  # cut and stop at the first occurrence in the generated text
    batch_size: int = 8  # 0 = auto: as many rows as the token budget allows, halved on out-of-memory
    min_new_tokens: int = 0  # bench: min = max so that every run does the same work
    compile: bool = False  # engine: torch.compile the decode step (CUDA only)


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


def generate(lm, prompts: Sequence[str], settings: GenSettings, engine: str = DEFAULT_ENGINE) -> Iterator[BatchResult]:
    """Greedy-generate a completion for every prompt; yields batches as they finish."""
    if engine == "hf":
        return _hf_generate(lm, prompts, settings)
    if engine == "archbench":
        from archbench import engine as own

        return own.generate(lm, prompts, settings)
    raise ValueError(f"--engine {engine!r}: choose one of {', '.join(ENGINES)}")


def _hf_generate(lm, prompts: Sequence[str], settings: GenSettings) -> Iterator[BatchResult]:
    """transformers' generate as people run it: same batch size, left padding, stop strings, no prefix
    cache; families whose forward ignores the padding mask (RWKV) run at batch 1."""
    tok = lm.tokenizer
    tok.padding_side = "left"
    pad_safe = families.get(lm.family).pad_safe
    if settings.batch_size < 1:
        raise ValueError("--batch-size auto needs --engine archbench (transformers' generate does not back off)")
    bs = settings.batch_size if pad_safe else 1
    lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])  # longest first: OOM shows early
    for start in range(0, len(order), bs):
        idx = order[start: start + bs]
        enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(lm.device) for k, v in enc.items()}
        clock = TokenClock(lm.device)
        synchronize(lm.device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = lm.model.generate(**enc, do_sample=False, max_new_tokens=settings.max_new_tokens,
                                    min_new_tokens=settings.min_new_tokens or None,
                                    stop_strings=list(settings.stop) or None, tokenizer=tok,
                                    pad_token_id=tok.pad_token_id, streamer=clock,
                                    temperature=None, top_p=None, top_k=None)
        synchronize(lm.device)
        t1 = time.perf_counter()
        first = clock.times[1] if len(clock.times) > 1 else t1  # times[0]: the prompt
        comps, decode_tokens = [], 0
        for row, i in enumerate(idx):
            new = out[row, enc["input_ids"].shape[1]:].tolist()
            n = _count_until_end(new, tok)
            raw = tok.decode(new[:n], skip_special_tokens=True)
            text, _ = cut_at_stop(raw, settings.stop)
            comps.append(Completion(index=i, text=text, raw=raw, new_tokens=n, prompt_tokens=lengths[i]))
            decode_tokens += max(n - 1, 0)
        yield BatchResult(comps, prefill_s=first - t0, decode_s=t1 - first,
                          prefill_tokens=sum(lengths[i] for i in idx), decode_tokens=decode_tokens,
                          info={"engine": "hf", "batch_size": len(idx), "kernel": "transformers"})


def _count_until_end(new: list[int], tok) -> int:
    """Tokens generated up to and including EOS; padding after a finished sequence does not count."""
    for n, t in enumerate(new):
        if t == tok.eos_token_id:
            return n + 1
        if t == tok.pad_token_id:
            return n
    return len(new)
