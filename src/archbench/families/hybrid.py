"""Hybrid decoders: attention layers mixed with Mamba/Mamba-2, short-convolution, linear-attention or gated
delta-rule layers (Jamba, Lieber et al. 2024; Bamba; LFM2; Qwen3-Next; Granite-4.0-H; Nemotron-H; Zamba2; ...).

The layers run through transformers' own forward with its own hybrid cache (`DynamicCache(config=...)`, whose
layers are `DynamicLayer`s with keys/values for attention and `LinearAttentionLayer`s with conv and recurrent
states for the others; transformers' cache_utils.py is the reference for their fields). archbench owns the
batching around it (engine.py's protocol):

- prefill: rows of equal length run together, so no padding ever enters a recurrent layer; every row
  starts from a copy of the batch-1 prefix state (the shared few-shot prefix, computed once), and
  transformers continues a chunked scan from the cached conv/recurrent state;
- the groups' caches are then joined: attention keys/values left-padded to a common width W (a 2D mask marks
  the real columns), recurrent states simply stacked; positions are explicit per row;
- decode: one token per row for the whole batch; a one-token step never carries padding into a recurrent
  state (transformers' `create_recurrent_attention_mask` drops the mask for it, and no row has a pad token);
- select keeps rows (finished rows leave), state_bytes counts keys/values (growing with context) and
  conv/recurrent states (fixed).

Two transformers limitations are worked around, both checked by tests/test_hybrid.py: Jamba's and Zamba's
Mamba-1 scan and MiniMax's lightning attention are wrong for several tokens after a non-empty cache, so after
the prefix those types continue one token at a time (`_STEPWISE`, as their own decode does); and MiniMax's
cache sizes the attention mask from layer 0, so its linear layers get stand-in key columns (`_placeholders`).
MiniMax uses its own `MiniMaxCache`; every other type `DynamicCache(config=...)`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer, LinearAttentionCacheLayerMixin

from archbench.families import Family
from archbench.families.common import prefill_by_length, tensor_bytes
from archbench.families.hybrid_kinds import MODEL_TYPES, TINY, layer_kinds

_REC = ("conv_states", "recurrent_states")  # LinearAttentionLayer: dicts state_idx -> (B, ...) tensors
# types whose multi-token forward in transformers is wrong after a non-empty cache (Jamba's and Zamba's Mamba-1
# `mamba_selective_scan` starts from a zero state, "WRONG if the cache is not empty" in its source; MiniMax's
# lightning attention, measured): after a prefix they continue one token at a time, as their decode does
_STEPWISE = frozenset({"jamba", "zamba", "minimax"})


@dataclass
class State:
    cache: object  # transformers Cache: attention keys/values (B, kv_heads, W, head_dim) left-padded; conv (B, C, K)
    # and recurrent (B, ...) states of the other layers, one row each
    mask: torch.Tensor  # (B, W) long: 1 = a real attention column, 0 = left padding
    pos: torch.Tensor  # (B,) tokens each row has seen (the position of its next token)


def kernel(model) -> str:
    stepwise = "+stepwise-after-prefix" if model.config.model_type in _STEPWISE else ""
    return f"transformers-{model.config._attn_implementation}-hybrid-cache{stepwise}"


def _new_cache(model):
    """An empty cache of the kind transformers' generate builds for `model`."""
    if model.config.model_type == "minimax":
        from transformers.models.minimax.modeling_minimax import MiniMaxCache

        return MiniMaxCache()
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def _has_kv(layer) -> bool:
    return isinstance(layer, DynamicLayer) and layer.is_initialized and layer.keys is not None and layer.keys.dim() == 4


