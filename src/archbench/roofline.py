"""Roofline accounting for `archbench bench`: the machine's measured rates and the work of a bench point.

Rates are measured by the bench command itself, once per run, on the run's device (and dtype for matmuls):
  matmul_rates()   best FLOP/s of n x n @ n x n products (2 n^3 FLOPs each), device synchronised, per path
                   the engine uses: torch.mm, and on CPU fp32 also oneDNN's prepacked linear (fastlinear.py),
                   which beats MKL's sgemm by ~2x on AMD EPYC; the fastest is the machine's matmul rate;
  mem_bandwidth()  best bytes/s of large tensor copies, counting bytes read plus bytes written.

Work per point (batch B, prompt T tokens), following Kaplan et al. 2020's 2N FLOPs per token and
gpt-fast's bandwidth accounting of decode (each step streams every weight and the whole cache once):
  prefill_flops   = B * (2 * N_body * T  +  2 * N_head  +  2 * L * T^2 * d_attn)
                    N_body: parameters outside the embedding tables and the output head (biases and norms
                    included); N_head: output-head weights, applied to the last position only (the engines
                    ask for the last logits only); attention term, transformers only: QK^T and AV are
                    2 * 2 * T^2 * d_attn FLOPs per layer, halved by the causal mask (d_attn = heads * head_dim;
                    sliding windows are not discounted). The recurrent scans' O(T * d_inner * d_state)
                    element-wise work is left out.
  decode_bytes    = weight bytes + state bytes read per step
                    weight bytes: every parameter except the input embedding lookups (a tied output head is
                    counted once, as the head); state bytes: the KV cache or recurrent state of the whole
                    batch, averaged over the decode steps (exact for a cache that grows by one token a step).
"""
from __future__ import annotations

import torch

from archbench import fastlinear
from archbench.trackers import Timer


def _fastest_s(fn, device: torch.device, repeats: int) -> float:
    """Fastest seconds of `fn()` over `repeats` synchronised calls after one untimed warm-up call. A rate is a
    ceiling: another process on a shared host only ever slows a call, so a median of a loaded host's calls
    would understate the machine and overstate every fraction of it (STREAM reports the best run too)."""
    times = []
    for i in range(repeats + 1):
        with Timer(device) as t:
            fn()
        if i:
            times.append(t.result.seconds)
    return min(times)


def matmul_rates(device="cpu", dtype: torch.dtype = torch.float32, n: int | None = None,
                 repeats: int = 5) -> dict[str, float]:
    """Best FLOP/s of square matmuls (n = 2048 on CPU, 8192 on CUDA) per path: "torch.mm", and
    "onednn-prepacked" where fastlinear applies."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 2048)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(device, dtype) for _ in range(2))
    paths = {"torch.mm": lambda: torch.mm(a, b)}
    if fastlinear.available(device, dtype):
        w = fastlinear.onednn_pack(b.t())
        paths["onednn-prepacked"] = lambda: fastlinear.onednn_linear(a, w)
    return {name: 2 * n**3 / _fastest_s(fn, device, repeats) for name, fn in paths.items()}


def mem_bandwidth(device="cpu", nbytes: int | None = None, repeats: int = 10) -> float:
    """Best bytes/s (read + written) of copying an `nbytes` buffer (128 MiB on CPU, 1 GiB on CUDA)."""
    device = torch.device(device)
    nbytes = nbytes or (2**30 if device.type == "cuda" else 2**27)
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    return 2 * src.nbytes / _fastest_s(lambda: dst.copy_(src), device, repeats)


def shape(model, family: str) -> dict:
    """What the formulas need from a loaded model: N_body, N_head, weight bytes, attention layers, d_attn."""
    head = model.get_output_embeddings().weight
    lookups = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    unique = list(model.parameters())  # tied parameters appear once
    body = sum(p.numel() for p in unique if id(p) not in lookups and p is not head)
    weight_bytes = sum(p.numel() * p.element_size() for p in unique if id(p) not in lookups or p is head)
    from archbench import families

    cfg = model.config
    layers, d_attn = len(families.get(family).attention_layers(cfg)), 0
    if layers:
        heads = cfg.num_attention_heads
        d_attn = heads * (getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    return {"body_params": body, "head_params": head.numel(), "weight_bytes": weight_bytes,
            "attn_layers": layers, "d_attn": d_attn}


def prefill_flops(shp: dict, context: int, batch: int) -> float:
    """FLOPs of prefilling `batch` prompts of `context` tokens (module docstring)."""
    attention = 2 * shp["attn_layers"] * context**2 * shp["d_attn"]
    return float(batch * (2 * shp["body_params"] * context + 2 * shp["head_params"] + attention))


def decode_bytes(shp: dict, state_bytes_mean: float) -> float:
    """Bytes one decode step reads: all weights but the input lookups, plus the batch's state."""
    return float(shp["weight_bytes"] + state_bytes_mean)
