"""Training-speed sequence mixers for the recurrent families, in plain PyTorch (CPU and any GPU).

transformers' CPU training forwards of Mamba, Mamba-2 and RWKV-4 are sequential reference loops (slow
mostly because autograd records every per-token slice). This module swaps a faster, differentiable forward
into each mixer *instance* (`install(model)`): the module tree, parameter names and `save_pretrained` stay
exactly transformers', and a call that carries a cache or padding still runs transformers' own forward.

Mamba (Gu & Dao 2023). `MambaInner` is everything between in_proj and out_proj, with a hand-written backward
(one autograd node instead of ~40): causal depthwise conv u = conv(x) + b, xc = silu(u); (dt_r, B, C) =
x_proj(xc); dt = softplus(dt_proj(dt_r)); the selective scan, per channel e and state n,
    h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t,   y_t = C_t . h_t,
then out = (y + D xc) silu(z). The scan is time-major, (T, B, N, E): the recurrence is one fused multiply-add
per step on a contiguous (B, N, E) slice; everything else runs on chunks of SCAN_CHUNK steps (exp(dt A),
dt B x, and the contractions with C, B, dt x and dy, which are small batched matmuls). The backward runs the
adjoint g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1} in reverse and reads off
    dL/d(dt_t x_t) = B_t . g_t,   dL/dB_t = sum_e g_t dt_t x_t,   dL/dC_t = sum_e h_t dy_t,
    r_t = g_t exp(dt_t A) h_{t-1} = dL/d(dt_t A):   dL/ddt_t += sum_n A r_t,   dL/dA = sum_{t,b} dt_t r_t.
The states h (T + 1 of them) are kept for the backward in a pool (memory reused from graph to graph, given
back when the graph is freed); exp(dt A) is recomputed (cheaper than storing it) and then overwritten by
A r, so a chunk's backward touches three (Q, B, N, E) tensors (exp(dt A), g, h), all reused scratch but h;
dL/dA is accumulated as sum dt A r and divided by A (never 0: A = -exp(A_log)) at the end.

Mamba-2 (Dao & Gu 2024, Sec. 6). `Mamba2Inner` is the same idea for Mamba2Mixer (conv, SSD, D skip, gated
RMSNorm). The decay is one scalar per head, a_t = exp(dt_t A), so inside a chunk of Q positions the SSD is a
masked "attention": with cum_t = sum_{r<=t} dt_r A,
    y_t = sum_{s<=t} exp(cum_t - cum_s) (C_t . B_s) dt_s x_s + exp(cum_t) C_t . h_in,
and the state carried to the next chunk is h_out = exp(cum_Q) h_in + sum_s exp(cum_Q - cum_s) B_s dt_s x_s^T.
All chunks are batched matmuls; only the carried state loops over chunks (none at T <= SSD_CHUNK). In the
backward, W = dL/dM * M (M the masked matrix) gives dL/dcum_t = sum_s W[t, s] - sum_s W[s, t], and
dL/d(dt A) is the reverse cumulative sum of dL/dcum.

RWKV-4 (Peng et al. 2023): the WKV sum over chunks of Q positions with pairwise exponents, shifted by a
detached running maximum (the shift cancels exactly, so it needs no gradient), state carried across chunks;
autograd differentiates it. The hybrid's Mamba-2 mixers (Bamba) take Mamba-2's path; RWKV-7's is
fastpath_rwkv7.py's, registered here.

Arguments of exp below about -87 (and -inf) are exp's slow path on CPU (tens of times slower), so Mamba and
Mamba-2 keep them at or above EXP_FLOOR = -80, which changes nothing above e^-80 (~2e-35): Mamba-2's masked
decays always, Mamba's exp(dt A) only when some dt A can fall below it. The engine's inference scans
(families/*.py) follow the same maths under inference_mode; these are separate training-safe versions.
`kernel(model)` names what trains a model; it is recorded in its archbench.json.
"""
from __future__ import annotations

import types
import weakref

import torch
import torch.nn.functional as F

from archbench.lab import fastpath_rwkv7

