"""Decoder-only Transformers (GPT-2, GPT-Neo, GPT-NeoX, Llama, ...): attention with a KV cache.

Reference: Vaswani et al. 2017; transformers' GPT-2 / Llama implementations.

Where archbench's engine (engine.py) runs transformers' own forward (prefill and decode of model types
outside `_LEAN`, and `_LEAN` prefills off CPU fp32), it is called with an explicit left-padded
attention mask, explicit position ids, a `DynamicCache` whose layers write into preallocated buffers
(`Preallocated`: no per-step concatenation of the whole cache), and `logits_to_keep=1` so that the
vocabulary projection runs on the last position only.

Decode of GPT-2 and Llama-style models (`_LEAN`) calls the model's submodules directly (`_gpt2_forward`;
`_llama_forward` on fused weights, `_DecodeLayer`: no mask building, no cache bookkeeping per layer) and,
after a shared prefix, uses cascade attention (as in Hydragen, Juravsky et al. 2024): the prefix keys/values
stay batch-1 and each row keeps only its own suffix in the cache. The prefix scores of every row's queries of
a key head come from one product (the prefix is read once for the batch) and one softmax covers them and the
row's own columns; KV reads per decode step drop from B * (P + S) to P + B * S columns. Without a prefix or
padding (a batch-1 decode, what `archbench bench` times) attention is one fused `scaled_dot_product_attention`
call that reads grouped key heads itself (~25% faster than product + softmax + product on a 2-core EPYC at
129-512 cache columns, equal at 2,049).
On CPU fp32 every prefill of these models runs through the same forward with the rows packed back to back (varlen, as in
FlashAttention-2's variable-length API): the linear layers see only real tokens (no padding), each row's own
causal attention is one call of PyTorch's fused CPU flash kernel, which skips the masked half and returns the
log-sum-exp; after a shared prefix, every query's attention over the batch-1 prefix is one more call of that
kernel (no mask), merged with the own part by log-sum-exp (1.6x faster than oneDNN or MKL products plus a
separate softmax on an AVX2 EPYC, whichever linear path the host uses: the scores stay in cache). The
keys/values are then written to the cache left-padded, as decode reads them. Outputs equal attention over the
concatenated cache. GPT-2's tanh GELU runs as one fused op (`F.gelu(approximate="tanh")`, the same function as
transformers' "gelu_new" in fewer passes). Elsewhere, and for other model types, a prefill goes through
transformers' forward: each batch starts from a copy of the prefix keys/values, shifted right per row so that
every row stays purely left-padded (sliding windows and learned positions see exactly what a batch-1 run
sees); for cascade decode the cache is then cut to the suffix columns.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer

from archbench import fastlinear
from archbench.families import Family
from archbench.families.common import tensor_bytes

SPARE = 128  # free KV columns allocated beyond the tokens written: decode steps before a reallocation
# the fused CPU attention kernel behind F.scaled_dot_product_attention, which also returns the log-sum-exp
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


@dataclass
class State:
    cache: object  # transformers DynamicCache: per layer keys/values (B, kv_heads, W, head_dim)
    mask: torch.Tensor  # (B, W) 1 = real token, 0 = left padding (over prefix + suffix: gives positions)
    ids: list[list[int]]  # prompt token ids per row (a prefix state is re-read from these)
    shared: list | None = None  # cascade: per layer batch-1 prefix (keys, values) (kv_heads, P, head_dim);
    # on a prefix state itself: the same, made from its own cache by `_shared` when rows first continue it
    keep: torch.Tensor | None = None  # own forward: (B, S) 1 = a cache column the row attends to


def kernel(model) -> str:
    lean = "+own-forward+cascade-prefix-attention" if model.config.model_type in _LEAN else ""
    if lean and _cpu_packed(model.device, model.dtype):
        lean += "+packed-prefill"
    return f"transformers-{model.config._attn_implementation}-preallocated-kv{lean}"


class Preallocated(DynamicLayer):
    """A cache layer whose keys/values live in buffers with room to spare: a decode step writes one column
    (transformers' DynamicLayer concatenates the whole cache every step). When full it is reallocated
    with SPARE free columns."""

    def update(self, k: torch.Tensor, v: torch.Tensor, *args, **kwargs):  # k, v (B, H, T, D)
        n = self.get_seq_length()
        if not self.is_initialized or n + k.shape[2] > self.kbuf.shape[2]:
            cap = n + k.shape[2] + SPARE
            kbuf, vbuf = (k.new_empty(*k.shape[:2], cap, k.shape[3]), v.new_empty(*v.shape[:2], cap, v.shape[3]))
            if n:
                kbuf[:, :, :n], vbuf[:, :, :n] = self.keys, self.values
            self.kbuf, self.vbuf, self.is_initialized = kbuf, vbuf, True
        self.kbuf[:, :, n:n + k.shape[2]], self.vbuf[:, :, n:n + k.shape[2]] = k, v
        self.keys, self.values = self.kbuf[:, :, :n + k.shape[2]], self.vbuf[:, :, :n + k.shape[2]]
        return self.keys, self.values

    def batch_select_indices(self, rows: torch.Tensor) -> None:
        n = self.get_seq_length()
        self.kbuf, self.vbuf = self.kbuf[rows], self.vbuf[rows]
        self.keys, self.values = self.kbuf[:, :, :n], self.vbuf[:, :, :n]


def _cache(model):
    """A DynamicCache for `model` whose full-attention layers are `Preallocated` (sliding ones stay)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    cache.layers = [Preallocated() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def _forward(model, ids: torch.Tensor, mask: torch.Tensor, cache) -> torch.Tensor:
    """Run `ids` (B, T) after `cache`; `mask` (B, W+T) covers cache and input. Returns (B, V) fp32 logits
    of the last position."""
    pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1]:]  # (B, T) positions skip the padding
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True,
                logits_to_keep=1)
    return out.logits[:, -1].float()


