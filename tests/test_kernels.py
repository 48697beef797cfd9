"""The sequence-mixing kernels against naive per-token loops, on random fp32 tensors, without loading a model.

Each reference below is the textbook recurrence written one token (or one query) at a time, in float64:
- Mamba's selective scan h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t (Gu & Dao 2023, Alg. 2), for
  families/mamba.py `scan` and the whole chunked mixer `_mix_prefill` (conv window, x_proj, softplus, D skip,
  z gate) from a non-zero conv and SSM state, across chunk boundaries;
- Mamba-2's SSD recurrence with a scalar decay per head (Dao & Gu 2024, Sec. 6), for families/mamba2.py `ssd`
  at several chunk sizes (lengths not a multiple of the chunk, a non-zero initial state);
- RWKV-4's WKV in the numerically stable running-maximum form (Peng et al. 2023, App. D), for
  families/rwkv.py `wkv` (chunk boundaries, a carried state, exponents far past fp32's exp range);
- softmax attention over the concatenation of a shared prefix and each row's own columns, for
  families/transformer.py `_one_softmax` / `_attend` (cascade decode, grouped-query heads) and
  `_packed_attend` (rows packed back to back, each causal, merged with the prefix by log-sum-exp).
Every assertion message names the kernel that broke.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from archbench.families import mamba, mamba2, rwkv, transformer

F64 = torch.float64


def _check(kernel: str, got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """got (fp32, the kernel) against want (float64, the loop), with the kernel's name in any failure."""
    got, want = got.detach().to(F64), want.detach().to(F64)
    assert got.shape == want.shape, f"{kernel}: shape {tuple(got.shape)} != reference {tuple(want.shape)}"
    scale = float(want.abs().max().clamp(min=1.0))
    err = (got - want).abs().max()
    assert torch.allclose(got, want, rtol=rtol, atol=atol * scale), \
        f"{kernel} differs from its per-token reference loop: max |error| {err:.3e} (scale {scale:.3e})"


# ---------------------------------------------------------------------------------------------- Mamba


def _scan_loop(dA, dBx, h0):
    """h_t = dA_t * h_{t-1} + dBx_t, one t at a time. dA, dBx (B, T, ...), h0 (B, ...) -> (B, T, ...)."""
    h, out = h0.to(F64), []
    for t in range(dA.shape[1]):
        h = dA[:, t].to(F64) * h + dBx[:, t].to(F64)
        out.append(h)
    return torch.stack(out, 1)


@pytest.mark.parametrize("length", [1, 2, 7, 16, 37])
def test_mamba_selective_scan_matches_loop(length):
    g = torch.Generator().manual_seed(length)
    dA = torch.rand(3, length, 5, 4, generator=g)  # decays in (0, 1), as exp(dt * A) with A < 0
    dBx = torch.randn(3, length, 5, 4, generator=g)
    h0 = torch.randn(3, 5, 4, generator=g)
    _check("mamba.scan (selective scan)", mamba.scan(dA, dBx, h0), _scan_loop(dA, dBx, h0))


def _mamba_mixer(d=8, d_inner=16, n=4, rank=3, k=4, seed=0):
    """The parts of transformers' MambaMixer that archbench reads, with random weights."""
    torch.manual_seed(seed)
    mix = SimpleNamespace(in_proj=nn.Linear(d, 2 * d_inner), x_proj=nn.Linear(d_inner, rank + 2 * n, bias=False),
                          dt_proj=nn.Linear(rank, d_inner), out_proj=nn.Linear(d_inner, d),
                          conv1d=nn.Conv1d(d_inner, d_inner, k, groups=d_inner, padding=k - 1),
                          A_log=torch.log(torch.rand(d_inner, n) * 4 + 0.5), D=torch.randn(d_inner),
                          ssm_state_size=n, time_step_rank=rank)
    return mix