SCAN_CHUNK = 4  # Mamba time steps per vectorised chunk of the scan (2 to 8 measured alike on CPU)
SSD_CHUNK = 64  # Mamba-2 positions per chunk (the maths is the same for any size)
WKV_CHUNK = 16  # RWKV positions per chunk: memory ~ B * T * WKV_CHUNK * att floats
EXP_FLOOR = -80.0  # exp's argument floor (see the docstring)
KERNELS = {"mamba": "lab-selective-scan (torch, custom autograd)",
           "mamba2": "lab-ssd-chunked (torch, custom autograd)", "rwkv": "lab-wkv-chunked (torch)",
           **fastpath_rwkv7.KERNELS}

_WORK: dict = {}
_POOL: dict = {}


def _key(*parts):
    """Cache key: inference-mode tensors must not be reused outside inference mode."""
    return (*parts, torch.is_inference_mode_enabled())


def _work(name: str, shape, like: torch.Tensor) -> torch.Tensor:
    """A reused scratch tensor (a fresh large allocation costs page faults on every call)."""
    key = _key(name, tuple(shape), like.dtype, like.device)
    if key not in _WORK:
        _WORK[key] = like.new_empty(shape)
    return _WORK[key]


def _take(owner, shape, like: torch.Tensor) -> torch.Tensor:
    """A tensor for `owner` (an autograd ctx) to keep: from the pool, where it returns when `owner` is freed
    (after the backward, or with the graph), so retain_graph and double calls stay safe."""
    free = _POOL.setdefault(_key(tuple(shape), like.dtype, like.device), [])
    x = free.pop() if free else like.new_empty(shape)
    weakref.finalize(owner, free.append, x)
    return x


# ---------------------------------------------------------------------------------------------- Mamba
def _decay(dt_k, a, out, floor):
    """exp(dt A) for a chunk: dt_k (Q, B, 1, E), a (N, E) -> out (Q, B, N, E)."""
    torch.mul(dt_k, a, out=out)
    return (out if floor is None else out.clamp_(min=floor)).exp_()


def _scan_forward(ctx, x, dt, a, b, c, floor):
    """Selective scan from a zero state, time-major. x, dt (T, B, E); a (N, E) = A^T; b, c (T, B, N) (T and B
    mergeable) -> y (T, B, E), the states hs (T + 1, B, N, E; hs[0] = 0; pooled while ctx lives, or a plain
    tensor with ctx None), dt x."""
    t, bsz, e = x.shape
    n, q, m = a.shape[0], SCAN_CHUNK, SCAN_CHUNK * bsz
    dtx = dt * x
    hs = x.new_empty(t + 1, bsz, n, e) if ctx is None else _take(ctx, (t + 1, bsz, n, e), x)
    hs[0].zero_()
    y = x.new_empty(t, bsz, e)
    da = _work("da0", (q, bsz, n, e), x)
    h, d = hs.unbind(0), da.unbind(0)  # per-step views, made once
    chunks = zip(dt[:, :, None].split(q), b[..., None].split(q), dtx[:, :, None].split(q), hs[1:].split(q),
                 c.reshape(-1, 1, n).split(m), hs[1:].view(-1, n, e).split(m), y.view(-1, 1, e).split(m))
    for k, (dt_k, b_k, dtx_k, hs_k, c_k, hsf_k, y_k) in enumerate(chunks):
        _decay(dt_k, a, da[:len(dt_k)], floor)
        torch.mul(b_k, dtx_k, out=hs_k)  # dt B x
        for i in range(len(dt_k)):
            h[k * q + i + 1].addcmul_(d[i], h[k * q + i])
        torch.bmm(c_k, hsf_k, out=y_k)
    return y, hs, dtx


