"""archbench's batched greedy generation engine: one loop for every family.

generation.py's seam calls `generate(lm, prompts, settings)`; it yields one `BatchResult` per batch.
The family modules (families/*.py) hold the model-specific state behind one small protocol:

    prefill(model, seqs, state=None) -> state, logits   seqs: token lists or a (B, T) tensor; `state` is an
                                                        optional batch-1 prefix state every row continues;
                                                        logits (B, V) fp32 of each row's last token
    step(model, tokens, state) -> state, logits         tokens (B,): one decode step for every row
    select(state, rows) -> state                        keep rows (finished sequences leave the batch)
    state_bytes(state) -> int                           bytes of the KV cache / recurrent state
    kernel(model) -> str                                which code path runs the sequence mixing

The loop: tokenise (no special tokens, as the hf path); compute the longest common token prefix of all
prompts once (a few-shot trial's shots) and start every row from it; sort by length and cut batches under
a row limit and a token budget; prefill; then greedy steps where rows that hit EOS, a stop string (checked
on the decoded tail of each row, batched) or max_new_tokens leave the batch. On out-of-memory the batch
is halved and retried; finished batches are already yielded. Clocks are read after a device sync:
prefill_s = until the first token of every row exists (the shared prefix is charged to the first batch),
decode_s = the rest. `run(lm, ids, settings)` is the same loop on token ids (it yields `TokenBatch`es);
`generate` tokenises, runs it and decodes the completions.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from archbench import families, fastlinear
from archbench.generation import BatchResult, Completion, GenSettings, cut_at_stop
from archbench.trackers import is_out_of_memory, synchronize

TOKEN_BUDGET = 32768  # rows * (prompt + new tokens) per batch: bounds KV cache and activations
MIN_PREFIX = 8  # a shorter common prefix is not worth a separate prefill
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


def _stepper(lm, fam, settings: GenSettings):
    """The decode step, compiled with torch.compile when asked for on CUDA; returns (fn, compiled)."""
    if settings.compile and lm.device.type == "cuda":
        return torch.compile(fam.step, dynamic=True), True
    return fam.step, False


def _batch(lm, fam, step, ids, rows, settings, prefix, eos) -> tuple[list[list[int]], float]:
    """Greedy tokens for `rows` of `ids` (each cut after its EOS / stop / last token) and the
    perf_counter at which the first token of every row existed."""
    tok, model = lm.tokenizer, lm.model
    p = len(prefix[0]) if prefix else 0
    new = [[] for _ in rows]  # generated tokens per position in `rows`
    live = list(range(len(rows)))  # positions still generating, in state order
    first = None
    window = STOP_WINDOW + max((len(s) for s in settings.stop), default=0)
    with torch.inference_mode(), fastlinear.packed(model):
        state, logits = fam.prefill(model, [ids[i][p:] for i in rows], prefix[1] if prefix else None)
        for k in range(settings.max_new_tokens):
            if k < settings.min_new_tokens and eos:
                logits[:, list(eos)] = -torch.inf
            nxt = logits.argmax(-1)  # (B_live,)
            if first is None:
                synchronize(lm.device)
                first = time.perf_counter()
            for j, t in zip(live, nxt.tolist()):
                new[j].append(t)
            early = k + 1 >= settings.min_new_tokens  # before min_new_tokens nothing stops a row
            tails = tok.batch_decode([new[j][-window:] for j in live], skip_special_tokens=True) \
                if settings.stop and early else [""] * len(live)
            keep = [b for b, j in enumerate(live)
                    if not (early and (new[j][-1] in eos or any(s and s in tails[b] for s in settings.stop)))]
            if not keep or k + 1 == settings.max_new_tokens:
                break
            if len(keep) < len(live):
                state = fam.select(state, torch.tensor(keep, device=nxt.device))
                nxt, live = nxt[keep], [live[b] for b in keep]
            state, logits = step(model, nxt, state)
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


def run(lm, ids: Sequence[Sequence[int]], settings: GenSettings, share_prefix: bool = True) -> Iterator[TokenBatch]:
    """The engine on token ids: greedy tokens for every prompt, one `TokenBatch` per batch, longest first."""
    fam = families.get(lm.family)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    eos = _eos_ids(lm)
    step, compiled = _stepper(lm, fam, settings)
    p = common_prefix(ids) if share_prefix else 0
    prefix, prefix_s = None, 0.0
    synchronize(lm.device)
    t0 = time.perf_counter()
    if p >= MIN_PREFIX:
        with torch.inference_mode(), fastlinear.packed(lm.model):
            prefix = (list(ids[0][:p]), fam.prefill(lm.model, [list(ids[0][:p])])[0])
        synchronize(lm.device)
        prefix_s = time.perf_counter() - t0
    else:
        p = 0
    info = {"engine": "archbench", "kernel": kernel(lm), "prefix_cache_tokens": p,
            "compile": compiled, "batch_policy": f"sorted by length, <= {settings.batch_size or 'auto'} rows, "
                                                  f"<= {TOKEN_BUDGET} tokens, halve on OOM"}
    limit, start, charged = settings.batch_size if settings.batch_size > 0 else len(order), 0, False
    while start < len(order):
        rows = [order[start]]
        while (len(rows) < limit and start + len(rows) < len(order)
               and (len(rows) + 1) * (len(ids[rows[0]]) + settings.max_new_tokens) <= TOKEN_BUDGET):
            rows.append(order[start + len(rows)])
        synchronize(lm.device)
        t0 = time.perf_counter()
        try:
            tokens, first = _batch(lm, fam, step, ids, rows, settings, prefix, eos)
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


def generate(lm, prompts: Sequence[str], settings: GenSettings) -> Iterator[BatchResult]:
    """Greedy-generate a completion for every prompt; yields batches (longest prompts first) as they finish."""
    tok = lm.tokenizer
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    for b in run(lm, ids, settings):
        comps = []
        for i, new in zip(b.rows, b.tokens):
            raw = tok.decode(new, skip_special_tokens=True)
            comps.append(Completion(index=i, text=cut_at_stop(raw, settings.stop)[0], raw=raw,
                                    new_tokens=len(new), prompt_tokens=len(ids[i])))
        yield BatchResult(comps, prefill_s=b.prefill_s, decode_s=b.decode_s, prefill_tokens=b.prefill_tokens,
                          decode_tokens=sum(max(len(t) - 1, 0) for t in b.tokens), info=b.info)
