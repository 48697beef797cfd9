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

SCAN_CHUNK = 16  # Mamba time steps per chunk of the selective scan
SSD_CHUNK = 16  # Mamba-2 positions per chunk (the maths is the same for any size; 16 is fastest on CPU)
WKV_CHUNK = 16  # RWKV positions per chunk: memory ~ B * T * WKV_CHUNK * att floats
KERNELS = {"mamba": "lab-selective-scan (torch, custom autograd)", "mamba2": "lab-ssd-chunked (torch)",
           "rwkv": "lab-wkv-chunked (torch)"}


class SelectiveScan(torch.autograd.Function):
    """y = selective scan of x. x, dt (B, T, D); A (D, N); b, c (B, T, N) -> y (B, T, D), fp32, no D skip.
    Works in (T, B, N, D) layout: every per-step slice is contiguous, every broadcast runs along the
    contiguous channel axis, and the sums over the state axis are small matrix products. Time goes in chunks
    of SCAN_CHUNK steps so the decays, inputs and adjoints of a chunk stay in cache."""

    @staticmethod
    def forward(ctx, x, dt, A, b, c):
        dt_t, x_t, b_t, c_t = (v.transpose(0, 1).contiguous() for v in (dt, x, b, c))  # (T, B, ...)
        a_t = A.t().contiguous()  # (N, D)
        dtx = dt_t * x_t
        t = x_t.shape[0]
        hs = x.new_empty(t + 1, x_t.shape[1], a_t.shape[0], a_t.shape[1])  # hs[i + 1] = h_i, hs[0] = 0
        hs[0].zero_()
        da = torch.empty_like(hs[1:])  # decays exp(dt A), kept for the backward
        y = x.new_empty(t, x_t.shape[1], 1, x_t.shape[2])
        for s in range(0, t, SCAN_CHUNK):
            e = min(s + SCAN_CHUNK, t)
            torch.mul(dt_t[s:e, :, None], a_t, out=da[s:e]).exp_()
            dbx = torch.mul(b_t[s:e, :, :, None], dtx[s:e, :, None], out=_work("in", da[s:e]))  # (Q, B, N, D)
            for i in range(s, e):
                torch.addcmul(dbx[i - s], da[i], hs[i], out=hs[i + 1])
            torch.matmul(c_t[s:e, :, None], hs[s + 1:e + 1], out=y[s:e])
        ctx.save_for_backward(dt_t, x_t, dtx, a_t, b_t, c_t, hs, da)
        return y[:, :, 0].transpose(0, 1)

    @staticmethod
    def backward(ctx, gy):
        dt_t, x_t, dtx, a_t, b_t, c_t, hs, da = ctx.saved_tensors
        gy_t = gy.transpose(0, 1).contiguous()
        t = dtx.shape[0]
        g_dtx, g_dt = dtx.new_empty(t, dtx.shape[1], 1, dtx.shape[2]), torch.empty_like(dtx)
        g_b, g_c = b_t.new_empty(*b_t.shape, 1), c_t.new_empty(*c_t.shape, 1)
        g_a, g_next = torch.zeros_like(a_t), None
        for s in reversed(range(0, t, SCAN_CHUNK)):
            e = min(s + SCAN_CHUNK, t)
            g = torch.mul(c_t[s:e, :, :, None], gy_t[s:e, :, None], out=_work("g", da[s:e]))  # dL/dh from y
            if g_next is not None:
                g[-1].addcmul_(da[e], g_next)
            for i in range(e - s - 2, -1, -1):  # the adjoint: g_i += exp(dt_{i+1} A) g_{i+1}
                g[i].addcmul_(da[s + i + 1], g[i + 1])
            g_next = _work("carry", g[0]).copy_(g[0])
            torch.matmul(hs[s + 1:e + 1], gy_t[s:e, :, :, None], out=g_c[s:e])
            torch.matmul(b_t[s:e, :, None], g, out=g_dtx[s:e])
            torch.matmul(g, dtx[s:e, :, :, None], out=g_b[s:e])
            q = torch.mul(da[s:e], hs[s:e], out=_work("q", g)).mul_(g).mul_(a_t)  # A g exp(dt A) h_{i-1}
            torch.sum(q, 2, out=g_dt[s:e])
            g_a += q.mul_(dt_t[s:e, :, None]).sum((0, 1))
        g_dtx = g_dtx[:, :, 0]
        g_dt += g_dtx * x_t
        return ((g_dtx * dt_t).transpose(0, 1), g_dt.transpose(0, 1), (g_a / a_t).t(),
                g_b[..., 0].transpose(0, 1), g_c[..., 0].transpose(0, 1))