def _scan_backward(gy, x, dt, a, bc, hs, dtx, floor):
    """The adjoint of _scan_forward for gy (T, B, E), bc = (b, c): (g_x, g_dt, g_a (N, E), g_b, g_c (T, B, N))."""
    b, c = bc
    t, bsz, e = x.shape
    n, q, m = a.shape[0], SCAN_CHUNK, SCAN_CHUNK * bsz
    g_dtx, g_dt = torch.empty_like(x), torch.empty_like(x)
    g_b, g_c = x.new_empty(t, bsz, n), x.new_empty(t, bsz, n)
    shape = (q, bsz, n, e)
    da, g = _work("da0", shape, x), _work("g0", shape, x)
    carry = _work("cda", shape[1:], x), _work("cg", shape[1:], x)  # exp(dt A) and g at the next chunk's start
    g_aa = torch.zeros_like(a)  # A dL/dA
    chunks = list(zip(c[..., None].split(q), gy[:, :, None].split(q), gy.view(-1, 1, e).split(m),
                      hs[1:].view(-1, n, e).split(m), g_c.view(-1, 1, n).split(m), b.reshape(-1, 1, n).split(m),
                      g_dtx.view(-1, 1, e).split(m), dtx.view(-1, 1, e).split(m), g_b.view(-1, 1, n).split(m),
                      hs[:-1].split(q), dt[:, :, None].split(q), g_dt.split(q)))
    gr, dr = g.unbind(0), da.unbind(0)  # per-step views, made once
    for j, (c_k, gy_k, gyf_k, hsf_k, gc_k, b_k, gdtx_k, dtx_k, gb_k, hp_k, dt_k, gdt_k) in enumerate(reversed(chunks)):
        ln = len(c_k)
        da_k = _decay(dt_k, a, da[:ln], floor)
        g_k = torch.mul(c_k, gy_k, out=g[:ln])  # dL/dh_i through y_i ...
        if j:  # ... plus exp(dt_{i+1} A) dL/dh_{i+1}
            gr[ln - 1].addcmul_(*carry)
        for i in range(ln - 2, -1, -1):
            gr[i].addcmul_(dr[i + 1], gr[i + 1])
        carry[0].copy_(da_k[0])
        carry[1].copy_(g_k[0])
        gf_k = g_k.view(-1, n, e)
        torch.bmm(gyf_k, hsf_k.transpose(1, 2), out=gc_k)
        torch.bmm(b_k, gf_k, out=gdtx_k)
        torch.bmm(dtx_k, gf_k.transpose(1, 2), out=gb_k)
        rq = da_k.mul_(hp_k).mul_(g_k).mul_(a)  # A dL/d(dt A), in place of exp(dt A)
        torch.sum(rq, 2, out=gdt_k)
        g_aa += rq.mul_(dt_k).sum((0, 1))
    g_dt.addcmul_(g_dtx, x)
    return g_dtx.mul_(dt), g_dt, g_aa.div_(a), g_b, g_c


def _conv(x, w, bias, out):
    """Causal depthwise conv along dim 0: out[t] = bias + sum_j w[j] x[t - K + 1 + j]; x (T, ..., C), w (K, C)."""
    k, t = w.shape[0], x.shape[0]
    if bias is None:
        torch.mul(x, w[k - 1], out=out)
    else:
        torch.addcmul(bias, x, w[k - 1], out=out)
    for s in range(1, min(k, t)):
        out[s:].addcmul_(x[:t - s], w[k - 1 - s])
    return out


def _conv_backward(g, x, conv_w, has_bias, out):
    """The adjoint of _conv for g (T, ..., C): writes dL/dx into out; returns the gradients of the conv's
    weight (C, 1, K) and bias (or None)."""
    k, t, x = conv_w.shape[-1], g.shape[0], x.contiguous()  # (the products' sums are 1.5x faster on it)
    w = conv_w[:, 0].t().contiguous()
    dims = tuple(range(g.dim() - 1))
    g_w = torch.stack([(g[s:] * x[:t - s]).sum(dims) if s < t else torch.zeros_like(w[0])
                       for s in range(k - 1, -1, -1)], 1)
    torch.mul(g, w[k - 1], out=out)
    for s in range(1, min(k, t)):
        out[:t - s].addcmul_(g[s:], w[k - 1 - s])
    return g_w[:, None], g.sum(dims) if has_bias else None