def _shareable(cache) -> bool:
    return all(not getattr(layer, "is_sliding", False) for layer in cache.layers)


def prefill(model, seqs, state: State | None = None) -> tuple[State, torch.Tensor]:
    """Prefill token lists (or a (B, T) tensor) after an optional batch-1 prefix `state`; each row is
    prefix + seq. Returns the batch state and (B, V) logits of each row's last token."""
    seqs = seqs.tolist() if torch.is_tensor(seqs) else [list(s) for s in seqs]
    dev = model.device
    pre = state.ids[0] if state is not None else []
    if state is not None and not _shareable(state.cache):
        state, seqs = None, [pre + s for s in seqs]  # sliding-window caches are cropped: recompute
        pre = []
    p, smax = len(pre), max(len(s) for s in seqs)
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    pads = torch.tensor([smax - len(s) for s in seqs], device=dev)  # (B,)
    keep = (torch.arange(smax, device=dev)[None] >= pads[:, None]).long()  # (B, S) the rows' own columns
    rows = [pre + s for s in seqs]
    lean = _LEAN.get(model.config.model_type)
    if lean is not None and _cpu_packed(dev, model.dtype):  # packed rows, prefix (if any) stays batch-1
        lens = [len(s) for s in seqs]
        mask = torch.cat([keep.new_ones(len(seqs), p), keep], dim=1)  # pads sit between prefix and suffix
        grown = State(_cache(model), mask, rows, _shared(state) if p else None, keep)
        ids = torch.tensor([[t for s in seqs for t in s]], device=dev)  # (1, N): the rows back to back
        pos = torch.cat([torch.arange(p, p + n, device=dev) for n in lens])[None]  # (1, N)
        return grown, lean(model, ids, pos, grown, lens).float()
    cascade = state is not None and p and lean is not None
    full = torch.tensor([[pad_id] * (smax - len(s)) + pre + s for s in seqs], device=dev)  # (B, P+S)
    mask = (torch.arange(p + smax, device=dev)[None] >= pads[:, None]).long()  # (B, P+S)
    cache = _cache(model)
    if state is not None and p:
        # row r keeps prefix position j - pad_r in cache column j; the input recomputes the prefix tail
        col = (torch.arange(p, device=dev)[None] - pads[:, None]).clamp(min=0)  # (B, P)
        for i, layer in enumerate(state.cache.layers):
            k, v = layer.keys[0][:, col], layer.values[0][:, col]  # (H, B, P, D)
            cache.update(k.transpose(0, 1).contiguous(), v.transpose(0, 1).contiguous(), i)
    logits = _forward(model, full[:, p:] if state is not None else full, mask, cache)
    if not cascade:
        return State(cache, mask, rows), logits
    # cascade decode from here: keep only the suffix columns per row; a row's first pads_r of them hold its
    # recomputed prefix tail, which the shared prefix covers, so they are not kept
    suffix = _cache(model)
    for i, layer in enumerate(cache.layers):
        suffix.update(layer.keys[:, :, p:].contiguous(), layer.values[:, :, p:].contiguous(), i)
    return State(suffix, mask, rows, _shared(state), keep), logits


