"""Training-speed RWKV-7 time mixing for the lab: the companion of fastpath.py for archbench's own
models/rwkv7.py, in plain PyTorch (CPU and any GPU).

The wkv7 state update is models/wkv7.py's chunked form (the same algebra, the same numbers: a test checks
outputs, final state and every gradient against it), arranged for training:

- one layout change per input, to contiguous (B H, T, N), so every product is a plain batched matmul;
- per chunk, [a_g; r_g] and [b_g; k_g] are stacked, so the four masked products a.b, a.k (strictly lower),
  r.b, r.k (lower) are one (2L, 2L) matmul, and the output and the carried state read [u; v] at once;
- a hand-written backward (`Wkv7`, a custom autograd Function): per chunk in reverse, the adjoint of the
  state update, of the output, of the triangular solve (A^-T, one solve), of the stacked products, then of
  the decay factors G through the cumulative sum, instead of autograd's backward of every recorded op.

On a 1-thread CPU at the baby-GPT shape (B 12, T 64, 3 heads of 32) its forward + backward takes about 0.7x
the time of autograd through wkv7.py. `forward` is `Rwkv7Attention.forward` with this wkv, installed per
instance by fastpath.install through `FORWARDS` and `KERNELS`, so parameter names and save_pretrained stay
the model's; a one-token call takes the model's one-step recurrence.
"""
from __future__ import annotations

import torch

from archbench.models.wkv7 import wkv7_step

CHUNK = 32  # positions per chunk: 1/G stays below e^{0.61 x 32} (fp32-safe, as in wkv7.py)
KERNELS = {"rwkv7": "lab-wkv7-chunked (torch, custom autograd)"}


def wkv7_train(r, logw, k, v, a, b, state):
    """models/wkv7.wkv7's contract: r, logw, k, v, a, b (B, T, H, N) any float dtype; state (B, H, N_v, N_k)
    fp32. Returns (o (B, T, H, N_v) fp32, state after the last position)."""
    bsz, t, h, n = r.shape
    if t == 1:
        o, state = wkv7_step(*(x[:, 0].float() for x in (r, logw, k, v, a, b)), state)
        return o[:, None], state
    flat = (x.float().transpose(1, 2).reshape(bsz * h, t, n) for x in (r, logw, k, v, a, b))  # (B H, T, N)
    o, st = Wkv7.apply(*flat, state.reshape(bsz * h, n, n).transpose(1, 2))
    return o.view(bsz, h, t, n).transpose(1, 2), st.transpose(1, 2).reshape(bsz, h, n, n)