def _copy_layer(layer, kv, rec):
    """A copy of one cache layer with its keys/values mapped by `kv` and its conv/recurrent states by `rec`; its
    bookkeeping dicts are copied (transformers updates them in place)."""
    new = copy.copy(layer)
    for name, value in vars(layer).items():
        if isinstance(value, dict):
            setattr(new, name, dict(value))
    if _has_kv(layer):
        new.keys, new.values = kv(layer.keys), kv(layer.values)
    if isinstance(layer, LinearAttentionCacheLayerMixin):
        for name in _REC:
            setattr(new, name, {i: None if t is None else rec(t) for i, t in getattr(layer, name).items()})
        new.cumulative_length_linear = layer.cumulative_length_linear.clone()
    return new


def _copy_cache(cache, kv, rec):
    new = copy.copy(cache)
    new.layers = [_copy_layer(layer, kv, rec) for layer in cache.layers]
    if hasattr(cache, "linear_cache"):  # MiniMaxCache: per layer (B, heads, d, d) or []
        new.linear_cache = [rec(t) if torch.is_tensor(t) else t for t in cache.linear_cache]
    return new


def select(state: State, rows: torch.Tensor) -> State:
    """Keep batch rows `rows` (finished sequences leave the batch); the kept tensors are new copies."""
    rows = rows.to(state.mask.device)
    pick = lambda t: t.index_select(0, rows)  # noqa: E731
    return State(_copy_cache(state.cache, pick, pick), state.mask[rows], state.pos[rows])


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    """Keys/values (B, H, w, D) -> (B, H, width, D) with zero columns on the left."""
    return F.pad(t, (0, 0, width - t.shape[2], 0)) if t.shape[2] < width else t


def _join_layer(layers: list, width: int):
    """One cache layer holding the rows of `layers` (same class): keys/values left-padded to a common width
    (`width` columns, or up to the window of a sliding layer), recurrent states stacked."""
    new = _copy_layer(layers[0], lambda t: t, lambda t: t)
    if _has_kv(layers[0]):
        w = width if not getattr(new, "is_sliding", False) else min(width, max(lay.keys.shape[2] for lay in layers))
        new.keys = torch.cat([_left_pad(lay.keys, w) for lay in layers])
        new.values = torch.cat([_left_pad(lay.values, w) for lay in layers])
        if hasattr(new, "cumulative_length"):  # sliding layers count every token seen, not only the stored ones
            new.cumulative_length = width
    if isinstance(new, LinearAttentionCacheLayerMixin):
        for name in _REC:
            parts = [getattr(lay, name) for lay in layers]
            setattr(new, name, {i: None if parts[0][i] is None else torch.cat([p[i] for p in parts])
                                for i in parts[0]})
        new.cumulative_length_linear = torch.tensor(width, device=new.cumulative_length_linear.device)
    return new


def cat(states: list[State]) -> State:
    """Join batch states: attention columns right-aligned under a common mask, recurrent states stacked."""
    if len(states) == 1:
        return states[0]
    width = max(s.mask.shape[1] for s in states)
    cache = copy.copy(states[0].cache)
    cache.layers = [_join_layer(list(ls), width) for ls in zip(*(s.cache.layers for s in states))]
    if hasattr(cache, "linear_cache"):
        cache.linear_cache = [torch.cat(ts) if torch.is_tensor(ts[0]) else ts[0]
                              for ts in zip(*(s.cache.linear_cache for s in states))]
    mask = torch.cat([F.pad(s.mask, (width - s.mask.shape[1], 0)) for s in states])
    return State(cache, mask, torch.cat([s.pos for s in states]))


def _placeholders(cache, mask: torch.Tensor) -> None:
    """MiniMaxCache keeps an empty `DynamicLayer` at each linear layer, and transformers sizes the attention mask
    from layer 0: with a linear layer first it would see no past columns and drop the padding mask. Give those
    layers stand-in keys (B, 1, W, 1) of the right column count (not counted by `state_bytes`)."""
    for i in _minimax_linear(cache):
        if i < len(cache.layers):
            empty = mask.new_zeros(mask.shape[0], 1, mask.shape[1], 1, dtype=torch.float32)
            layer = cache.layers[i]
            layer.keys, layer.values, layer.is_initialized = empty, empty, True