def _cpu_packed(device: torch.device, dtype: torch.dtype) -> bool:
    """A prefill of a `_LEAN` model runs packed through its own forward (fp32 CPU: oneDNN and the CPU flash
    kernel), after a shared prefix as cascade attention."""
    return fastlinear.available(device, dtype) and _FLASH_CPU is not None


def _shared(prefix: State) -> list:
    """Per layer the batch-1 prefix (keys, values) (Hkv, P, D), taken once per prefix state from its cache."""
    if prefix.shared is None:
        prefix.shared = [(layer.keys[0], layer.values[0]) for layer in prefix.cache.layers]
    return prefix.shared


def _one_softmax(qg, keys, values, seen, shared, scale) -> torch.Tensor:
    """Attention of grouped queries qg (B, Hkv, N, D) over each row's cache columns (B, Hkv, W, D) as
    `seen` (B, 1, N, W) allows (None: all), and over a batch-1 prefix `shared` (read once: every row's
    queries of a key head in one product), one softmax over both. Returns (B, Hkv, N, D)."""
    qg = qg if scale == 1.0 else qg * scale
    s = torch.matmul(qg, keys.transpose(-1, -2))  # (B, Hkv, N, W)
    if seen is not None:
        s.masked_fill_(~seen, -torch.inf)
    if shared is None:
        return torch.matmul(torch.softmax(s, -1), values)
    pk, pv = shared
    b, hkv, n, d = qg.shape
    p = pk.shape[1]
    sp = torch.matmul(qg.transpose(0, 1).reshape(hkv, -1, d), pk.transpose(1, 2))  # (Hkv, B*N, P)
    w = torch.softmax(torch.cat([sp.view(hkv, b, n, p).transpose(0, 1), s], -1), -1)  # (B, Hkv, N, P+W)
    op = torch.matmul(w[..., :p].transpose(0, 1).reshape(hkv, -1, p), pv)  # (Hkv, B*N, D)
    return op.view(hkv, b, n, d).transpose(0, 1) + torch.matmul(w[..., p:], values)


def _packed_attend(q, layer, k, v, shared, lens, scale) -> torch.Tensor:
    """A CPU prefill of rows packed back to back, q (1, Hq, N, D), k, v (1, Hkv, N, D) with N = sum(lens):
    each row's own causal part in PyTorch's fused CPU flash kernel (no padding, the masked half skipped),
    which also returns its log-sum-exp; over a batch-1 prefix `shared`, every query in one more call of that
    kernel (no mask), the two merged by their log-sum-exps. The rows' keys/values go to the cache `layer`
    left-padded, as decode reads them. Returns (1, Hq, N, D)."""
    d = q.shape[-1]
    hkv, smax = k.shape[1], max(lens)
    row = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens))  # (N,) each token's row
    col = torch.cat([torch.arange(smax - m, smax) for m in lens])  # (N,) its column, left padding
    kp, vp = (t.new_zeros(len(lens), smax, hkv, d) for t in (k, v))  # (B, S, Hkv, D)
    kp[row, col], vp[row, col] = k[0].transpose(0, 1), v[0].transpose(0, 1)
    layer.update(kp.transpose(1, 2), vp.transpose(1, 2))
    # one call per row; the kernel reads grouped key heads itself (torch >= 2.9)
    own = [_FLASH_CPU(*parts, 0.0, True, scale=scale) for parts in zip(*(t.split(lens, 2) for t in (q, k, v)))]
    os_, lse = torch.cat([o for o, _ in own], 2), torch.cat([m for _, m in own], 2)  # (1, Hq, N, .)
    if shared is None:
        return os_
    op, lp = _FLASH_CPU(q, shared[0][None], shared[1][None], 0.0, False, scale=scale)  # (1, Hq, N, .)
    lse, lp = lse[..., None], lp[..., None]
    mx = torch.maximum(lse, lp)
    wp, ws = torch.exp(lp - mx), torch.exp(lse - mx)
    return (op * wp + os_ * ws) / (wp + ws)


