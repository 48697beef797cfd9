"""The RWKV-6 "Finch" state update (Peng et al. 2024, "Eagle and Finch: RWKV with Matrix-Valued States and
Dynamic Recurrence", Sec. 4) in plain PyTorch: a chunked parallel form and a one-token step.

Per head, state S (N_k, N_v) (BlinkDL's `rwkv` package layout, `att_seq_v6_0`), data-dependent decay
w_t = exp(-exp(d_t)) in (0, 1)^N_k and bonus u (N_k):

    o_t = r_t^T (S_{t-1} + diag(u) k_t v_t^T)          S_t = diag(w_t) S_{t-1} + k_t v_t^T

Chunked form (our derivation; flash-linear-attention's `chunk_rwkv6` computes the same): with c_t the cumulative
log decay inside a chunk, o_t = (r_t e^{c_{t-1}})^T S_0 + sum_{i<t} [sum_n r_tn k_in e^{c_{t-1,n} - c_{i,n}}] v_i
+ (r_t . u k_t) v_t. RWKV-6's per-step log decay is unbounded below, so the pairwise factors are formed as
exponentials of differences (all <= 0: no overflow) in a (L, L, N_k) tensor instead of being split into
e^{c_t} and e^{-c_i}; L = 16 keeps it small. Runs in fp32; differentiable.
"""
from __future__ import annotations

import torch

CHUNK = 16


def wkv6_chunked(r, logw, k, v, u, state, chunk: int = CHUNK):
    """r, logw, k (B, H, T, N_k); v (B, H, T, N_v); u (H, N_k); state (B, H, N_k, N_v), fp32.
    Returns (o (B, H, T, N_v), state after the last position)."""
    outs = []
    for s in range(0, r.shape[2], chunk):
        rc, wc, kc, vc = (t[:, :, s:s + chunk] for t in (r, logw, k, v))
        n = rc.shape[2]
        c = wc.cumsum(2)  # (B, H, L, N_k) inclusive
        cex = c - wc  # c_{t-1}
        strict = torch.ones(n, n, dtype=torch.bool, device=r.device).tril(-1)[:, :, None]  # (L, L, 1) i < t
        diff = (cex[:, :, :, None] - c[:, :, None]).masked_fill(~strict, -torch.inf)  # (B, H, L_t, L_i, N_k)
        att = torch.einsum("bhtn,bhin,bhtin->bhti", rc, kc, diff.exp())  # (B, H, L, L)
        bonus = (rc * u[None, :, None] * kc).sum(-1, keepdim=True)  # (B, H, L, 1)
        outs.append((rc * cex.exp()) @ state + att @ vc + bonus * vc)
        to_end = (c[:, :, -1:] - c).exp()  # (B, H, L, N_k) <= 1
        state = state * c[:, :, -1, :, None].exp() + (kc * to_end).transpose(-1, -2) @ vc
    return torch.cat(outs, dim=2), state


def wkv6_step(r, logw, k, v, u, state):
    """One position: r, logw, k (B, H, N_k); v (B, H, N_v); u (H, N_k); state (B, H, N_k, N_v) fp32."""
    kv = k[..., None] * v[:, :, None, :]  # (B, H, N_k, N_v)
    o = (r[:, :, None, :] @ (state + u[None, :, :, None] * kv))[:, :, 0]
    return o, state * logw.exp()[..., None] + kv


def wkv6(r, logw, k, v, u, state):
    """Inputs (B, T, H, N) in any float dtype, u (H, N); state (B, H, N_k, N_v) fp32.
    Returns (o (B, T, H, N_v) fp32, state)."""
    if r.shape[1] == 1:
        o, state = wkv6_step(*(t[:, 0].float() for t in (r, logw, k, v)), u.float(), state)
        return o[:, None], state
    o, state = wkv6_chunked(*(t.transpose(1, 2).float() for t in (r, logw, k, v)), u.float(), state)
    return o.transpose(1, 2), state
