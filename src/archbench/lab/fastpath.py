"""Training-speed sequence mixers for the recurrent families, in plain PyTorch (CPU and any GPU).

transformers' CPU training forwards of Mamba, Mamba-2 and RWKV-4 are sequential reference loops (slow
mostly because autograd records every per-token slice). This module swaps a faster, differentiable forward
into each mixer *instance* (`install(model)`): the module tree, parameter names and `save_pretrained` stay
exactly transformers', and a call that carries a cache or padding still runs transformers' own forward.

- Mamba (Gu & Dao 2023): the selective scan h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t, y_t = C_t h_t is a
  custom autograd Function: the forward runs the recurrence over time on (B, d_inner, d_state) slices without
  recording a graph, the backward runs the adjoint recurrence in reverse (g_t = C_t gy_t + exp(dt_{t+1} A)
  g_{t+1}) and then every parameter gradient in one vectorised expression (cf. mamba.py's pscan, Sec. 3.3.2).
- Mamba-2 (Dao & Gu 2024, Sec. 6): the chunked SSD algorithm, all chunks at once (masked "attention" inside
  a chunk, a short loop over chunks for the carried state), out-of-place so autograd differentiates it.
- RWKV-4 (Peng et al. 2023): the WKV sum over chunks of Q positions with pairwise exponents, shifted by a
  detached running maximum (the shift cancels exactly, so it needs no gradient), state carried across chunks.
The engine's inference scans (families/*.py) follow the same maths under inference_mode; these are separate
training-safe versions. `kernel(model)` names what trains a model; it is recorded in its archbench.json.
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F

WKV_CHUNK = 16  # RWKV positions per chunk: memory ~ B * T * WKV_CHUNK * att floats
KERNELS = {"mamba": "lab-selective-scan (torch, custom autograd)", "mamba2": "lab-ssd-chunked (torch)",
           "rwkv": "lab-wkv-chunked (torch)"}


class SelectiveScan(torch.autograd.Function):
    """y = selective scan of x. x, dt (B, T, D); A (D, N); b, c (B, T, N) -> y (B, T, D), fp32, no D skip.
    Works in (T, B, D, N) layout so every per-step slice is contiguous and every reduction is a matmul."""

    @staticmethod
    def forward(ctx, x, dt, A, b, c):
        dt_t, x_t, b_t, c_t = (v.transpose(0, 1) for v in (dt, x, b, c))  # (T, B, ...)
        da = torch.exp(dt_t[..., None] * A)  # (T, B, D, N) decays
        dbx = (dt_t * x_t)[..., None] * b_t[:, :, None, :]  # (T, B, D, N) inputs
        hs = torch.empty_like(dbx)  # all states; no graph is recorded inside a Function's forward
        hs[0] = dbx[0]
        for t in range(1, hs.shape[0]):
            torch.addcmul(dbx[t], da[t], hs[t - 1], out=hs[t])
        ctx.save_for_backward(x, dt, A, b, c, da, dbx, hs)
        return torch.matmul(hs, c_t[..., None])[..., 0].transpose(0, 1)  # (B, T, D)

    @staticmethod
    def backward(ctx, gy):
        x, dt, A, b, c, da, dbx, hs = ctx.saved_tensors
        dt_t, x_t, b_t, c_t, gy_t = (v.transpose(0, 1) for v in (dt, x, b, c, gy))
        g = gy_t[..., None] * c_t[:, :, None, :]  # (T, B, D, N): dL/dh_t from y_t
        for t in range(g.shape[0] - 2, -1, -1):  # adjoint recurrence g_t += da_{t+1} g_{t+1}, in place
            g[t].addcmul_(da[t + 1], g[t + 1])
        gc = torch.matmul(gy_t[:, :, None, :], hs)[:, :, 0]  # (T, B, N)
        g_log = torch.sub(hs, dbx).mul_(g)  # dL/d(dt A) = g * da_t h_{t-1}, and da_t h_{t-1} = h_t - dbx_t
        g_bx = torch.matmul(g, b_t[..., None])[..., 0]  # (T, B, D): sum_n g B
        g_b = torch.matmul((dt_t * x_t)[:, :, None, :], g)[:, :, 0]  # (T, B, N)
        g_dt = (g_log * A).sum(-1) + g_bx * x_t
        g_A = (g_log * dt_t[..., None]).sum((0, 1))
        return (g_bx * dt_t).transpose(0, 1), g_dt.transpose(0, 1), g_A, g_b.transpose(0, 1), gc.transpose(0, 1)


def _mamba_forward(self, hidden_states, cache=None, attention_mask=None, **kwargs):
    """MambaMixer.forward for training: hidden_states (B, T, d) -> (B, T, d)."""
    if cache is not None or (attention_mask is not None and not bool(attention_mask.all())):
        return self._reference_forward(hidden_states, cache=cache, attention_mask=attention_mask, **kwargs)
    t = hidden_states.shape[1]
    xs, z = self.in_proj(hidden_states).chunk(2, dim=-1)  # (B, T, d_inner) each
    xc = self.act(self.conv1d(xs.transpose(1, 2))[..., :t]).transpose(1, 2)  # causal depthwise conv
    dt, b, c = torch.split(self.x_proj(xc), [self.time_step_rank, self.ssm_state_size, self.ssm_state_size], dim=-1)
    dt = F.softplus(self.dt_proj(dt)).float()  # (B, T, d_inner)
    A = -torch.exp(self.A_log.float())  # (d_inner, N)
    y = SelectiveScan.apply(xc.float(), dt, A, b.float(), c.float()).to(xc.dtype)
    return self.out_proj((y + xc * self.D) * F.silu(z))


def ssd(x, dt, A, b, c, chunk: int):
    """Chunked SSD from a zero state. x (B, T, H, P), dt (B, T, H), A (H,), b/c (B, T, H, N) -> y (B, T, H, P)."""
    bsz, t = x.shape[:2]
    pad = (-t) % chunk  # dt = 0 on padding: no decay and no input
    if pad:
        x, dt, b, c = (F.pad(v, (0,) * (2 * v.dim() - 4) + (0, pad)) for v in (x, dt, b, c))
    n = x.shape[1] // chunk
    x, dt, b, c = (v.unflatten(1, (n, chunk)) for v in (x, dt, b, c))  # (B, n, Q, ...)
    xdt = x * dt[..., None]
    acs = torch.cumsum(dt * A, dim=2)  # (B, n, Q, H): log decay from the chunk's start
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=x.device).tril()[None, None, :, :, None]
    seg = (acs[:, :, :, None] - acs[:, :, None, :]).masked_fill(~causal, -torch.inf)  # (B, n, Ql, Qs, H)
    scores = torch.einsum("bclhn,bcshn->bclsh", c, b) * torch.exp(seg)
    y = torch.einsum("bclsh,bcshp->bclhp", scores, xdt)  # within each chunk
    last = acs[:, :, -1]  # (B, n, H)
    states = torch.einsum("bcshn,bcshp->bchpn", b * torch.exp(last[:, :, None] - acs)[..., None], xdt)
    h, carried = torch.zeros_like(states[:, 0]), []
    for i in range(n):  # the state entering chunk i, (B, H, P, N)
        carried.append(h)
        h = h * torch.exp(last[:, i])[:, :, None, None] + states[:, i]
    y = y + torch.einsum("bclhn,bchpn->bclhp", c, torch.stack(carried, 1)) * torch.exp(acs)[..., None]
    return y.flatten(1, 2)[:, :t]


def _mamba2_forward(self, hidden_states, cache=None, attention_mask=None, **kwargs):
    """Mamba2Mixer.forward for training: hidden_states (B, T, d) -> (B, T, d)."""
    if cache is not None or (attention_mask is not None and not bool(attention_mask.all())):
        return self._reference_forward(hidden_states, cache=cache, attention_mask=attention_mask, **kwargs)
    t = hidden_states.shape[1]
    z, xbc, dt = torch.split(self.in_proj(hidden_states), [self.intermediate_size, self.conv_dim, self.num_heads],
                             dim=-1)
    xbc = self.act(self.conv1d(xbc.transpose(1, 2))[..., :t]).transpose(1, 2)  # (B, T, conv_dim)
    gn = self.n_groups * self.ssm_state_size
    xs, b, c = torch.split(xbc, [self.intermediate_size, gn, gn], dim=-1)
    rep = self.num_heads // self.n_groups
    b, c = (v.unflatten(-1, (self.n_groups, -1)).repeat_interleave(rep, dim=-2).float() for v in (b, c))
    dt = F.softplus(dt + self.dt_bias).clamp(*self.time_step_limit).float()  # (B, T, H)
    xs = xs.unflatten(-1, (self.num_heads, self.head_dim))  # (B, T, H, P)
    y = ssd(xs.float(), dt, -torch.exp(self.A_log.float()), b, c, self.chunk_size).to(xs.dtype)
    y = (y + xs * self.D[:, None]).flatten(-2)  # (B, T, d_inner)
    return self.out_proj(self.norm(y, z))


def wkv(w, u, k, v, chunk: int = WKV_CHUNK):
    """RWKV-4 WKV from an empty state. w (decay, < 0), u (A,); k, v (B, T, A) fp32 -> (B, T, A)."""
    bsz, _, a = k.shape
    num, den = k.new_zeros(bsz, a), k.new_zeros(bsz, a)
    p = k.new_full((bsz, a), -1e38)  # log scale of (num, den): real value num * e^p
    out = []
    for s in range(0, k.shape[1], chunk):
        kq, vq = k[:, s:s + chunk], v[:, s:s + chunk]  # (B, Q, A)
        q = kq.shape[1]
        t = torch.arange(q, device=k.device, dtype=k.dtype)
        gap = (t[:, None] - t[None, :])[None, :, :, None]  # (1, Qt, Qi, 1): t - i
        e = torch.where(gap > 0, (gap - 1) * w + kq[:, None], u + kq[:, None])
        e = e.masked_fill(gap < 0, -torch.inf)  # (B, Qt, Qi, A)
        carried = p[:, None] + t[None, :, None] * w  # (B, Q, A): exponent of the state's term
        m = torch.maximum(e.amax(dim=2), carried).detach()  # the shift cancels: no gradient needed
        ex, ec = torch.exp(e - m[:, :, None]), torch.exp(carried - m)
        out.append(((ex * vq[:, None]).sum(2) + ec * num[:, None]) / (ex.sum(2) + ec * den[:, None]))
        after = (q - 1 - t)[None, :, None] * w + kq  # (B, Q, A): exponents in the state after the chunk
        p_new = torch.maximum(after.amax(1), p + q * w).detach()
        ea, ec = torch.exp(after - p_new[:, None]), torch.exp(p + q * w - p_new)
        num, den, p = (ea * vq).sum(1) + ec * num, ea.sum(1) + ec * den, p_new
    return torch.cat(out, dim=1)


def _rwkv_forward(self, hidden, state=None, use_cache=False):
    """RwkvSelfAttention.forward without a state: hidden (B, T, d) -> ((B, T, d), None)."""
    if state is not None:
        return self._reference_forward(hidden, state=state, use_cache=use_cache)
    r, k, v, _ = self.extract_key_value(hidden)
    y = wkv(-torch.exp(self.time_decay.float()), self.time_first.float(), k.float(), v.float())
    return self.output(r * y.to(r.dtype)), None


_FORWARDS = {"MambaMixer": ("mamba", _mamba_forward), "Mamba2Mixer": ("mamba2", _mamba2_forward),
             "RwkvSelfAttention": ("rwkv", _rwkv_forward)}


def install(model) -> str:
    """Swap the fast forward into every recurrent mixer of `model` (in place); returns `kernel(model)`.
    With mamba-ssm on CUDA, Mamba models keep transformers' fused kernels (faster there)."""
    for module in model.modules():
        entry = _FORWARDS.get(type(module).__name__)
        if entry is None or hasattr(module, "_reference_forward"):
            continue
        if entry[0] in ("mamba", "mamba2") and _fused(model):
            continue
        module._reference_forward = module.forward
        module.forward = types.MethodType(entry[1], module)
    return kernel(model)


def uninstall(model) -> None:
    """Restore transformers' forwards (e.g. to compare against the reference)."""
    for module in model.modules():
        if hasattr(module, "_reference_forward"):
            module.forward = module._reference_forward
            del module._reference_forward


def _fused(model) -> bool:
    from archbench.families.common import mamba_ssm_fused

    return mamba_ssm_fused(next(model.parameters()))


def kernel(model) -> str:
    """Which code trains the sequence mixing of `model`."""
    names = {_FORWARDS[type(m).__name__][0] for m in model.modules() if hasattr(m, "_reference_forward")}
    if names:
        return " + ".join(KERNELS[n] for n in sorted(names))
    if any(type(m).__name__ in _FORWARDS for m in model.modules()):
        return "mamba_ssm (fused CUDA)" if _fused(model) else "transformers reference forward"
    return "transformers attention (" + str(getattr(model.config, "_attn_implementation", "eager")) + ")"
