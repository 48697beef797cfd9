"""Decoder-only Transformers (GPT-2, GPT-Neo, GPT-NeoX, Llama, ...): attention with a KV cache.

Reference: Vaswani et al. 2017; transformers' GPT-2 / Llama implementations.

For archbench's engine (engine.py) the forward pass is transformers' own model, called with an explicit
left-padded attention mask, explicit position ids, a `DynamicCache` whose layers write into preallocated
buffers (`Preallocated`: no per-step concatenation of the whole cache), and
`logits_to_keep=1` so that the vocabulary projection runs on the last position only.

Decode of GPT-2 and Llama-style models (`_LEAN`) calls the model's submodules directly (no mask building,
no cache bookkeeping per layer), and after a shared prefix uses cascade attention (as in Hydragen,
Juravsky et al. 2024): the prefix keys/values stay batch-1 and are read once per step for the whole batch,
each row keeps only its own suffix in the cache, and the two partial softmaxes are merged by their
log-sum-exp. Outputs equal attention over the concatenated cache; KV reads per step drop from
B * (P + S) to P + B * S columns. Other model types decode through transformers' forward. A shared prompt
prefix is prefilled once (batch 1); each batch starts from a copy of its keys/values, shifted right per
row so that every row stays purely left-padded (pads never sit between prefix and suffix, so sliding
windows and learned positions see exactly what a batch-1 run sees).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicLayer

NAME = "transformer"
MODEL_TYPES = frozenset()  # catch-all: every decoder-only type not owned by a recurrent family
PAD_SAFE = True
SPARE = 128  # free KV columns allocated beyond the tokens written: decode steps before a reallocation
LORA_TARGETS = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neo": ["q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "*": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


@dataclass
class State:
    cache: object  # transformers DynamicCache: per layer keys/values (B, kv_heads, W, head_dim)
    mask: torch.Tensor  # (B, W) 1 = real token, 0 = left padding (over prefix + suffix: gives positions)
    ids: list[list[int]]  # prompt token ids per row (a prefix state is re-read from these)
    shared: list | None = None  # cascade decode: per layer batch-1 prefix (keys, values) (kv_heads, P, head_dim)
    keep: torch.Tensor | None = None  # cascade decode: (B, S) 1 = a suffix column the row attends to


def kernel(model) -> str:
    lean = "+own-decode-step+cascade-prefix" if model.config.model_type in _LEAN else ""
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
    full = torch.tensor([[pad_id] * (smax - len(s)) + pre + s for s in seqs], device=dev)  # (B, P+S)
    mask = (torch.arange(p + smax, device=dev)[None] >= pads[:, None]).long()  # (B, P+S)
    cache = _cache(model)
    if state is not None and p:
        # row r keeps prefix position j - pad_r in cache column j; the input recomputes the prefix tail
        col = (torch.arange(p, device=dev)[None] - pads[:, None]).clamp(min=0)  # (B, P)
        for i, layer in enumerate(state.cache.layers):
            k, v = layer.keys[0][:, col], layer.values[0][:, col]  # (H, B, P, D)
            cache.update(k.transpose(0, 1).contiguous(), v.transpose(0, 1).contiguous(), i)
        ids = full[:, p:]
    else:
        ids = full
    logits = _forward(model, ids, mask, cache)
    rows = [pre + s for s in seqs]
    if state is None or not p or model.config.model_type not in _LEAN:
        return State(cache, mask, rows), logits
    # cascade: keep the prefix once (batch 1) and only the suffix columns per row; a row's first pads_r
    # suffix columns hold its recomputed prefix tail, already covered by the shared prefix
    shared = [(layer.keys[0], layer.values[0]) for layer in state.cache.layers]
    suffix = _cache(model)
    for i, layer in enumerate(cache.layers):
        suffix.update(layer.keys[:, :, p:].contiguous(), layer.values[:, :, p:].contiguous(), i)
    keep = (torch.arange(smax, device=dev)[None] >= pads[:, None]).long()  # (B, S)
    return State(suffix, mask, rows, shared, keep), logits


def _softmax_parts(q, keys, values, scale, keep=None):
    """Unnormalised attention of grouped queries q (G, N, R, D) over keys/values (G, N, T, D): returns the
    weighted values (G, N, R, D), the weight sums and the score maxima (G, N, R, 1). keep (N, T) masks keys."""
    s = torch.matmul(q, keys.transpose(-1, -2)) * scale  # (G, N, R, T)
    if keep is not None:
        s = s.masked_fill(keep[:, None, None, :] == 0, -torch.inf)
    m = s.amax(-1, keepdim=True)
    e = torch.exp(s - m)
    return torch.matmul(e, values), e.sum(-1, keepdim=True), m


def _attend(q, layer, k, v, shared, keep, scale) -> torch.Tensor:
    """Attention of q (B, Hq, D) over each row's cache `layer` (after appending k, v (B, Hkv, D)) and, when
    `shared` is a batch-1 prefix (keys, values) (Hkv, P, D), over that prefix too, the two partial softmaxes
    merged by log-sum-exp. keep (B, S) masks cache columns. Returns (B, Hq * D)."""
    b, hq, d = q.shape
    keys, values = layer.update(k[:, :, None], v[:, :, None])  # (B, Hkv, S, D)
    hkv = keys.shape[1]
    qg = q.view(b, hkv, hq // hkv, d)  # (B, Hkv, R, D): query heads grouped by their key head
    o, l, m = _softmax_parts(qg, keys, values, scale, keep)  # each row over its own columns
    if shared is not None:  # prefix: every row and query head of a group in one matmul, reading it once
        pq = qg.permute(1, 0, 2, 3).reshape(hkv, 1, -1, d)  # (Hkv, 1, B*R, D)
        op, lp, mp = (t.view(hkv, b, -1, t.shape[-1]).permute(1, 0, 2, 3)  # (B, Hkv, R, .)
                      for t in _softmax_parts(pq, shared[0][:, None], shared[1][:, None], scale))
        mx = torch.maximum(m, mp)
        wp, ws = torch.exp(mp - mx), torch.exp(m - mx)
        o, l = op * wp + o * ws, lp * wp + l * ws
    return (o / l).reshape(b, hq * d)


def _gpt2_step(model, tokens, pos, state) -> torch.Tensor:
    tr, d, heads = model.transformer, model.config.n_embd, model.config.n_head
    x = tr.wte(tokens) + tr.wpe(pos)  # (B, d)
    for block, layer, shared in zip(tr.h, state.cache.layers, state.shared or [None] * len(tr.h)):
        q, k, v = (t.view(len(x), heads, d // heads) for t in block.attn.c_attn(block.ln_1(x)).split(d, dim=-1))
        x = x + block.attn.c_proj(_attend(q, layer, k, v, shared, state.keep, block.attn.scaling))
        x = x + block.mlp(block.ln_2(x))
    return model.lm_head(tr.ln_f(x))


def _llama_step(model, tokens, pos, state) -> torch.Tensor:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    m = model.model
    x = m.embed_tokens(tokens)  # (B, d)
    cos, sin = m.rotary_emb(x[:, None], pos[:, None])  # (B, 1, head_dim)
    for block, layer, shared in zip(m.layers, state.cache.layers, state.shared or [None] * len(m.layers)):
        attn, h = block.self_attn, block.input_layernorm(x)
        q, k, v = (proj(h).view(len(x), -1, 1, attn.head_dim) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
        q, k = apply_rotary_pos_emb(q, k, cos, sin)  # (B, H, 1, D)
        x = x + attn.o_proj(_attend(q[:, :, 0], layer, k[:, :, 0], v[:, :, 0], shared, state.keep, attn.scaling))
        x = x + block.mlp(block.post_attention_layernorm(x))
    return model.lm_head(m.norm(x))


_LEAN = {"gpt2": _gpt2_step, "llama": _llama_step}


def step(model, tokens: torch.Tensor, state: State) -> tuple[State, torch.Tensor]:
    """One decode step: `tokens` (B,) are appended to every row. Returns (state, (B, V) logits)."""
    mask = torch.cat([state.mask, state.mask.new_ones(len(tokens), 1)], dim=1)  # (B, W+1)
    lean = _LEAN.get(model.config.model_type)
    if lean is None:
        return State(state.cache, mask, state.ids), _forward(model, tokens[:, None], mask, state.cache)
    # the cache columns are the mask's, or with a shared prefix the suffix's
    keep = mask if state.shared is None else torch.cat([state.keep, state.keep.new_ones(len(tokens), 1)], dim=1)
    grown = State(state.cache, mask, state.ids, state.shared, keep)
    return grown, lean(model, tokens, mask.sum(-1) - 1, grown).float()


def select(state: State, rows: torch.Tensor) -> State:
    """Keep batch rows `rows` (finished sequences leave the batch)."""
    state.cache.batch_select_indices(rows)
    keep = state.keep[rows] if state.keep is not None else None
    return State(state.cache, state.mask[rows], [state.ids[i] for i in rows.tolist()], state.shared, keep)


def state_bytes(state: State) -> int:
    """Bytes of the KV cache tensors (keys and values of every layer; a shared prefix counted once)."""
    shared = [t for kv in state.shared or [] for t in kv]
    return sum(t.numel() * t.element_size() for t in shared) + sum(
        t.numel() * t.element_size() for layer in state.cache.layers for t in (layer.keys, layer.values)
        if t is not None)
