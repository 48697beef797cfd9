"""RWKV-4 (Peng et al. 2023, "RWKV: Reinventing RNNs for the Transformer Era"), as in transformers.

Linear attention run as an RNN: O(d) state per layer. transformers' RWKV ignores the attention mask,
so its left-padded batches are wrong (the seed study's RWKV-169M garbage).

Engine functions (engine.py) read the weights of transformers' `RwkvForCausalLM` (RwkvSelfAttention,
RwkvFeedForward and `rwkv_linear_attention_cpu` are the reference). Time mixing with token shift, then

    wkv_t = (sum_{i<t} e^{w(t-1-i) + k_i} v_i + e^{u + k_t} v_t) / (same without v),  w = -exp(time_decay)

computed a chunk of Q positions at a time: the (Q, Q) pairwise exponents plus the carried state's term
e^{w t + p} are shifted by their running maximum before exp (the paper's numerically stable form), and the
state (num, den, p) with real value num * e^p is carried across chunks. Channel mixing is the squared-ReLU
MLP. Decode is the same code on a chunk of one token. Rows are never padded: equal-length rows run together.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from archbench.families import Family
from archbench.families.common import prefill_by_length, tensor_bytes

CHUNK = 32  # positions per WKV chunk: memory ~ B * CHUNK^2 * attention_hidden_size floats


@dataclass
class State:
    att_x: list[torch.Tensor]  # per layer (B, hidden): last ln1 output (token shift of time mixing)
    ffn_x: list[torch.Tensor]  # per layer (B, hidden): last ln2 output (token shift of channel mixing)
    num: list[torch.Tensor]  # per layer (B, att) fp32
    den: list[torch.Tensor]  # per layer (B, att) fp32
    p: list[torch.Tensor]  # per layer (B, att) fp32: log scale of num and den


def kernel(model) -> str:
    return "torch-wkv-chunked"


def wkv(w, u, k, v, num, den, p):
    """w, u (A,); k, v (B, T, A) fp32; state (B, A) each. Returns (wkv (B, T, A), num, den, p)."""
    out = []
    for s in range(0, k.shape[1], CHUNK):
        kq, vq = k[:, s:s + CHUNK], v[:, s:s + CHUNK]
        q = kq.shape[1]
        t = torch.arange(q, device=k.device, dtype=k.dtype)
        pair = t[:, None] - t[None, :]  # (Q_t, Q_i): t - i
        e = torch.where((pair > 0)[None, :, :, None], (pair - 1)[None, :, :, None] * w + kq[:, None],
                        torch.where((pair == 0)[None, :, :, None], u + kq[:, None], -torch.inf))  # (B, Q, Q, A)
        carried = p[:, None] + t[None, :, None] * w  # (B, Q, A): the state's term e^{w t + p}
        m = torch.maximum(e.amax(dim=2), carried)  # (B, Q, A)
        e, c = torch.exp(e - m[:, :, None]), torch.exp(carried - m)
        out.append(((e * vq[:, None]).sum(2) + c * num[:, None]) / (e.sum(2) + c * den[:, None]))
        last = (q - 1 - t)[None, :, None] * w + kq  # (B, Q, A): exponents of the state after the chunk
        p_new = torch.maximum(last.amax(1), p + q * w)
        el, c = torch.exp(last - p_new[:, None]), torch.exp(p + q * w - p_new)
        num, den, p = (el * vq).sum(1) + c * num, el.sum(1) + c * den, p_new
    return torch.cat(out, dim=1), num, den, p


def _block(block, x, i: int, st: State, new: State):
    """One RWKV block over x (B, T, hidden) from layer state i of `st`; appends layer i to `new`."""
    att, ffn = block.attention, block.feed_forward
    h = block.ln1(x)
    sh = torch.cat([st.att_x[i][:, None], h[:, :-1]], dim=1)  # token shift
    k = att.key(h * att.time_mix_key + sh * (1 - att.time_mix_key)).float()
    v = att.value(h * att.time_mix_value + sh * (1 - att.time_mix_value)).float()
    r = torch.sigmoid(att.receptance(h * att.time_mix_receptance + sh * (1 - att.time_mix_receptance)))
    y, num, den, p = wkv(-torch.exp(att.time_decay.float()), att.time_first.float(), k, v,
                         st.num[i], st.den[i], st.p[i])
    x = x + att.output(r * y.to(x.dtype))
    new.att_x.append(h[:, -1])
    new.num.append(num)
    new.den.append(den)
    new.p.append(p)
    h = block.ln2(x)
    sh = torch.cat([st.ffn_x[i][:, None], h[:, :-1]], dim=1)
    k = torch.square(torch.relu(ffn.key(h * ffn.time_mix_key + sh * (1 - ffn.time_mix_key))))
    gate = torch.sigmoid(ffn.receptance(h * ffn.time_mix_receptance + sh * (1 - ffn.time_mix_receptance)))
    x = x + gate * ffn.value(k)
    new.ffn_x.append(h[:, -1])
    return x


def _run(model, ids: torch.Tensor, state: State) -> tuple[State, torch.Tensor]:
    """ids (B, T) after `state`; returns (state, (B, V) logits of the last position)."""
    rw = model.rwkv
    if not rw.layers_are_rescaled:  # what transformers' eval forward does first: halve late layers' outputs
        rw._rescale_layers()
    x = rw.embeddings(ids)
    new = State([], [], [], [], [])
    for i, block in enumerate(rw.blocks):
        if i == 0:
            x = block.pre_ln(x)
        x = _block(block, x, i, state, new)
        if rw.layers_are_rescaled and rw.config.rescale_every > 0 and (i + 1) % rw.config.rescale_every == 0:
            x = x / 2
    return new, model.head(rw.ln_out(x[:, -1])).float()


def _empty(model, n: int, dev) -> State:
    cfg = model.config
    att = cfg.attention_hidden_size or cfg.hidden_size
    zeros = [torch.zeros(n, cfg.hidden_size, device=dev, dtype=model.dtype) for _ in range(cfg.num_hidden_layers)]
    f32 = [torch.zeros(n, att, device=dev) for _ in range(cfg.num_hidden_layers)]
    return State(zeros, list(zeros), f32, list(f32), [z - 1e38 for z in f32])


def prefill(model, seqs, state: State | None = None) -> tuple[State, torch.Tensor]:
    """Prefill token lists (or a (B, T) tensor) after an optional batch-1 prefix `state`. Rows of equal
    length run together, so padding never enters a state. Returns (state, (B, V) last logits)."""
    dev = model.head.weight.device
    return prefill_by_length(seqs, state, lambda n: _empty(model, n, dev),
                                      lambda ids, start: _run(model, ids, start), select, cat, dev)


def step(model, tokens: torch.Tensor, state: State) -> tuple[State, torch.Tensor]:
    """One decode step for tokens (B,): the chunked code on a chunk of one. Returns (state, (B, V) logits)."""
    return _run(model, tokens[:, None], state)


def select(state: State, rows: torch.Tensor) -> State:
    rows = rows.to(state.num[0].device)
    return State(*([t[rows] for t in f] for f in (state.att_x, state.ffn_x, state.num, state.den, state.p)))


def cat(states: list[State]) -> State:
    fields = ("att_x", "ffn_x", "num", "den", "p")
    return State(*([torch.cat(t) for t in zip(*(getattr(s, f) for s in states))] for f in fields))


def state_bytes(state: State) -> int:
    return tensor_bytes(t for f in (state.att_x, state.ffn_x, state.num, state.den, state.p) for t in f)


FAMILY = Family(
    name="rwkv", model_types=frozenset({"rwkv"}), color="tab:red",
    tiny={"tiny-rwkv": ("RwkvConfig", dict(hidden_size=128, num_hidden_layers=4, attention_hidden_size=128,
                                           intermediate_size=512, context_length=4096))},
    seed_style="seed-rwkv", lora_targets={"*": ["key", "value", "receptance", "output"]},
    pad_safe=False,  # transformers' RWKV ignores the attention mask: its padded batches are wrong
    layer_kinds=lambda cfg: ["rwkv"] * cfg.num_hidden_layers,
    prefill=prefill, step=step, select=select, cat=cat, state_bytes=state_bytes, kernel=kernel,
)