class MambaInner(torch.autograd.Function):
    """MambaMixer between in_proj and out_proj: xz (B, T, 2E) -> (y + D xc) silu(z) (B, T, E), fp32.
    weights = conv weight, conv bias (or None), x_proj weight, dt_proj weight and bias, A_log, D, grad: without
    `grad` (no_grad, inference_mode) the states are a plain tensor, freed with the call."""

    @staticmethod
    def forward(ctx, xz, *weights):
        conv_w, conv_b, x_w, dt_w, dt_b, a_log, d_skip, grad = weights
        bsz, t, e = xz.shape[0], xz.shape[1], xz.shape[2] // 2
        r, n = dt_w.shape[1], a_log.shape[1]
        xs, z = xz[..., :e].transpose(0, 1), xz[..., e:].transpose(0, 1)  # (T, B, E) views
        u = _conv(xs, conv_w[:, 0].t().contiguous(), conv_b, xz.new_empty(t, bsz, e))
        xc = F.silu(u)
        dbc = torch.mm(xc.view(t * bsz, e), x_w.t())  # (T B, R + 2N): low-rank dt, B, C
        draw = torch.addmm(dt_b, dbc[:, :r], dt_w.t()).view(t, bsz, e)
        dt = F.softplus(draw)
        a = -torch.exp(a_log)  # (E, N)
        floor = EXP_FLOOR if float(dt.max()) * float(a.min()) < EXP_FLOOR else None
        b, c = dbc[:, r:r + n].view(t, bsz, n), dbc[:, r + n:].view(t, bsz, n)
        y, hs, dtx = _scan_forward(ctx if grad else None, xc, dt, a.t().contiguous(), b, c, floor)
        yd, sz = y.addcmul_(xc, d_skip), F.silu(z)
        out = xz.new_empty(bsz, t, e)
        torch.mul(yd, sz, out=out.transpose(0, 1))
        ctx.save_for_backward(xz, conv_w, x_w, dt_w, a, d_skip, u, xc, dbc, draw, dt, dtx, hs, yd, sz)
        ctx.has_conv_bias, ctx.floor = conv_b is not None, floor
        return out

    @staticmethod
    def backward(ctx, gout):
        xz, conv_w, x_w, dt_w, a, d_skip, u, xc, dbc, draw, dt, dtx, hs, yd, sz = ctx.saved_tensors
        t, bsz, e = xc.shape
        r, n = dt_w.shape[1], a.shape[1]
        xs, z, go = xz[..., :e].transpose(0, 1), xz[..., e:].transpose(0, 1), gout.transpose(0, 1)
        g_xz = torch.empty_like(xz)
        torch.ops.aten.silu_backward(go * yd, z, grad_input=g_xz[..., e:].transpose(0, 1))
        gy = torch.mul(go, sz, out=xc.new_empty(t, bsz, e))  # (T, B, E), time-major
        g_d = (gy * xc).sum((0, 1))
        b, c = dbc[:, r:r + n].view(t, bsz, n), dbc[:, r + n:].view(t, bsz, n)
        g_xc, g_dt, g_at, g_b, g_c = _scan_backward(gy, xc, dt, a.t().contiguous(), (b, c), hs, dtx, ctx.floor)
        g_xc.addcmul_(gy, d_skip)
        g_draw = torch.ops.aten.softplus_backward(g_dt, draw, 1.0, 20.0).view(t * bsz, e)
        g_dbc = torch.cat([g_draw @ dt_w, g_b.view(-1, n), g_c.view(-1, n)], 1)
        g_dt_w, g_dt_b = g_draw.t() @ dbc[:, :r], g_draw.sum(0)
        g_x_w = g_dbc.t() @ xc.view(-1, e)
        g_xc.view(-1, e).addmm_(g_dbc, x_w)
        g_u = torch.ops.aten.silu_backward(g_xc, u)
        g_w, g_cb = _conv_backward(g_u, xs, conv_w, ctx.has_conv_bias, g_xz[..., :e].transpose(0, 1))
        return g_xz, g_w, g_cb, g_x_w, g_dt_w, g_dt_b, g_at.t() * a, g_d, None


def _mamba_forward(self, hidden_states, cache=None, attention_mask=None, **kwargs):
    """MambaMixer.forward for training: hidden_states (B, T, d) -> (B, T, d)."""
    if cache is not None or (attention_mask is not None and not bool(attention_mask.all())) or \
            self.activation != "silu":
        return self._reference_forward(hidden_states, cache=cache, attention_mask=attention_mask, **kwargs)
    xz = self.in_proj(hidden_states)
    with torch.autocast(xz.device.type, enabled=False):
        conv_b = None if self.conv1d.bias is None else self.conv1d.bias.float()
        y = MambaInner.apply(xz.float(), self.conv1d.weight.float(), conv_b, self.x_proj.weight.float(),
                             self.dt_proj.weight.float(), self.dt_proj.bias.float(), self.A_log.float(),
                             self.D.float(), torch.is_grad_enabled())
    return self.out_proj(y.to(xz.dtype))