def _minimax_linear(cache) -> list[int]:
    """Indices of a MiniMaxCache's linear layers (none for other caches)."""
    return [i for i, t in enumerate(getattr(cache, "linear_cache", [])) if torch.is_tensor(t)]


def _forward(model, ids: torch.Tensor, state: State) -> tuple[State, torch.Tensor]:
    """Run ids (B, T) after `state` (its cache is updated in place). Returns (state, (B, V) fp32 last logits)."""
    _placeholders(state.cache, state.mask)
    mask = torch.cat([state.mask, state.mask.new_ones(ids.shape)], dim=1)  # (B, W + T)
    pos = state.pos[:, None] + torch.arange(ids.shape[1], device=ids.device)  # (B, T)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=state.cache, use_cache=True,
                logits_to_keep=1)
    return State(state.cache, mask, state.pos + ids.shape[1]), out.logits[:, -1].float()


def _fresh(model, n: int) -> State:
    dev = model.get_output_embeddings().weight.device
    return State(_new_cache(model), torch.ones(n, 0, dtype=torch.long, device=dev),
                 torch.zeros(n, dtype=torch.long, device=dev))


def _expand(state: State, rows: torch.Tensor) -> State:
    """Rows of a batch state (copies), e.g. n copies of a batch-1 prefix."""
    return select(state, rows)


def _continue(model, ids: torch.Tensor, state: State) -> tuple[State, torch.Tensor]:
    """ids (B, T) after `state`: in one forward, or token by token where transformers' scan cannot start from a
    cached state (`_STEPWISE`)."""
    if model.config.model_type not in _STEPWISE or state.mask.shape[1] == 0:
        return _forward(model, ids, state)
    for t in range(ids.shape[1]):
        state, logits = _forward(model, ids[:, t:t + 1], state)
    return state, logits


def prefill(model, seqs, state: State | None = None) -> tuple[State, torch.Tensor]:
    """Prefill token lists (or a (B, T) tensor) after an optional batch-1 prefix `state`: rows of equal length
    together, each from a copy of the prefix. Returns (state, (B, V) logits of each row's last token)."""
    dev = model.get_output_embeddings().weight.device
    return prefill_by_length(seqs, state, lambda n: _fresh(model, n),
                             lambda ids, start: _continue(model, ids, start), _expand, cat, dev)


def step(model, tokens: torch.Tensor, state: State) -> tuple[State, torch.Tensor]:
    """One decode step for tokens (B,). Returns (state, (B, V) logits)."""
    return _forward(model, tokens[:, None], state)


def state_bytes(state: State) -> int:
    """Bytes of the attention keys/values (grow with context) and the conv/recurrent states (fixed)."""
    tensors, stand_ins = [], set(_minimax_linear(state.cache))
    for i, layer in enumerate(state.cache.layers):
        if _has_kv(layer) and i not in stand_ins:
            tensors += [layer.keys, layer.values]
        if isinstance(layer, LinearAttentionCacheLayerMixin):
            tensors += [t for name in _REC for t in getattr(layer, name).values() if t is not None]
    tensors += [t for t in getattr(state.cache, "linear_cache", []) if torch.is_tensor(t)]
    return tensor_bytes(tensors)


FAMILY = Family(
    name="hybrid", model_types=MODEL_TYPES, color="tab:purple", tiny=TINY, seed_style="seed-transformer",
    lora_targets={"*": ["q_proj", "k_proj", "v_proj", "o_proj", "in_proj"]},
    pad_safe=False,  # not verified for every type: the hf engine runs hybrids at batch 1
    layer_kinds=layer_kinds, prefill=prefill, step=step, select=select, cat=cat, state_bytes=state_bytes,
    kernel=kernel, lora_refused=frozenset({"out_proj", "conv1d"}),
)
