"""The `hf` backend: transformers' `model.generate` as people run it, the reference path.

Greedy, the same batch size, left padding, stop strings, no prefix cache; families whose forward ignores the
padding mask (RWKV-4) run at batch 1. Prefill = time until the streamer sees the first new token.
"""
from __future__ import annotations

import time
from typing import Iterator, Sequence

import torch

from archbench import families
from archbench.backend import BatchResult, Completion, cut_at_stop
from archbench.config import GenConfig
from archbench.trackers import TokenClock, synchronize


def generate(lm, prompts: Sequence[str], gen: GenConfig) -> Iterator[BatchResult]:
    """Greedy completions of `prompts` by transformers' generate; yields batches, longest prompts first."""
    tok = lm.tokenizer
    tok.padding_side = "left"
    pad_safe = families.get(lm.family).pad_safe
    if gen.batch_size < 1:
        raise ValueError("--batch-size auto needs --engine archbench (transformers' generate does not back off)")
    bs = gen.batch_size if pad_safe else 1
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
            out = lm.model.generate(**enc, do_sample=False, max_new_tokens=gen.max_new_tokens,
                                    min_new_tokens=gen.min_new_tokens or None,
                                    stop_strings=list(gen.stop) or None, tokenizer=tok,
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
            text, _ = cut_at_stop(raw, gen.stop)
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
