"""archbench's batched greedy generation engine: one loop for every family.

generation.py's seam calls `generate(lm, prompts, gen)`; it yields one `BatchResult` per batch. The family
(families/__init__.py `Family`: prefill, step, select, state_bytes, kernel) holds the model-specific state.

The loop: tokenise (no special tokens, as the hf path); compute the longest common token prefix of all
prompts once (a few-shot trial's shots) and start every row from it; sort by length and cut batches under
a row limit and a token budget; prefill; then greedy steps where rows that hit EOS, a stop string (checked
on the decoded tail of each row, batched) or max_new_tokens leave the batch. On out-of-memory the batch
is halved and retried; finished batches are already yielded. Clocks are read after a device sync:
prefill_s = until the first token of every row exists (the shared prefix is charged to the first batch),
decode_s = the rest. `run(lm, ids, gen)` is the same loop on token ids (it yields `TokenBatch`es);
`generate` tokenises, runs it and decodes the completions. bench times this very loop: a `StepTrace` passed
to `run` receives each decode step's seconds (device synchronised around the step) and the state's bytes.
`warm_up(lm, gen)` takes every code path of a run once on a few tokens (lazy weight packing and kernel
creation then stay out of timed regions) at a cost that does not grow with the prompts.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch

from archbench import families, fastlinear
from archbench.backend import BatchResult, Completion, cut_at_stop
from archbench.config import GenConfig
from archbench.trackers import is_out_of_memory, synchronize

TOKEN_BUDGET = 32768  # rows * (prompt + new tokens) per batch: bounds KV cache and activations
MIN_PREFIX = 8  # a shorter common prefix is not worth a separate prefill
WARM_TOKENS = 2 * MIN_PREFIX  # prompt length of warm_up's two rows
STOP_WINDOW = 8  # tokens decoded per row and step to look for a stop string (plus its length)


def common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of token lists, leaving every list at least one token."""
    if len(seqs) < 2:
        return 0
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for s in seqs[1:]:
        n = next((i for i in range(n) if s[i] != first[i]), n)
    return max(n, 0)