@torch.no_grad()
def _mamba_mixer_loop(mix, x, conv, h):
    """The Mamba mixer one token at a time (float64). x (B, T, d), conv (B, d_inner, K-1), h (B, d_inner, n)."""
    p = {name: getattr(mix, name).weight.to(F64) for name in ("in_proj", "x_proj", "dt_proj", "out_proj")}
    n, rank = mix.ssm_state_size, mix.time_step_rank
    w, bias = mix.conv1d.weight.detach()[:, 0].to(F64), mix.conv1d.bias.detach().to(F64)  # (d_inner, K)
    A, D = -torch.exp(mix.A_log.to(F64)), mix.D.to(F64)
    prev, h, outs = conv.to(F64), h.to(F64), []  # prev: the conv's last K-1 inputs
    for t in range(x.shape[1]):
        xz = x[:, t].to(F64) @ p["in_proj"].T + mix.in_proj.bias.to(F64)
        xs, z = xz.chunk(2, dim=-1)  # (B, d_inner)
        window = torch.cat([prev, xs[:, :, None]], -1)  # (B, d_inner, K)
        prev = window[:, :, 1:]
        xc = F.silu((window * w).sum(-1) + bias)  # (B, d_inner)
        dbc = xc @ p["x_proj"].T
        dt = F.softplus(dbc[:, :rank] @ p["dt_proj"].T + mix.dt_proj.bias.to(F64))  # (B, d_inner)
        b, c = dbc[:, rank:rank + n], dbc[:, rank + n:]  # (B, n)
        h = torch.exp(dt[:, :, None] * A) * h + dt[:, :, None] * b[:, None, :] * xc[:, :, None]
        y = ((h * c[:, None, :]).sum(-1) + D * xc) * F.silu(z)
        outs.append(y @ p["out_proj"].T + mix.out_proj.bias.to(F64))
    return torch.stack(outs, 1), prev, h


@pytest.mark.parametrize("length", [5, 40])
def test_mamba_chunked_mixer_matches_loop(monkeypatch, length):
    monkeypatch.setattr(mamba, "CHUNK", 32)  # 2 rows -> chunks of 16 positions: 40 crosses two boundaries
    mix = _mamba_mixer()
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, length, 8, generator=g)
    conv, h = torch.randn(2, 16, 3, generator=g), torch.randn(2, 16, 4, generator=g)  # a state carried in
    with torch.no_grad():
        out, conv_new, h_new = mamba._mix_prefill(mix, x, conv, h)
        steps, c1, h1 = [], conv, h
        for t in range(length):  # the decode path must follow the same recurrence
            o, c1, h1 = mamba._mix_step(mix, x[:, t], c1, h1)
            steps.append(o)
    ref, conv_ref, h_ref = _mamba_mixer_loop(mix, x, conv, h)
    _check("mamba._mix_prefill (chunked selective scan) output", out, ref)
    _check("mamba._mix_prefill (chunked selective scan) final SSM state", h_new, h_ref)
    _check("mamba._mix_prefill conv window state", conv_new, conv_ref)
    _check("mamba._mix_step (one-token recurrence)", torch.stack(steps, 1), ref)
    _check("mamba._mix_step SSM state", h1, h_ref)


# -------------------------------------------------------------------------------------------- Mamba-2


def _ssd_loop(x, dt, A, b, c, h):
    """Mamba-2's recurrence one token at a time: h_t = exp(dt_t A) h_{t-1} + dt_t x_t b_t^T, y_t = h_t c_t.
    x (B, T, H, P), dt (B, T, H), A (H,), b/c (B, T, H, N), h (B, H, P, N)."""
    x, dt, A, b, c, h = (t.to(F64) for t in (x, dt, A, b, c, h))
    ys = []
    for t in range(x.shape[1]):
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]  # (B, H, 1, 1)
        h = decay * h + (dt[:, t, :, None] * x[:, t])[..., None] * b[:, t, :, None, :]
        ys.append((h * c[:, t, :, None, :]).sum(-1))  # (B, H, P)
    return torch.stack(ys, 1), h


@pytest.mark.parametrize("length,chunk", [(13, 4), (30, 7), (16, 16), (9, 64), (21, 1)])
def test_mamba2_ssd_matches_loop(length, chunk):
    g = torch.Generator().manual_seed(length * 100 + chunk)
    bsz, heads, hdim, n = 2, 3, 4, 5
    x = torch.randn(bsz, length, heads, hdim, generator=g)
    dt = torch.rand(bsz, length, heads, generator=g) + 0.05
    A = -(torch.rand(heads, generator=g) * 2 + 0.1)
    b, c = torch.randn(bsz, length, heads, n, generator=g), torch.randn(bsz, length, heads, n, generator=g)
    h0 = torch.randn(bsz, heads, hdim, n, generator=g)  # a non-zero initial state
    y, h = mamba2.ssd(x, dt, A, b, c, h0, chunk)
    y_ref, h_ref = _ssd_loop(x, dt, A, b, c, h0)
    _check(f"mamba2.ssd (chunk {chunk}) output", y, y_ref)
    _check(f"mamba2.ssd (chunk {chunk}) final state", h, h_ref)