def _attend(q, layer, k, v, shared, visible, scale, lens=None) -> torch.Tensor:
    """Attention of q (B, Hq, S, D) over each row's cache `layer` (after appending k, v (B, Hkv, S, D)),
    `visible` (B, S, W) saying which cache columns each query sees (None: all), and over all of a batch-1
    prefix `shared` when there is one; with `lens`, a CPU prefill of packed rows (`_packed_attend`). The R
    query heads of a key head are rows of one problem. Returns (B, S, Hq * D)."""
    b, hq, n, d = q.shape
    if lens is not None:
        o = _packed_attend(q, layer, k, v, shared, lens, scale)
    else:
        keys, values = layer.update(k, v)  # (B, Hkv, W, D)
        if visible is None and shared is None:  # decode, no padding, no prefix: one fused call
            o = F.scaled_dot_product_attention(q, keys, values, scale=scale, enable_gqa=True)
        else:
            r = hq // keys.shape[1]
            seen = None if visible is None else visible.repeat(1, r, 1)[:, None]  # (B, 1, R*S, W)
            o = _one_softmax(q.reshape(b, -1, r * n, d), keys, values, seen, shared, scale)
    return o.reshape(b, hq, n, d).transpose(1, 2).reshape(b, n, hq * d)


def _visible(keep: torch.Tensor, n: int) -> torch.Tensor | None:
    """(B, S, W) bool: the last n of the W cache columns are the new queries; each sees the kept columns up
    to its own, and its own always (a pad query then has a finite output, which no kept column passes on).
    None for one new query per row and nothing masked (decode without padding)."""
    if n == 1 and bool(keep.all()):
        return None
    w = keep.shape[1]
    col, row = torch.arange(w, device=keep.device)[None], torch.arange(w - n, w, device=keep.device)[:, None]
    return ((keep[:, None, :] != 0) & (col <= row)) | (col == row)


def _last(x: torch.Tensor, lens: list[int] | None) -> torch.Tensor:
    """(B, d) hidden states of each row's last token: x (B, S, d) left-padded, or (1, N, d) packed."""
    return x[:, -1] if lens is None else x[0, torch.tensor(lens).cumsum(0) - 1]