def _eos_ids(lm) -> set[int]:
    ids = {lm.tokenizer.eos_token_id}
    gen = getattr(lm.model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    ids |= set(eos) if isinstance(eos, (list, tuple)) else {eos}
    return {i for i in ids if i is not None}


def kernel(lm) -> str:
    """The code paths the engine takes for `lm`: the family's sequence mixing and the linear layers."""
    return f"{families.get(lm.family).kernel(lm.model)}; linear {fastlinear.kernel(lm.device, lm.model.dtype)}"


@dataclass
class StepTrace:
    """What bench reads from the loop eval runs: each decode step's seconds (device synchronised before and
    after) and, with `read_state`, the state's bytes after the prefill and after every step."""

    read_state: bool = False
    step_s: list[float] = field(default_factory=list)
    state_bytes: list[int] = field(default_factory=list)


@dataclass
class _Loop:
    """The parts of the decode loop fixed for a whole run."""

    fam: families.Family
    step: Callable  # the family's step, compiled or not
    gen: GenConfig
    eos: set[int]
    trace: StepTrace | None = None


def _stepper(lm, fam, gen: GenConfig):
    """The decode step, compiled with torch.compile when asked for on CUDA; returns (fn, compiled)."""
    if gen.compile and lm.device.type == "cuda":
        return torch.compile(fam.step, dynamic=True), True
    return fam.step, False


def _still_running(lm, loop: _Loop, new: list[list[int]], live: list[int], k: int) -> list[int]:
    """Positions in `live` whose rows go on after token k: not at EOS and no stop string in the decoded tail."""
    gen, eos = loop.gen, loop.eos
    if k + 1 < gen.min_new_tokens:  # before min_new_tokens nothing stops a row
        return list(range(len(live)))
    window = STOP_WINDOW + max((len(s) for s in gen.stop), default=0)
    tails = lm.tokenizer.batch_decode([new[j][-window:] for j in live], skip_special_tokens=True) \
        if gen.stop else [""] * len(live)
    return [b for b, j in enumerate(live) if not (new[j][-1] in eos or any(s and s in tails[b] for s in gen.stop))]


def _timed_step(lm, loop: _Loop, nxt: torch.Tensor, state):
    """One decode step; with a trace, timed on its own (device synchronised before and after)."""
    if loop.trace is None:
        return loop.step(lm.model, nxt, state)
    synchronize(lm.device)
    t0 = time.perf_counter()
    state, logits = loop.step(lm.model, nxt, state)
    synchronize(lm.device)
    loop.trace.step_s.append(time.perf_counter() - t0)
    if loop.trace.read_state:
        loop.trace.state_bytes.append(loop.fam.state_bytes(state))
    return state, logits


def _batch(lm, loop: _Loop, ids, rows, prefix) -> tuple[list[list[int]], float]:
    """Greedy tokens for `rows` of `ids` (each cut after its EOS / stop / last token) and the
    perf_counter at which the first token of every row existed."""
    fam, gen = loop.fam, loop.gen
    p = len(prefix[0]) if prefix else 0
    new = [[] for _ in rows]  # generated tokens per position in `rows`
    live = list(range(len(rows)))  # positions still generating, in state order
    first = None
    with torch.inference_mode(), fastlinear.packed(lm.model):
        state, logits = fam.prefill(lm.model, [ids[i][p:] for i in rows], prefix[1] if prefix else None)
        if loop.trace is not None and loop.trace.read_state:
            loop.trace.state_bytes.append(fam.state_bytes(state))
        for k in range(gen.max_new_tokens):
            if k < gen.min_new_tokens and loop.eos:
                logits[:, list(loop.eos)] = -torch.inf
            nxt = logits.argmax(-1)  # (B_live,)
            if first is None:
                synchronize(lm.device)
                first = time.perf_counter()
            for j, t in zip(live, nxt.tolist()):
                new[j].append(t)
            keep = _still_running(lm, loop, new, live, k)
            if not keep or k + 1 == gen.max_new_tokens:
                break
            if len(keep) < len(live):
                state = fam.select(state, torch.tensor(keep, device=nxt.device))
                nxt, live = nxt[keep], [live[b] for b in keep]
            state, logits = _timed_step(lm, loop, nxt, state)
    synchronize(lm.device)
    return new, first or time.perf_counter()


@dataclass
class TokenBatch:
    rows: list[int]  # indices into the `ids` given to `run`
    tokens: list[list[int]]  # generated ids per row, up to and including the EOS / stop token
    prefill_s: float
    decode_s: float
    prefill_tokens: int
    info: dict


def _prefix(lm, fam, ids, share: bool) -> tuple[tuple | None, float]:
    """The shared token prefix of all prompts prefilled once at batch 1: ((tokens, state) or None, seconds)."""
    p = common_prefix(ids) if share else 0
    if p < MIN_PREFIX:
        return None, 0.0
    synchronize(lm.device)
    t0 = time.perf_counter()
    with torch.inference_mode(), fastlinear.packed(lm.model):
        prefix = (list(ids[0][:p]), fam.prefill(lm.model, [list(ids[0][:p])])[0])
    synchronize(lm.device)
    return prefix, time.perf_counter() - t0


def _rows(ids, order: list[int], start: int, limit: int, gen: GenConfig, budget: int) -> list[int]:
    """The next batch: up to `limit` rows from `start` of the longest-first order, under the token budget."""
    rows = [order[start]]
    while (len(rows) < limit and start + len(rows) < len(order)
           and (len(rows) + 1) * (len(ids[rows[0]]) + gen.max_new_tokens) <= budget):
        rows.append(order[start + len(rows)])
    return rows


def run(lm, ids: Sequence[Sequence[int]], gen: GenConfig, share_prefix: bool = True,
        trace: StepTrace | None = None, token_budget: int | None = None) -> Iterator[TokenBatch]:
    """The engine on token ids: greedy tokens for every prompt, one `TokenBatch` per batch, longest first.
    `token_budget` (default TOKEN_BUDGET) bounds rows x (prompt + new tokens) per batch."""
    budget = token_budget or TOKEN_BUDGET
    fam = families.get(lm.family)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    step, compiled = _stepper(lm, fam, gen)
    loop = _Loop(fam, step, gen, _eos_ids(lm), trace)
    prefix, prefix_s = _prefix(lm, fam, ids, share_prefix)
    p = len(prefix[0]) if prefix else 0
    info = {"engine": "archbench", "kernel": kernel(lm), "prefix_cache_tokens": p,
            "compile": compiled, "batch_policy": f"sorted by length, <= {gen.batch_size or 'auto'} rows, "
                                                  f"<= {budget} tokens, halve on OOM"}
    limit, start, charged = gen.batch_size if gen.batch_size > 0 else len(order), 0, False
    while start < len(order):
        rows = _rows(ids, order, start, limit, gen, budget)
        synchronize(lm.device)
        t0 = time.perf_counter()
        try:
            tokens, first = _batch(lm, loop, ids, rows, prefix)
        except RuntimeError as err:  # torch.OutOfMemoryError is one; anything else is re-raised
            if not is_out_of_memory(err) or len(rows) == 1:
                raise
            limit = max(1, len(rows) // 2)  # retry this batch smaller; finished batches are already out
            if lm.device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        extra = 0.0 if charged else prefix_s  # the shared prefix is charged to the first batch
        yield TokenBatch(rows, tokens, prefill_s=first - t0 + extra, decode_s=time.perf_counter() - first,
                         prefill_tokens=sum(len(ids[i]) - p for i in rows) + (0 if charged else p),
                         info=info | {"batch_size": len(rows), "prefix_prefill_s": extra})
        charged, start = True, start + len(rows)


def generate(lm, prompts: Sequence[str], gen: GenConfig) -> Iterator[BatchResult]:
    """Greedy-generate a completion for every prompt; yields batches (longest prompts first) as they finish."""
    tok = lm.tokenizer
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    for b in run(lm, ids, gen):
        comps = []
        for i, new in zip(b.rows, b.tokens):
            raw = tok.decode(new, skip_special_tokens=True)
            comps.append(Completion(index=i, text=cut_at_stop(raw, gen.stop)[0], raw=raw,
                                    new_tokens=len(new), prompt_tokens=len(ids[i])))
        yield BatchResult(comps, prefill_s=b.prefill_s, decode_s=b.decode_s, prefill_tokens=b.prefill_tokens,
                          decode_tokens=sum(max(len(t) - 1, 0) for t in b.tokens), info=b.info)


def warm_up(lm, gen: GenConfig) -> None:
    """Two rows of WARM_TOKENS tokens sharing all but the last two and 3 greedy steps, through the same loop as
    a run (prefix prefill, the batch's prefill after it, decode steps): weights get packed and kernels
    created here, untimed, whatever the length of the real prompts."""
    start = min(100, lm.tokenizer.vocab_size - WARM_TOKENS - 2)
    shared = list(range(start, start + WARM_TOKENS - 2))
    ids = [shared + [start, start + 1], shared + [start + 2]]
    warm = dataclasses.replace(gen, max_new_tokens=3, min_new_tokens=3, batch_size=2, stop=())
    for _ in run(lm, ids, warm):
        pass