# ---------------------------------------------------------------------------------------------- Mamba-2
def _chunked(v, q):
    """Time-major (T, B, K, D) -> chunk-major (B, n, K, Q, D), zero-padded to whole chunks."""
    t = v.shape[0]
    n = -(-t // q)
    if n * q != t:
        v = F.pad(v, (0, 0, 0, 0, 0, 0, 0, n * q - t))
    return v.view(n, q, *v.shape[1:]).permute(2, 0, 3, 1, 4).contiguous()


def _unchunked(v, t):
    """The inverse of _chunked: (B, n, K, Q, D) -> (T, B, K, D)."""
    bsz, n, k, q, d = v.shape
    return v.permute(1, 3, 0, 2, 4).reshape(n * q, bsz, k, d)[:t].contiguous()


def _ssd_forward(u, la, b, c):
    """SSD on chunk-major tensors. u = dt x (B, n, H, Q, P); la = dt A (B, n, H, Q); b, c (B, n, G, Q, N) ->
    y (B, n, H, Q, P) and what the backward needs."""
    bsz, n, h, q, p = u.shape
    g = b.shape[2]
    cum = torch.cumsum(la, -1)  # log decay since the chunk's start
    # (B, n, H, Qt, Qs): exp(cum_t - cum_s) on and below the diagonal, 0 above (no -inf: exp's slow path)
    decay = (cum[..., :, None] - cum[..., None, :]).clamp_(EXP_FLOOR, 0.0).exp_().mul_(_lower(q, u))
    cb = torch.matmul(c, b.transpose(-1, -2))  # (B, n, G, Qt, Qs)
    m = (decay.view(bsz, n, g, h // g, q, q) * cb[:, :, :, None]).view(bsz, n, h, q, q)
    y = torch.matmul(m, u)
    hin = None
    if n > 1:  # the states carried between chunks: hin[:, i] enters chunk i, (B, n, H, N, P)
        to_end = torch.exp(cum[..., -1:] - cum)  # (B, n, H, Q)
        bh, ch = _per_head(b, h), _per_head(c, h)
        local = torch.matmul((bh * to_end[..., None]).transpose(-1, -2), u)
        hin = torch.empty_like(local)
        hin[:, 0].zero_()
        for i in range(1, n):
            torch.addcmul(local[:, i - 1], hin[:, i - 1], cum[:, i - 1, :, -1:, None].exp(), out=hin[:, i])
        y += torch.matmul(ch * cum.exp()[..., None], hin)
    return y, (u, cum, decay, cb, m, hin, b, c)


def _ssd_backward(gy, saved):
    """The adjoint of _ssd_forward: gy (B, n, H, Q, P) -> (g_u, g_la, g_b, g_c) in the same layouts."""
    u, cum, decay, cb, m, hin, b, c = saved
    bsz, n, h, q, p = u.shape
    g = b.shape[2]
    g_u = torch.matmul(m.transpose(-1, -2), gy)
    g_m = torch.matmul(gy, u.transpose(-1, -2))  # (B, n, H, Qt, Qs)
    g_cb = (g_m * decay).view(bsz, n, g, h // g, q, q).sum(3)
    g_c, g_b = torch.matmul(g_cb, b), torch.matmul(g_cb.transpose(-1, -2), c)
    w = g_m.mul_(m)  # d loss / d (cum_t - cum_s)
    g_cum = w.sum(-1) - w.sum(-2)
    if n > 1:
        bh, ch = _per_head(b, h), _per_head(c, h)
        e_cum, to_end = cum.exp(), torch.exp(cum[..., -1:] - cum)
        end = cum[:, :, :, -1].exp()  # (B, n, H): the decay over a whole chunk
        g_hin = torch.matmul((ch * e_cum[..., None]).transpose(-1, -2), gy)  # through the output, (B, n, H, N, P)
        carry = torch.zeros_like(g_hin[:, 0])
        g_local = torch.zeros_like(g_hin)  # d loss / d (state added by chunk i) = d loss / d hin[:, i + 1]
        g_end = torch.zeros_like(end)
        for i in range(n - 1, 0, -1):
            g_local[:, i - 1] = carry = g_hin[:, i] + carry * end[:, i, :, None, None]  # d loss / d hin[:, i]
            g_end[:, i - 1] = (hin[:, i - 1] * carry).sum((-1, -2))
        g_ch = torch.matmul(gy, hin.transpose(-1, -2)) * e_cum[..., None]  # (B, n, H, Q, N)
        g_cum += (g_ch * ch).sum(-1)
        g_c += _per_group(g_ch, g)
        g_bd = torch.matmul(u, g_local.transpose(-1, -2))  # (B, n, H, Q, N) before the decay to the end
        g_u += torch.matmul(bh * to_end[..., None], g_local)
        g_bh = g_bd * to_end[..., None]
        g_b += _per_group(g_bh, g)
        wb = (g_bh * bh).sum(-1)
        g_cum -= wb
        g_cum[..., -1] += wb.sum(-1) + g_end * end
    g_la = g_cum.flip(-1).cumsum(-1).flip(-1)  # through cum = cumsum(la)
    return g_u, g_la, g_b, g_c


def _per_head(v, h):
    """(B, n, G, Q, N) -> (B, n, H, Q, N): each group's rows for its H / G heads."""
    return v.repeat_interleave(h // v.shape[2], dim=2)


def _per_group(v, g):
    """The adjoint of _per_head: sum the heads of each group."""
    bsz, n, h = v.shape[:3]
    return v.view(bsz, n, g, h // g, *v.shape[3:]).sum(3)


def _lower(q, like):
    """The (Q, Q) 0/1 mask on and below the diagonal (cached)."""
    key = _key("lower", (q, q), like.dtype, like.device)
    if key not in _WORK:
        _WORK[key] = torch.ones(q, q, dtype=like.dtype, device=like.device).tril_()
    return _WORK[key]


class Mamba2Inner(torch.autograd.Function):
    """Mamba2Mixer between in_proj and out_proj with a hand-written backward: zxbcdt (B, T, E + conv + H) ->
    the gated RMSNorm of (SSD + D x) (B, T, E). Time-major inside for the conv and the norm, chunk-major for
    the SSD. weights = conv weight, conv bias (or None), dt_bias, A_log, D, the norm's weight, and `shape` =
    (heads, groups, state, norm groups, eps, dt min, dt max, chunk)."""

    @staticmethod
    def forward(ctx, zxbcdt, *weights):
        conv_w, conv_b, dt_bias, a_log, d_skip, norm_w, shape = weights
        heads, groups, state, norm_groups, eps, lo, hi, chunk = shape
        bsz, t = zxbcdt.shape[:2]
        cd = conv_w.shape[0]
        e, gn = zxbcdt.shape[2] - cd - heads, groups * state
        zt = zxbcdt.transpose(0, 1)  # (T, B, .) views
        u = _conv(zt[..., e:e + cd], conv_w[:, 0].t().contiguous(), conv_b, zxbcdt.new_empty(t, bsz, cd))
        xbc = F.silu(u)
        x = xbc[..., :e].view(t, bsz, heads, -1)
        dtr = zt[..., e + cd:] + dt_bias
        sp = F.softplus(dtr)
        dt = sp.clamp(lo, hi)  # (T, B, H)
        a = -torch.exp(a_log)
        ys, saved = _ssd_forward(_chunked(x * dt[..., None], chunk), _chunked((dt * a)[..., None], chunk)[..., 0],
                                 *(_chunked(xbc[..., i:i + gn].view(t, bsz, groups, state), chunk)
                                   for i in (e, e + gn)))
        y = _unchunked(ys, t).addcmul_(x, d_skip[:, None]).view(t, bsz, e)
        sz = F.silu(zt[..., :e])
        v = (y * sz).view(t, bsz, norm_groups, -1)
        rstd = torch.rsqrt(v.pow(2).mean(-1, keepdim=True).add_(eps))
        vn = v.mul_(rstd).view(t, bsz, e)
        out = zxbcdt.new_empty(bsz, t, e)
        torch.mul(vn, norm_w, out=out.transpose(0, 1))
        clamped = None if lo <= 0 and hi == float("inf") else (sp >= lo) & (sp <= hi)
        ctx.save_for_backward(zxbcdt, conv_w, a, d_skip, norm_w, u, xbc, dtr, dt, y, sz, vn, rstd, clamped,
                              *[v for v in saved if v is not None])
        ctx.shape, ctx.carried, ctx.has_conv_bias = shape, saved[5] is not None, conv_b is not None
        return out

    @staticmethod
    def backward(ctx, gout):
        zxbcdt, conv_w, a, d_skip, norm_w, u, xbc, dtr, dt, y, sz, vn, rstd, clamped, *saved = ctx.saved_tensors
        heads, groups, state, norm_groups, eps, lo, hi, chunk = ctx.shape
        if not ctx.carried:
            saved.insert(5, None)
        t, bsz, e = y.shape
        cd, gn = conv_w.shape[0], groups * state
        zt, go = zxbcdt.transpose(0, 1), gout.transpose(0, 1)
        g_in = torch.empty_like(zxbcdt)
        g_tin = g_in.transpose(0, 1)
        g_norm_w = (go * vn).sum((0, 1))
        g_vn = (go * norm_w).view(t, bsz, norm_groups, -1)
        vg = vn.view(t, bsz, norm_groups, -1)
        g_v = (g_vn - vg * (g_vn * vg).mean(-1, keepdim=True)).mul_(rstd).view(t, bsz, e)
        torch.ops.aten.silu_backward(g_v * y, zt[..., :e], grad_input=g_tin[..., :e])
        g_y = (g_v * sz).view(t, bsz, heads, -1)
        x = xbc[..., :e].view(t, bsz, heads, -1)
        g_d = (g_y * x).sum((0, 1, 3))
        g_u, g_la, g_b, g_c = _ssd_backward(_chunked(g_y, chunk), saved)
        g_u, g_la = _unchunked(g_u, t), _unchunked(g_la[..., None], t)[..., 0]
        g_xbc = torch.empty_like(xbc)
        torch.mul(g_u, dt[..., None], out=g_xbc[..., :e].view(t, bsz, heads, -1)).add_(g_y * d_skip[:, None])
        g_xbc[..., e:e + gn] = _unchunked(g_b, t).view(t, bsz, gn)
        g_xbc[..., e + gn:] = _unchunked(g_c, t).view(t, bsz, gn)
        g_dt = (g_u * x).sum(-1).addcmul_(g_la, a)
        g_a = (g_la * dt).sum((0, 1))
        if clamped is not None:
            g_dt.mul_(clamped)
        g_dtr = torch.ops.aten.softplus_backward(g_dt, dtr, 1.0, 20.0)
        g_tin[..., e + cd:] = g_dtr
        g_w, g_cb = _conv_backward(torch.ops.aten.silu_backward(g_xbc, u), zt[..., e:e + cd], conv_w,
                                   ctx.has_conv_bias, g_tin[..., e:e + cd])
        return g_in, g_w, g_cb, g_dtr.sum((0, 1)), g_a * a, g_d, g_norm_w, None


def _mamba2_forward(self, hidden_states, cache=None, attention_mask=None, **kwargs):
    """Mamba2Mixer.forward for training: hidden_states (B, T, d) -> (B, T, d)."""
    if cache is not None or (attention_mask is not None and not bool(attention_mask.all())) or \
            self.activation != "silu":
        return self._reference_forward(hidden_states, cache=cache, attention_mask=attention_mask, **kwargs)
    zxbcdt = self.in_proj(hidden_states)
    shape = (self.num_heads, self.n_groups, self.ssm_state_size, self.intermediate_size // self.norm.group_size,
             self.norm.variance_epsilon, *map(float, self.time_step_limit), SSD_CHUNK)
    with torch.autocast(zxbcdt.device.type, enabled=False):
        conv_b = None if self.conv1d.bias is None else self.conv1d.bias.float()
        y = Mamba2Inner.apply(zxbcdt.float(), self.conv1d.weight.float(), conv_b, self.dt_bias.float(),
                              self.A_log.float(), self.D.float(), self.norm.weight.float(), shape)
    return self.out_proj(y.to(zxbcdt.dtype))


# ---------------------------------------------------------------------------------------------- RWKV-4
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
             "BambaMixer": ("mamba2", _mamba2_forward),  # the hybrid's mixer: Mamba-2's layout and names
             "RwkvSelfAttention": ("rwkv", _rwkv_forward), **fastpath_rwkv7.FORWARDS}


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