_WORK: dict = {}


def _work(name: str, like: torch.Tensor) -> torch.Tensor:
    """A reused scratch tensor shaped like `like`: fresh large allocations cost page faults on every call."""
    key = (name, tuple(like.shape), like.dtype, like.device)
    if key not in _WORK:
        _WORK[key] = torch.empty_like(like, memory_format=torch.contiguous_format)
    return _WORK[key]


def causal_conv(x, weight, bias):
    """transformers' depthwise causal conv1d (padding K-1, first T outputs) in (B, T, C) layout, as K shifted
    products: x (B, T, C), weight (C, 1, K), bias (C,) or None -> (B, T, C). No transposes, and its backward
    is K products instead of a slow depthwise convolution backward."""
    k, t = weight.shape[-1], x.shape[1]
    w = weight[:, 0].t()  # (K, C)
    xp = F.pad(x, (0, 0, k - 1, 0))
    y = xp[:, k - 1:] * w[k - 1] if bias is None else torch.addcmul(bias, xp[:, k - 1:], w[k - 1])
    for j in range(k - 1):
        y = torch.addcmul(y, xp[:, j:j + t], w[j])
    return y


def _mamba_forward(self, hidden_states, cache=None, attention_mask=None, **kwargs):
    """MambaMixer.forward for training: hidden_states (B, T, d) -> (B, T, d)."""
    if cache is not None or (attention_mask is not None and not bool(attention_mask.all())):
        return self._reference_forward(hidden_states, cache=cache, attention_mask=attention_mask, **kwargs)
    xs, z = self.in_proj(hidden_states).chunk(2, dim=-1)  # (B, T, d_inner) each
    xc = self.act(causal_conv(xs, self.conv1d.weight, self.conv1d.bias))
    dt, b, c = torch.split(self.x_proj(xc), [self.time_step_rank, self.ssm_state_size, self.ssm_state_size], dim=-1)
    dt = F.softplus(self.dt_proj(dt)).float()  # (B, T, d_inner)
    A = -torch.exp(self.A_log.float())  # (d_inner, N)
    y = SelectiveScan.apply(xc.float(), dt, A, b.float(), c.float()).to(xc.dtype)
    return self.out_proj((y + xc * self.D) * F.silu(z))


def ssd(x, dt, A, b, c, chunk: int = SSD_CHUNK):
    """Chunked SSD from a zero state. x (B, T, H, P), dt (B, T, H), A (H,), b/c (B, T, H, N) -> y (B, T, H, P).
    Heads go before the chunk's positions, (B, n, H, Q, .), so every product is a plain batched matmul."""
    bsz, t = x.shape[:2]
    pad = (-t) % chunk  # dt = 0 on padding: no decay and no input
    if pad:
        x, dt, b, c = (F.pad(v, (0,) * (2 * v.dim() - 4) + (0, pad)) for v in (x, dt, b, c))
    n = x.shape[1] // chunk
    x, b, c = (v.unflatten(1, (n, chunk)).transpose(2, 3) for v in (x, b, c))  # (B, n, H, Q, .)
    dt = dt.unflatten(1, (n, chunk)).transpose(2, 3)  # (B, n, H, Q)
    xdt = x * dt[..., None]
    acs = torch.cumsum(dt * A[:, None], dim=-1)  # (B, n, H, Q): log decay from the chunk's start
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=x.device).tril()
    seg = (acs[..., :, None] - acs[..., None, :]).masked_fill(~causal, -torch.inf)  # (B, n, H, Ql, Qs)
    y = torch.matmul(torch.matmul(c, b.transpose(-1, -2)) * torch.exp(seg), xdt)  # within each chunk
    last = acs[..., -1:]  # (B, n, H, 1)
    states = torch.matmul((b * torch.exp(last - acs)[..., None]).transpose(-1, -2), xdt)  # (B, n, H, N, P)
    h, carried = torch.zeros_like(states[:, 0]), []
    for i in range(n):  # the state entering chunk i, (B, H, N, P)
        carried.append(h)
        h = h * torch.exp(last[:, i])[..., None] + states[:, i]
    y = y + torch.matmul(c, torch.stack(carried, 1)) * torch.exp(acs)[..., None]
    return y.transpose(2, 3).flatten(1, 2)[:, :t]