# --------------------------------------------------------------------------------------------- RWKV-4


def _wkv_loop(w, u, k, v, num, den, p):
    """RWKV-4's WKV one token at a time in the stable form: the state (num, den) is scaled by e^p and every
    exponent is shifted by the running maximum before exp. Returns (wkv (B, T, A), num, den, p) in float64."""
    w, u, k, v, num, den, p = (t.to(F64) for t in (w, u, k, v, num, den, p))
    out = []
    for t in range(k.shape[1]):
        kt, vt = k[:, t], v[:, t]
        q = torch.maximum(p, u + kt)  # output: the state plus the current token with its bonus u
        a, e = torch.exp(p - q), torch.exp(u + kt - q)
        out.append((a * num + e * vt) / (a * den + e))
        q = torch.maximum(p + w, kt)  # state: decay once, add the current token without the bonus
        a, e = torch.exp(p + w - q), torch.exp(kt - q)
        num, den, p = a * num + e * vt, a * den + e, q
    return torch.stack(out, 1), num, den, p


def _wkv_inputs(length: int, seed: int, spread: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    width = 6
    w = -torch.exp(torch.randn(width, generator=g))  # w = -exp(time_decay) < 0
    u = torch.randn(width, generator=g)
    k = torch.randn(2, length, width, generator=g) * spread
    v = torch.randn(2, length, width, generator=g)
    return w, u, k, v


def _fresh(width: int):
    zeros = torch.zeros(2, width)
    return zeros, zeros.clone(), zeros - 1e38  # what rwkv._empty starts from


def _check_state(name, got, ref):
    """The state (num, den, p) means (num e^p, den e^p): compare both at the reference's scale."""
    num, den, p = (t.to(F64) for t in got)
    num_r, den_r, p_r = ref
    shift = torch.exp(p - p_r)
    _check(f"{name} carried state num", num * shift, num_r)
    _check(f"{name} carried state den", den * shift, den_r)


@pytest.mark.parametrize("length,chunk", [(1, 32), (31, 32), (75, 32), (23, 5)])
def test_rwkv_wkv_matches_loop(monkeypatch, length, chunk):
    monkeypatch.setattr(rwkv, "CHUNK", chunk)
    w, u, k, v = _wkv_inputs(length + 12, seed=length)
    _, num, den, p = _wkv_loop(w, u, k[:, :12], v[:, :12], *_fresh(6))  # a state carried from 12 earlier tokens
    state = tuple(t.float() for t in (num, den, p))
    got, *got_state = rwkv.wkv(w, u, k[:, 12:], v[:, 12:], *state)
    ref, *ref_state = _wkv_loop(w, u, k[:, 12:], v[:, 12:], *state)
    _check(f"rwkv.wkv (chunk {chunk}, carried state)", got, ref)
    _check_state(f"rwkv.wkv (chunk {chunk})", got_state, ref_state)
    got, *_ = rwkv.wkv(w, u, k, v, *_fresh(6))
    _check(f"rwkv.wkv (chunk {chunk}, fresh state)", got, _wkv_loop(w, u, k, v, *_fresh(6))[0])


def test_rwkv_wkv_is_stable_for_large_exponents(monkeypatch):
    monkeypatch.setattr(rwkv, "CHUNK", 8)
    w, u, k, v = _wkv_inputs(40, seed=3, spread=60.0)  # keys up to ~200: exp overflows fp32 beyond 88
    k[:, 5] = 300.0
    got, num, den, p = rwkv.wkv(w, u * 50, k, v, *_fresh(6))
    ref, *ref_state = _wkv_loop(w, u * 50, k, v, *_fresh(6))
    assert torch.isfinite(got).all() and torch.isfinite(num).all() and torch.isfinite(den).all(), \
        "rwkv.wkv overflowed with large exponents (inf/nan)"
    _check("rwkv.wkv (large exponents)", got, ref)
    _check_state("rwkv.wkv (large exponents)", (num, den, p), ref_state)


# -------------------------------------------------------------------------------------- Transformer


def _attention_loop(q, keys, values, visible, scale):
    """Softmax attention one query at a time. q (H, N, D), keys/values (H, W, D), visible (N, W) bool; query
    head h reads key head h // (H / Hkv) (grouped-query attention)."""
    q, keys, values = q.to(F64), keys.to(F64), values.to(F64)
    r = q.shape[0] // keys.shape[0]
    out = torch.zeros(q.shape, dtype=F64)
    for h in range(q.shape[0]):
        for i in range(q.shape[1]):
            cols = visible[i].nonzero()[:, 0]
            s = torch.stack([(q[h, i] * keys[h // r, j]).sum() * scale for j in cols])
            wts = torch.softmax(s, 0)
            out[h, i] = sum(wt * values[h // r, j] for wt, j in zip(wts, cols))
    return out


def _prefix_state(pk, pv):
    """A batch-1 prefix as `_shared` reads it (cache layers with keys/values (1, Hkv, P, D))."""
    layer = SimpleNamespace(keys=pk[None], values=pv[None])
    return transformer._shared(SimpleNamespace(shared=None, cache=SimpleNamespace(layers=[layer])))[0]


@pytest.mark.parametrize("prefix", [0, 6])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])
def test_cascade_attention_matches_attention_over_the_concatenation(prefix, heads, kv_heads):
    g = torch.Generator().manual_seed(prefix + heads + kv_heads)
    b, s, d, w0, scale = 3, 2, 8, 5, 0.3  # 2 new queries per row after 5 cached columns
    pk, pv = torch.randn(kv_heads, prefix, d, generator=g), torch.randn(kv_heads, prefix, d, generator=g)
    cached = [torch.randn(b, kv_heads, w0, d, generator=g) for _ in range(2)]
    k, v = torch.randn(b, kv_heads, s, d, generator=g), torch.randn(b, kv_heads, s, d, generator=g)
    q = torch.randn(b, heads, s, d, generator=g)
    keep = torch.ones(b, w0 + s, dtype=torch.long)
    keep[0, :2], keep[2, :4] = 0, 0  # left padding / dropped columns of some rows
    visible = transformer._visible(keep, s)  # (B, S, W)
    layer = transformer.Preallocated()
    layer.update(*cached)
    shared = _prefix_state(pk, pv) if prefix else None
    got = transformer._attend(q, layer, k, v, shared, visible, scale)  # (B, S, H * D)
    for row in range(b):
        keys = torch.cat([pk, torch.cat([cached[0], k], 2)[row]], 1)  # (Hkv, P + W, D)
        values = torch.cat([pv, torch.cat([cached[1], v], 2)[row]], 1)
        seen = torch.cat([torch.ones(s, prefix, dtype=torch.bool), visible[row]], 1)  # (S, P + W)
        ref = _attention_loop(q[row], keys, values, seen, scale)  # (H, S, D)
        _check(f"transformer._one_softmax (cascade attention, prefix {prefix}, {heads}q/{kv_heads}kv heads) row {row}",
               got[row].view(s, heads, d).transpose(0, 1), ref)


@pytest.mark.skipif(transformer._FLASH_CPU is None, reason="this torch has no fused CPU flash attention op")
@pytest.mark.parametrize("prefix", [0, 7])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])
def test_packed_prefill_attention_matches_per_row_causal_attention(prefix, heads, kv_heads):
    g = torch.Generator().manual_seed(10 + prefix + kv_heads)
    lens, d, scale = [5, 3, 7], 8, 0.35
    n = sum(lens)
    q = torch.randn(1, heads, n, d, generator=g)
    k, v = torch.randn(1, kv_heads, n, d, generator=g), torch.randn(1, kv_heads, n, d, generator=g)
    pk, pv = torch.randn(kv_heads, prefix, d, generator=g), torch.randn(kv_heads, prefix, d, generator=g)
    layer = transformer.Preallocated()
    got = transformer._packed_attend(q, layer, k, v, _prefix_state(pk, pv) if prefix else None, lens, scale)
    start = 0
    for row, m in enumerate(lens):
        own = slice(start, start + m)
        keys, values = torch.cat([pk, k[0, :, own]], 1), torch.cat([pv, v[0, :, own]], 1)  # (Hkv, P + m, D)
        seen = torch.ones(m, prefix + m, dtype=torch.bool)
        seen[:, prefix:] = torch.ones(m, m).tril().bool()  # causal inside the row, all of the prefix
        ref = _attention_loop(q[0, :, own], keys, values, seen, scale)
        _check(f"transformer._packed_attend (packed prefill, prefix {prefix}, {heads}q/{kv_heads}kv heads) "
               f"row {row}", got[0, :, own], ref)
        pad = max(lens) - m  # the cache holds the row left-padded, as decode reads it
        _check("transformer._packed_attend cache keys (left-padded)", layer.keys[row, :, pad:], k[0, :, own])
        _check("transformer._packed_attend cache values (left-padded)", layer.values[row, :, pad:], v[0, :, own])
        start += m