def _gpt2_forward(model, ids, pos, state, lens=None) -> torch.Tensor:
    tr, d, heads = model.transformer, model.config.n_embd, model.config.n_head
    tanh_gelu = model.config.activation_function in ("gelu_new", "gelu_pytorch_tanh")
    b, n = ids.shape
    x = tr.wte(ids) + tr.wpe(pos)  # (B, S, d)
    visible = _visible(state.keep, n) if lens is None else None
    for block, layer, shared in zip(tr.h, state.cache.layers, state.shared or [None] * len(tr.h)):
        q, k, v = (t.view(b, n, heads, d // heads).transpose(1, 2)
                   for t in block.attn.c_attn(block.ln_1(x)).split(d, dim=-1))  # (B, H, S, D)
        x = x + block.attn.c_proj(_attend(q, layer, k, v, shared, visible, block.attn.scaling, lens))
        x = x + (block.mlp.c_proj(F.gelu(block.mlp.c_fc(block.ln_2(x)), approximate="tanh")) if tanh_gelu
                 else block.mlp(block.ln_2(x)))
    return model.lm_head(tr.ln_f(_last(x, lens)))


def _llama_modules(model, ids, pos, state, lens=None) -> torch.Tensor:
    """`_llama_forward` module by module (a model that accelerate placed: its hooks move inputs per module)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    m = model.model
    b, n = ids.shape
    x = m.embed_tokens(ids)  # (B, S, d)
    cos, sin = m.rotary_emb(x, pos)  # (B, S, head_dim)
    visible = _visible(state.keep, n) if lens is None else None
    for block, layer, shared in zip(m.layers, state.cache.layers, state.shared or [None] * len(m.layers)):
        attn, h = block.self_attn, block.input_layernorm(x)
        q, k, v = (proj(h).view(b, n, -1, attn.head_dim).transpose(1, 2)
                   for proj in (attn.q_proj, attn.k_proj, attn.v_proj))  # (B, H, S, D)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        x = x + attn.o_proj(_attend(q, layer, k, v, shared, visible, attn.scaling, lens))
        x = x + block.mlp(block.post_attention_layernorm(x))
    return model.lm_head(m.norm(_last(x, lens)))


@dataclass
class _DecodeLayer:
    """One Llama-style layer's weights as `_llama_forward` applies them (prefill and decode): q, k and v in one
    product, gate and up in another (fastlinear.Weight: oneDNN with a packed copy where that is this host's
    path for the product's rows). Each RMSNorm's weight is folded into the columns of the product it feeds
    (W diag(g)), and the attention scale into the q rows (rotary embedding is linear, so it commutes), which
    leaves one scale per row where transformers runs ~6 ops per norm."""

    qkv: fastlinear.Weight
    o: fastlinear.Weight
    gate_up: fastlinear.Weight
    down: fastlinear.Weight
    act: object
    eps: tuple[float, float]


def _fused(*mods, scale=None, fold=None) -> fastlinear.Weight:
    """The weights of `mods` (nn.Linear) stacked as one product; `scale` multiplies the first module's rows
    (and bias), `fold` (in,) the columns of all."""
    if len(mods) == 1 and scale is None and fold is None:
        return fastlinear.Weight(mods[0].weight, mods[0].bias)  # the module's own weight, no copy
    ws = [m.weight.detach() for m in mods]
    biases = [m.bias if m.bias is not None else m.weight.new_zeros(m.weight.shape[0]) for m in mods]
    if scale is not None:
        ws[0], biases[0] = ws[0] * scale, biases[0] * scale
    weight = torch.cat(ws) if fold is None else torch.cat(ws) * fold.detach()
    return fastlinear.Weight(weight, None if all(m.bias is None for m in mods) else torch.cat(biases))


def _decode_plan(model) -> list[_DecodeLayer]:
    """The fused per-layer weights of a Llama-style model, built once and cached on the model; built again
    when any weight is replaced or changed in place (the key: every parameter's address and version)."""
    params = model.__dict__.get("_archbench_params") or list(model.model.layers.parameters())
    model.__dict__["_archbench_params"] = params
    key = [(p.data_ptr(), p._version) for p in params]
    cached = model.__dict__.get("_archbench_decode")
    if cached is not None and cached[0] == key:
        return cached[1]
    with torch.no_grad():
        plan = [_DecodeLayer(_fused(a.q_proj, a.k_proj, a.v_proj, scale=a.scaling, fold=b.input_layernorm.weight),
                             _fused(a.o_proj), _fused(b.mlp.gate_proj, b.mlp.up_proj,
                                                      fold=b.post_attention_layernorm.weight),
                             _fused(b.mlp.down_proj), b.mlp.act_fn,
                             (b.input_layernorm.variance_epsilon, b.post_attention_layernorm.variance_epsilon))
                for b, a in ((b, b.self_attn) for b in model.model.layers)]
    model.__dict__["_archbench_decode"] = (key, plan)
    return plan


def _rms_scale(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) over x's last dim: RMSNorm without its weight (folded into the next product);
    PyTorch's rms_norm computes in fp32 for half inputs, as LlamaRMSNorm does (fp16 squares overflow)."""
    return F.rms_norm(x, (x.shape[-1],), None, eps)


def _rope_tables(model, x: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sign-folded sin (B, 1, D) of positions pos (B, 1): rotate_half(t) * sin equals
    t.roll(D / 2) * sin with the first half of sin negated."""
    cos, sin = model.model.rotary_emb(x, pos)  # (B, 1, D)
    half = sin.shape[-1] // 2
    return cos, torch.cat([-sin[..., :half], sin[..., half:]], -1)


def _llama_forward(model, ids, pos, state, lens=None) -> torch.Tensor:
    """A Llama-style forward of ids (B, S) (or packed rows, `lens`) at positions pos on the fused plan, for
    prefill and decode alike: per layer one norm scale, one q/k/v product, the rotary embedding of q and k
    together, attention (the cache write included), the output product with the residual added in it, one norm
    scale, one gate/up product and the down product, again with the residual. Returns (B, V) logits."""
    if getattr(model, "hf_device_map", None):
        return _llama_modules(model, ids, pos, state, lens)
    m, plan = model.model, _decode_plan(model)
    b, n = ids.shape
    hq, hkv = model.config.num_attention_heads, model.config.num_key_value_heads
    d = plan[0].qkv.weight.shape[0] // (hq + 2 * hkv)
    x = m.embed_tokens(ids)  # (B, S, model width)
    cos, sin = (t[:, :, None] for t in _rope_tables(model, x, pos))  # (B, S, 1, D)
    visible = _visible(state.keep, n) if lens is None else None
    for lay, layer, shared in zip(plan, state.cache.layers, state.shared or [None] * len(plan)):
        qkv = lay.qkv(_rms_scale(x, lay.eps[0]))  # (B, S, (Hq + 2 Hkv) D), q already scaled
        qk = qkv[..., :(hq + hkv) * d].view(b, n, hq + hkv, d)
        qk = torch.addcmul(qk * cos, qk.roll(d // 2, -1), sin).transpose(1, 2)  # (B, Hq + Hkv, S, D)
        v = qkv[..., (hq + hkv) * d:].view(b, n, hkv, d).transpose(1, 2)  # (B, Hkv, S, D)
        x = lay.o.add_to(x, _attend(qk[:, :hq], layer, qk[:, hq:], v, shared, visible, 1.0, lens))
        gate, up = lay.gate_up(_rms_scale(x, lay.eps[1])).chunk(2, -1)
        x = lay.down.add_to(x, lay.act(gate).mul_(up))
    return model.lm_head(m.norm(_last(x, lens)))


_LEAN = {"gpt2": _gpt2_forward, "llama": _llama_forward}


def step(model, tokens: torch.Tensor, state: State) -> tuple[State, torch.Tensor]:
    """One decode step: `tokens` (B,) are appended to every row. Returns (state, (B, V) logits)."""
    mask = torch.cat([state.mask, state.mask.new_ones(len(tokens), 1)], dim=1)  # (B, W+1)
    lean = _LEAN.get(model.config.model_type)
    if lean is None:
        return State(state.cache, mask, state.ids), _forward(model, tokens[:, None], mask, state.cache)
    # the cache columns are the mask's, or with a shared prefix the suffix's
    keep = mask if state.shared is None else torch.cat([state.keep, state.keep.new_ones(len(tokens), 1)], dim=1)
    grown = State(state.cache, mask, state.ids, state.shared, keep)
    pos = mask.sum(-1, keepdim=True) - 1  # (B, 1)
    return grown, lean(model, tokens[:, None], pos, grown).float()


def select(state: State, rows: torch.Tensor) -> State:
    """Keep batch rows `rows` (finished sequences leave the batch)."""
    state.cache.batch_select_indices(rows)
    keep = state.keep[rows] if state.keep is not None else None
    return State(state.cache, state.mask[rows], [state.ids[i] for i in rows.tolist()], state.shared, keep)


def state_bytes(state: State) -> int:
    """Bytes of the KV cache tensors (keys and values of every layer; a shared prefix counted once)."""
    shared = [t for kv in state.shared or [] for t in kv]
    return tensor_bytes(shared) + tensor_bytes(t for layer in state.cache.layers for t in (layer.keys, layer.values))


# Decoder-only types whose layers are all attention and whose transformers forward honours a left-padded mask
# and a DynamicCache (GPT-2 and Llama also run through the own forward above).
MODEL_TYPES = frozenset({
    "gpt2", "gpt_neo", "gpt_neox", "gptj", "gpt_bigcode", "codegen", "opt", "bloom", "falcon", "llama", "mistral",
    "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi", "phi3", "gemma", "gemma2", "gemma3_text", "olmo",
    "olmo2", "olmoe", "stablelm", "starcoder2", "granite", "smollm3", "cohere", "persimmon", "helium", "glm",
})
_D = 128  # tiny zoo width; the 49,152-token embedding holds most of the parameters

FAMILY = Family(
    name="transformer", model_types=MODEL_TYPES, color="tab:blue",
    tiny={
        # 16 layers: with 4, the 49,152-row lm_head read dominates a decode step and hides the KV cache's growth
        "tiny-gpt2": ("GPT2Config", dict(n_embd=_D, n_layer=16, n_head=4, n_positions=4096, n_inner=4 * _D)),
        "tiny-gpt-neo": ("GPTNeoConfig", dict(hidden_size=_D, num_layers=4, num_heads=4, max_position_embeddings=4096,
                                              attention_types=[[["global", "local"], 2]], window_size=256)),
        "tiny-llama": ("LlamaConfig", dict(hidden_size=_D, intermediate_size=2 * _D, num_hidden_layers=4,
                                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)),
    },
    seed_style="seed-transformer",
    lora_targets={
        "gpt2": ["c_attn", "c_proj", "c_fc"],
        "gpt_neo": ["q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"],
        "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
        "*": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    },
    pad_safe=True, layer_kinds=lambda cfg: ["attention"] * cfg.num_hidden_layers,
    prefill=prefill, step=step, select=select, cat=None, state_bytes=state_bytes, kernel=kernel,
)