def _mamba2_forward(self, hidden_states, cache=None, attention_mask=None, **kwargs):
    """Mamba2Mixer.forward for training: hidden_states (B, T, d) -> (B, T, d)."""
    if cache is not None or (attention_mask is not None and not bool(attention_mask.all())):
        return self._reference_forward(hidden_states, cache=cache, attention_mask=attention_mask, **kwargs)
    z, xbc, dt = torch.split(self.in_proj(hidden_states), [self.intermediate_size, self.conv_dim, self.num_heads],
                             dim=-1)
    xbc = self.act(causal_conv(xbc, self.conv1d.weight, self.conv1d.bias))  # (B, T, conv_dim)
    gn = self.n_groups * self.ssm_state_size
    xs, b, c = torch.split(xbc, [self.intermediate_size, gn, gn], dim=-1)
    rep = self.num_heads // self.n_groups
    b, c = (v.unflatten(-1, (self.n_groups, -1)).repeat_interleave(rep, dim=-2).float() for v in (b, c))
    dt = F.softplus(dt + self.dt_bias).clamp(*self.time_step_limit).float()  # (B, T, H)
    xs = xs.unflatten(-1, (self.num_heads, self.head_dim))  # (B, T, H, P)
    y = ssd(xs.float(), dt, -torch.exp(self.A_log.float()), b, c).to(xs.dtype)
    y = (y + xs * self.D[:, None]).flatten(-2)  # (B, T, d_inner)
    return self.out_proj(self.norm(y, z))


def wkv(w, u, k, v, chunk: int = WKV_CHUNK):
    """RWKV-4 WKV from an empty state. w (decay, < 0), u (A,); k, v (B, T, A) fp32 -> (B, T, A).
    Channels go before time, (B, A, Q, Q), so the sums over a chunk's positions are batched matmuls, and the
    pairwise exponents (t - i - 1) w / u / -inf are built once per call for the whole batch."""
    bsz, t, a = k.shape
    k, v = k.transpose(1, 2), v.transpose(1, 2)  # (B, A, T)
    pos = torch.arange(chunk, device=k.device, dtype=k.dtype)
    gap = pos[:, None] - pos[None, :]  # (Qt, Qi): t - i
    pair = torch.where(gap > 0, (gap - 1) * w[:, None, None], u[:, None, None])  # (A, Qt, Qi)
    pair = pair.masked_fill(gap < 0, -torch.inf)
    num, den = k.new_zeros(bsz, a, 1), k.new_zeros(bsz, a, 1)
    p = k.new_full((bsz, a, 1), -1e38)  # log scale of (num, den): real value num * e^p
    out = []
    for s in range(0, t, chunk):
        kq, vq = k[:, :, s:s + chunk], v[:, :, s:s + chunk]  # (B, A, Q)
        q = kq.shape[-1]
        e = pair[:, :q, :q] + kq[:, :, None, :]  # (B, A, Qt, Qi)
        carried = p + pos[:q] * w[:, None]  # (B, A, Q): exponent of the state's term
        m = torch.maximum(e.amax(dim=-1), carried).detach()  # the shift cancels: no gradient needed
        ex, ec = torch.exp(e - m[..., None]), torch.exp(carried - m)
        nd = torch.matmul(ex, torch.stack([vq, torch.ones_like(vq)], -1))  # (B, A, Q, 2): sums over i
        out.append((nd[..., 0] + ec * num) / (nd[..., 1] + ec * den))
        after = (q - 1 - pos[:q]) * w[:, None] + kq  # (B, A, Q): exponents in the state after the chunk
        p_new = torch.maximum(after.amax(-1, keepdim=True), p + q * w[:, None]).detach()
        ea, ec = torch.exp(after - p_new), torch.exp(p + q * w[:, None] - p_new)
        num, den, p = (ea * vq).sum(-1, keepdim=True) + ec * num, ea.sum(-1, keepdim=True) + ec * den, p_new
    return torch.cat(out, dim=-1).transpose(1, 2)


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