class Wkv7(torch.autograd.Function):
    """The chunked wkv7 on (B H, T, N) fp32 inputs and S^T (B H, N_k, N_v), with a hand-written backward.
    Per chunk (L positions), in the notation above: left = [a_g; r_g], right = [b_g; k_g] (2L, N_k); mat =
    (left right^T) masked = [[a.b, a.k], [r.b, r.k]]; A = I - a.b; u = A^-1 (a_g S^T + a.k v); o = r_g S^T +
    [r.b, r.k] [u; v]; S^T <- diag(G_L) S^T + tail^T [u; v] with tail = [b G_L/G; k G_L/G]."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)  # fp32 inside, under bf16 autocast too
    def forward(ctx, r, logw, k, v, a, b, st):
        outs, ctx.chunks = [], []
        for s in range(0, r.shape[1], CHUNK):
            rc, wc, kc, vc, ac, bc = (x[:, s:s + CHUNK] for x in (r, logw, k, v, a, b))
            size = rc.shape[1]
            c = wc.cumsum(1)  # log G_t, inclusive
            inv = (-c).exp()
            left = torch.cat([ac * (c - wc).exp(), rc * c.exp()], 1)  # [a_t G_{t-1}; r_t G_t]
            right = torch.cat([bc * inv, kc * inv], 1)  # [b_i / G_i; k_i / G_i]
            mat = torch.bmm(left, right.transpose(1, 2)).mul_(_mask(size, r.device))
            ls = torch.bmm(left, st)  # [a_g S^T; r_g S^T] (B H, 2L, N_v)
            lower = _eye(size, r.device) - mat[:, :size, :size]
            u = torch.linalg.solve_triangular(lower, torch.baddbmm(ls[:, :size], mat[:, :size, size:], vc),
                                              upper=False)
            uv = torch.cat([u, vc], 1)  # (B H, 2L, N_v)
            outs.append(torch.baddbmm(ls[:, size:], mat[:, size:], uv))
            to_end = (c[:, -1:] - c).exp()  # G_L / G_i <= 1
            tail = torch.cat([bc * to_end, kc * to_end], 1)  # (B H, 2L, N_k)
            decay = c[:, -1, :, None].exp()  # G_L (B H, N_k, 1)
            ctx.chunks.append((s, c, wc, left, right, mat, lower, uv, tail, decay, st))
            st = torch.baddbmm(st * decay, tail.transpose(1, 2), uv)
        return torch.cat(outs, 1), st

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, d_o, d_st):
        grads = [[] for _ in range(6)]  # r, logw, k, v, a, b: chunks in reverse order
        for s, c, wc, left, right, mat, lower, uv, tail, decay, st in reversed(ctx.chunks):
            size = c.shape[1]
            do = d_o[:, s:s + size]
            d_uv = torch.bmm(tail, d_st)  # through the state update
            d_tail = torch.bmm(uv, d_st.transpose(1, 2))
            d_decay = (d_st * st).sum(-1)  # (B H, N_k)
            d_st_in = d_st * decay
            d_uv = torch.baddbmm(d_uv, mat[:, size:].transpose(1, 2), do)  # through the output
            d_rhs = torch.linalg.solve_triangular(lower.transpose(1, 2), d_uv[:, :size], upper=True)  # A^-T du
            dv = torch.baddbmm(d_uv[:, size:], mat[:, :size, size:].transpose(1, 2), d_rhs)
            dq = torch.cat([d_rhs, do], 1)  # gradients of the rows of [a_g S^T + a.k v; r_g S^T + ...]
            d_left = torch.bmm(dq, st.transpose(1, 2))
            d_st = torch.baddbmm(d_st_in, left.transpose(1, 2), dq)
            d_mat = torch.bmm(dq, uv.transpose(1, 2)).mul_(_mask(size, c.device))
            d_left = torch.baddbmm(d_left, d_mat, right)
            d_right = torch.bmm(d_mat.transpose(1, 2), left)
            g_left, g_right, g_tail = d_left * left, d_right * right, d_tail * tail  # d/dc of each exp factor
            inv, to_end = (-c).exp(), (c[:, -1:] - c).exp()
            dc = (g_left[:, :size] + g_left[:, size:] - g_right[:, :size] - g_right[:, size:] - g_tail[:, :size]
                  - g_tail[:, size:])
            dc[:, -1] += g_tail.sum(1) + d_decay * decay[..., 0]
            dw = dc.sum(1, keepdim=True) - dc.cumsum(1) + dc - g_left[:, :size]  # c = cumsum(w); a_g has G_{t-1}
            d_bk = d_right * inv.repeat(1, 2, 1) + d_tail * to_end.repeat(1, 2, 1)  # [db; dk]
            for out, g in zip(grads, (d_left[:, size:] * c.exp(), dw, d_bk[:, size:], dv,
                                      d_left[:, :size] * (c - wc).exp(), d_bk[:, :size])):
                out.append(g)
        return (*(torch.cat(g[::-1], 1) for g in grads), d_st)


_CACHE: dict = {}


def _mask(size: int, device) -> torch.Tensor:
    """(2L, 2L) 0/1 mask of [[a.b, a.k], [r.b, r.k]]: i < t in the a rows, i <= t in the r rows."""
    key = ("mask", size, str(device))
    if key not in _CACHE:
        ones = torch.ones(size, size, device=device)
        strict, incl = ones.tril(-1), ones.tril()
        _CACHE[key] = torch.cat([torch.cat([strict, strict], 1), torch.cat([incl, incl], 1)], 0)
    return _CACHE[key]


def _eye(size: int, device) -> torch.Tensor:
    key = ("eye", size, str(device))
    if key not in _CACHE:
        _CACHE[key] = torch.eye(size, device=device)
    return _CACHE[key]


def forward(self, x, prev, wkv_state, v_first):
    """Rwkv7Attention.forward (models/rwkv7.py) with wkv7_train as its state update."""
    return type(self).forward(self, x, prev, wkv_state, v_first, wkv=wkv7_train)


FORWARDS = {"Rwkv7Attention": ("rwkv7", forward)}
