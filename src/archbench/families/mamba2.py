"""Mamba-2 (Dao & Gu 2024, "Transformers are SSMs": state-space duality).

A scalar-decay SSM per head with a fixed-size state; chunked scan for prefill, recurrence for decode.

Engine functions (engine.py) read the weights of transformers' `Mamba2ForCausalLM` (Mamba2Mixer's
`torch_forward` is the reference): in_proj -> (z, xBC, dt); causal depthwise conv1d + silu on xBC; the SSD
scan per head; + D*x; gated RMSNorm with z; out_proj. Prefill uses the paper's chunked SSD algorithm
(Sec. 6): inside a chunk of Q positions the output is a masked "attention" C_l.B_s * exp(sum of dt*A over
(s, l]) applied to dt*x; across chunks the (heads, head_dim, d_state) state is carried, one Python
iteration per chunk, never per token. Decode is the one-token recurrence with a scalar decay per head.
With mamba_ssm on CUDA, prefill uses its fused `mamba_chunk_scan_combined`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from archbench.families import Family
from archbench.families.common import SSM_STATE_OPS, SsmState, mamba_ssm_fused, ssm_prefill, ssm_run_layers

# State: SsmState with conv (B, conv_dim, conv_kernel - 1) and ssm (B, heads, head_dim, d_state) fp32 per layer


def kernel(model) -> str:
    return "mamba_ssm" if mamba_ssm_fused(model.lm_head.weight) else "torch-ssd-chunked"


def _split(mix, xbc: torch.Tensor, dt: torch.Tensor):
    """Post-conv xBC (..., conv_dim) and raw dt (..., H) -> x (..., H, P), B and C (..., H, N), dt (..., H)."""
    gn = mix.n_groups * mix.ssm_state_size
    x, b, c = torch.split(xbc, [mix.intermediate_size, gn, gn], dim=-1)
    rep = mix.num_heads // mix.n_groups
    b = b.unflatten(-1, (mix.n_groups, -1)).repeat_interleave(rep, dim=-2)
    c = c.unflatten(-1, (mix.n_groups, -1)).repeat_interleave(rep, dim=-2)
    dt = F.softplus(dt + mix.dt_bias).clamp(*mix.time_step_limit)
    return x.unflatten(-1, (mix.num_heads, mix.head_dim)), b, c, dt


def ssd(x, dt, A, b, c, h, chunk: int):
    """Chunked SSD. x (B, T, H, P), dt (B, T, H), A (H,), b/c (B, T, H, N), h (B, H, P, N).
    Returns y (B, T, H, P) without the D skip, and the final state."""
    ys = []
    for s in range(0, x.shape[1], chunk):
        xq, bq, cq = x[:, s:s + chunk] * dt[:, s:s + chunk, :, None], b[:, s:s + chunk], c[:, s:s + chunk]
        acs = torch.cumsum(dt[:, s:s + chunk] * A, dim=1)  # (B, Q, H) log decay from chunk start
        q = acs.shape[1]
        seg = acs[:, :, None, :] - acs[:, None, :, :]  # (B, Q_l, Q_s, H): decay from s to l
        causal = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()
        decay = torch.exp(seg.masked_fill(~causal[None, :, :, None], -torch.inf))
        scores = torch.einsum("blhn,bshn->blsh", cq, bq) * decay  # (B, Q, Q, H)
        y = torch.einsum("blsh,bshp->blhp", scores, xq)
        y = y + torch.einsum("blhn,bhpn->blhp", cq, h) * torch.exp(acs)[..., None]  # state from before the chunk
        last = acs[:, -1]  # (B, H)
        h = h * torch.exp(last)[:, :, None, None] + torch.einsum(
            "bshn,bshp->bhpn", bq * torch.exp(last[:, None] - acs)[..., None], xq)
        ys.append(y)
    return torch.cat(ys, dim=1), h


def _mix_prefill(mix, x: torch.Tensor, conv: torch.Tensor, h: torch.Tensor):
    """One mixer over x (B, T, d) from (conv, h); returns (out (B, T, d), conv, h)."""
    z, xbc, dt = torch.split(mix.in_proj(x), [mix.intermediate_size, mix.conv_dim, mix.num_heads], dim=-1)
    xin = torch.cat([conv, xbc.transpose(1, 2)], dim=-1)  # (B, conv_dim, K-1+T)
    xbc = F.silu(F.conv1d(xin, mix.conv1d.weight, mix.conv1d.bias, groups=mix.conv_dim)).transpose(1, 2)
    xs, b, c, dt = _split(mix, xbc, dt)
    A = -torch.exp(mix.A_log.float())  # (H,)
    if mamba_ssm_fused(x):
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

        ng = mix.n_groups
        bg, cg = b[:, :, :: mix.num_heads // ng], c[:, :, :: mix.num_heads // ng]  # (B, T, G, N)
        y, h = mamba_chunk_scan_combined(xs, dt, A, bg, cg, mix.chunk_size, initial_states=h,
                                         return_final_states=True)
    else:
        y, h = ssd(xs.float(), dt.float(), A, b.float(), c.float(), h, mix.chunk_size)
    y = (y + xs * mix.D[:, None]).flatten(-2)  # (B, T, d_inner)
    return mix.out_proj(mix.norm(y, z)), xin[:, :, -conv.shape[-1]:], h


def _mix_step(mix, x: torch.Tensor, conv: torch.Tensor, h: torch.Tensor):
    """One mixer on one token x (B, d); returns (out (B, d), conv, h)."""
    z, xbc, dt = torch.split(mix.in_proj(x), [mix.intermediate_size, mix.conv_dim, mix.num_heads], dim=-1)
    win = torch.cat([conv, xbc[:, :, None]], dim=-1)  # (B, conv_dim, K)
    xbc = (win * mix.conv1d.weight[:, 0]).sum(-1)
    xbc = F.silu(xbc + mix.conv1d.bias if mix.conv1d.bias is not None else xbc)
    xs, b, c, dt = _split(mix, xbc, dt)  # xs (B, H, P), b/c (B, H, N), dt (B, H)
    A = -torch.exp(mix.A_log.float())
    h = h * torch.exp(dt * A)[:, :, None, None] + (dt[..., None] * xs)[..., None] * b[:, :, None, :]
    y = torch.einsum("bhpn,bhn->bhp", h, c) + xs * mix.D[:, None]
    return mix.out_proj(mix.norm(y.flatten(-2), z)), win[:, :, 1:], h


def _empty(model, n: int, dev) -> SsmState:
    mix = model.backbone.layers[0].mixer
    layers = len(model.backbone.layers)
    return SsmState([torch.zeros(n, mix.conv_dim, mix.conv_kernel_size - 1, device=dev, dtype=model.dtype)
                     for _ in range(layers)],
                    [torch.zeros(n, mix.num_heads, mix.head_dim, mix.ssm_state_size, device=dev)
                     for _ in range(layers)])


def prefill(model, seqs, state: SsmState | None = None) -> tuple[SsmState, torch.Tensor]:
    """Prefill token lists (or a (B, T) tensor) after an optional batch-1 prefix `state`.
    Returns (state, (B, V) logits of each row's last token)."""
    return ssm_prefill(model, seqs, state, _empty, _mix_prefill)


def step(model, tokens: torch.Tensor, state: SsmState) -> tuple[SsmState, torch.Tensor]:
    """One decode step for tokens (B,). Returns (state, (B, V) logits)."""
    return ssm_run_layers(model, tokens, state, _mix_step)


FAMILY = Family(
    name="mamba2", model_types=frozenset({"mamba2"}), color="tab:green",
    tiny={"tiny-mamba2": ("Mamba2Config", dict(hidden_size=128, state_size=16, num_hidden_layers=4, expand=2,
                                               num_heads=8, head_dim=32, n_groups=1, conv_kernel=4, chunk_size=64))},
    seed_style="seed-mamba", lora_targets={"*": ["in_proj"]},
    pad_safe=True,  # transformers masks padded positions (apply_mask_to_padding_states)
    layer_kinds=lambda cfg: ["mamba2"] * cfg.num_hidden_layers,
    prefill=prefill, step=step, kernel=kernel, **SSM_STATE_OPS,
    lora_refused=frozenset({"out_proj", "conv1d"}),  # peft >= 0.21 refuses LoRA on these for Mamba models
)
