"""Mamba (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces").

A selective SSM: a fixed-size state per sequence (conv window + SSM state), no KV cache.

Engine functions (engine.py) read the weights of transformers' `MambaForCausalLM` (MambaMixer's
`slow_forward` is the reference) and run, per layer: in_proj -> causal depthwise conv1d -> silu ->
x_proj -> (dt, B, C) -> dt_proj + softplus -> selective scan -> + D*x -> * silu(z) -> out_proj.
Prefill scans the prompt in chunks; inside a chunk a Hillis-Steele parallel scan over the pairs
(exp(dt*A), dt*B*x) (paper Sec. 3.3.2 uses the same associative operator), so no Python loop over tokens
and no decay ever exceeds 1. Decode is the one-token recurrence. With mamba_ssm on CUDA, prefill from an
empty state uses its fused `selective_scan_fn` instead.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from archbench.families import Family
from archbench.families.common import SSM_STATE_OPS, SsmState, mamba_ssm_fused, ssm_prefill, ssm_run_layers

CHUNK = 128  # prefill rows * positions scanned at once: memory ~ CHUNK * d_inner * d_state floats
# State: SsmState with conv (B, d_inner, conv_kernel - 1) and ssm (B, d_inner, d_state) fp32 per layer


def kernel(model) -> str:
    return "mamba_ssm" if mamba_ssm_fused(model.lm_head.weight) else "torch-chunked-scan"


def scan(dA: torch.Tensor, dBx: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """All states of h_t = dA_t * h_{t-1} + dBx_t; dA, dBx (B, T, ...), h0 (B, ...). Returns (B, T, ...)."""
    dA, dBx = dA.clone(), dBx.clone()
    dBx[:, 0] += dA[:, 0] * h0
    off = 1
    while off < dA.shape[1]:  # log2(T) steps: combine each element with the one `off` before it
        dBx[:, off:] += dA[:, off:] * dBx[:, :-off]  # the product is a new tensor: no aliasing
        dA[:, off:] = dA[:, off:] * dA[:, :-off]
        off *= 2
    return dBx


def _ssm_inputs(mix, xc: torch.Tensor):
    """xc (B, T, d_inner) -> dt (B, T, d_inner), B and C (B, T, d_state)."""
    n = mix.ssm_state_size
    dt, b, c = torch.split(mix.x_proj(xc), [mix.time_step_rank, n, n], dim=-1)
    return F.softplus(mix.dt_proj(dt)), b, c


def _mix_prefill(mix, x: torch.Tensor, conv: torch.Tensor, h: torch.Tensor):
    """One mixer over x (B, T, d) from (conv, h); returns (out (B, T, d), conv, h)."""
    t = x.shape[1]
    xs, z = mix.in_proj(x).chunk(2, dim=-1)  # (B, T, d_inner) each
    xin = torch.cat([conv, xs.transpose(1, 2)], dim=-1)  # (B, d_inner, K-1+T)
    xc = F.silu(F.conv1d(xin, mix.conv1d.weight, mix.conv1d.bias, groups=xs.shape[-1]))  # (B, d_inner, T)
    xc = xc.transpose(1, 2)  # (B, T, d_inner)
    dt, b, c = _ssm_inputs(mix, xc)
    A = -torch.exp(mix.A_log.float())  # (d_inner, d_state)
    if mamba_ssm_fused(x) and not h.any():
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        y, h = selective_scan_fn(xc.transpose(1, 2).contiguous(), dt.transpose(1, 2).contiguous(), A,
                                 b.transpose(1, 2).contiguous(), c.transpose(1, 2).contiguous(), mix.D.float(),
                                 z=z.transpose(1, 2).contiguous(), return_last_state=True)
        return mix.out_proj(y.transpose(1, 2)), xin[:, :, -conv.shape[-1]:], h
    ys, q = [], max(16, CHUNK // x.shape[0])  # rows * chunk bounds the (B, Q, d_inner, d_state) tensors
    for s in range(0, t, q):  # states carried across chunks
        dtc, xcc = dt[:, s:s + q, :, None], xc[:, s:s + q, :, None]  # (B, Q, d_inner, 1)
        hs = scan(torch.exp(dtc * A), dtc * b[:, s:s + q, None, :] * xcc, h)  # (B, Q, d_inner, d_state)
        ys.append(torch.einsum("btdn,btn->btd", hs, c[:, s:s + q]))
        h = hs[:, -1]
    y = (torch.cat(ys, dim=1) + xc * mix.D) * F.silu(z)
    return mix.out_proj(y), xin[:, :, -conv.shape[-1]:], h


def _mix_step(mix, x: torch.Tensor, conv: torch.Tensor, h: torch.Tensor):
    """One mixer on one token x (B, d); returns (out (B, d), conv, h)."""
    xs, z = mix.in_proj(x).chunk(2, dim=-1)  # (B, d_inner)
    win = torch.cat([conv, xs[:, :, None]], dim=-1)  # (B, d_inner, K)
    xc = (win * mix.conv1d.weight[:, 0]).sum(-1)
    xc = F.silu(xc + mix.conv1d.bias if mix.conv1d.bias is not None else xc)
    dt, b, c = _ssm_inputs(mix, xc)
    A = -torch.exp(mix.A_log.float())
    h = torch.exp(dt[..., None] * A) * h + dt[..., None] * b[:, None, :] * xc[..., None]  # (B, d_inner, d_state)
    y = ((h @ c[:, :, None])[..., 0] + xc * mix.D) * F.silu(z)
    return mix.out_proj(y), win[:, :, 1:], h


def _empty(model, n: int, dev) -> SsmState:
    mix = model.backbone.layers[0].mixer
    k, d, s = mix.conv_kernel_size - 1, mix.intermediate_size, mix.ssm_state_size
    layers = len(model.backbone.layers)
    return SsmState([torch.zeros(n, d, k, device=dev, dtype=model.dtype) for _ in range(layers)],
                    [torch.zeros(n, d, s, device=dev) for _ in range(layers)])


def prefill(model, seqs, state: SsmState | None = None) -> tuple[SsmState, torch.Tensor]:
    """Prefill token lists (or a (B, T) tensor) after an optional batch-1 prefix `state`.
    Returns (state, (B, V) logits of each row's last token)."""
    return ssm_prefill(model, seqs, state, _empty, _mix_prefill)


def step(model, tokens: torch.Tensor, state: SsmState) -> tuple[SsmState, torch.Tensor]:
    """One decode step for tokens (B,). Returns (state, (B, V) logits)."""
    return ssm_run_layers(model, tokens, state, _mix_step)


FAMILY = Family(
    name="mamba", model_types=frozenset({"mamba", "falcon_mamba"}), color="tab:orange",
    tiny={"tiny-mamba": ("MambaConfig", dict(hidden_size=128, state_size=16, num_hidden_layers=4, expand=2,
                                             conv_kernel=4))},
    seed_style="seed-mamba", lora_targets={"*": ["in_proj", "x_proj", "dt_proj"]},
    pad_safe=True,  # transformers zeroes padded positions before the conv and the scan
    layer_kinds=lambda cfg: ["mamba"] * cfg.num_hidden_layers,
    prefill=prefill, step=step, kernel=kernel, **SSM_STATE_OPS,
    lora_refused=frozenset({"out_proj", "conv1d"}),  # peft >= 0.21 refuses LoRA on these for Mamba models
)
