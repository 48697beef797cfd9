"""The two backends `archbench bench` measures (bench.py): one run = prefill + (new_tokens - 1) decode steps.

  engine_run  archbench's engine exactly as eval runs it (`engine.run`, the loop of engine.py), traced by a
              `StepTrace`: time to first token = the TokenBatch's prefill_s, each decode step's seconds
              (device synchronised around the step), the cache bytes after the prefill and after each step;
  hf_run      transformers' `generate` as optimum-benchmark measures it: max_new_tokens=1 for the time to
              first token, a streamer timing the N - 1 later tokens of a run forced to N tokens.
Both force min_new_tokens = max_new_tokens (every run does the same work) and return
{"ttft_s", "decode_s": [seconds per step], "after_step": [state bytes], "state_bytes" (with read_state)}.
"""
from __future__ import annotations

import torch

from archbench import engine
from archbench.config import GenConfig
from archbench.trackers import Timer, TokenClock


class BatchSplit(RuntimeError):
    """The engine ran the point's rows in more than one batch (it halves a batch on out-of-memory)."""


def engine_run(lm, ids: torch.Tensor, new_tokens: int, read_state: bool = False) -> dict:
    """archbench's engine, exactly as eval runs it (`engine.run`), on the (B, T) prompt forced to N tokens;
    a StepTrace times each decode step inside the loop."""
    rows, context = ids.shape
    gen = GenConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, stop=(), batch_size=rows)
    trace = engine.StepTrace(read_state=read_state)
    # bench measures the batch it is asked for: the budget (eval's guard against batches that cannot fit) is
    # raised to this point's rows x (prompt + new tokens)
    budget = max(engine.TOKEN_BUDGET, rows * (context + new_tokens))
    batches = list(engine.run(lm, ids.tolist(), gen, share_prefix=False, trace=trace, token_budget=budget))
    if len(batches) != 1:
        raise BatchSplit(f"out of memory: the engine halved the batch of {rows} rows to "
                         f"{max(len(b.rows) for b in batches)} rows")
    out = {"ttft_s": batches[0].prefill_s, "decode_s": trace.step_s, "after_step": []}
    if read_state:  # after the prefill, then after each step (what the step read: the cache includes its token)
        out["state_bytes"], out["after_step"] = trace.state_bytes[0], trace.state_bytes[1:]
    return out


def _tensor_bytes(obj, seen: set | None = None, depth: int = 0) -> int:
    """Bytes of the distinct tensors inside a transformers cache (a Cache object, its layers' tensors and
    dicts of tensors, or RWKV's list of state tensors)."""
    seen = set() if seen is None else seen
    if torch.is_tensor(obj):
        key = (obj.data_ptr(), obj.numel())
        if key in seen:
            return 0
        seen.add(key)
        return obj.numel() * obj.element_size()
    if depth > 4:
        return 0
    if isinstance(obj, dict):
        items = obj.values()
    elif isinstance(obj, (list, tuple)):
        items = obj
    elif type(obj).__module__.startswith("transformers"):
        items = vars(obj).values()
    else:
        return 0
    return sum(_tensor_bytes(x, seen, depth + 1) for x in items)


def _hf_cache_bytes(result) -> int | None:
    found = getattr(result, "cache", None)
    found = getattr(result, "past_key_values", None) if found is None else found
    return _tensor_bytes(found) or None


def hf_run(lm, ids: torch.Tensor, new_tokens: int, read_state: bool = False) -> dict:
    """transformers' generate: max_new_tokens=1 times the prefill; in a run forced to N tokens a streamer
    times each of the N - 1 later tokens (the gaps between consecutive tokens)."""
    tok = lm.tokenizer
    kwargs = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=tok.pad_token_id,
                  temperature=None, top_p=None, top_k=None, return_dict_in_generate=read_state)
    with Timer(lm.device) as t:
        one = lm.model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kwargs)
    clock = TokenClock(lm.device)
    full = lm.model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, streamer=clock, **kwargs)
    gaps = [b - a for a, b in zip(clock.times[1:], clock.times[2:])]  # times[0] is the prompt's put
    out = {"ttft_s": t.result.seconds, "decode_s": gaps, "after_step": []}
    if read_state:
        two = lm.model.generate(ids, max_new_tokens=2, min_new_tokens=2, **kwargs)
        out["state_bytes"] = _hf_cache_bytes(one)
        out["after_step"] = [_hf_cache_bytes(two), _hf_cache_bytes(full)]  # the first and last step's state
    return out
