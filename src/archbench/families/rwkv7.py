"""RWKV-7 "Goose" (Peng et al. 2025, "RWKV-7 Goose with Expressive Dynamic State Evolution") in archbench's
engine.

The model is archbench's own transformers class (models/rwkv7.py; BlinkDL `.pth` files convert through
models/rwkv_convert.py, fla-hub HF-format directories load as they are). Its `Rwkv7Model.run(ids, state)` is
the engine's whole sequence mixing: prefill runs the chunked parallel wkv7 form (models/wkv7.py) from the
batch-1 prefix state or the zero state, one length at a time so padding never enters a state; `step` is the
same code on one token, which takes the one-token recurrence. State per row and layer: two token-shift
vectors (C) and the (H, N, N) fp32 wkv matrix, independent of the context length.
"""
from __future__ import annotations

import torch

from archbench.families import Family
from archbench.families.common import prefill_by_length
from archbench.models.rwkv7 import Rwkv7State


def kernel(model) -> str:
    return "torch-wkv7-chunked"


def _run(model, ids: torch.Tensor, state: Rwkv7State) -> tuple[Rwkv7State, torch.Tensor]:
    """ids (B, T) after `state`; returns (state, (B, V) fp32 logits of the last position)."""
    hidden, state = model.model.run(ids, state)
    return state, model.lm_head(hidden[:, -1]).float()


def prefill(model, seqs, state: Rwkv7State | None = None) -> tuple[Rwkv7State, torch.Tensor]:
    """Prefill token lists (or a (B, T) tensor) after an optional batch-1 prefix `state`; rows of equal length
    run together. Returns (state, (B, V) logits of each row's last token)."""
    dev = model.lm_head.weight.device
    return prefill_by_length(seqs, state, model.model.empty_state, lambda ids, start: _run(model, ids, start),
                             Rwkv7State.select, Rwkv7State.cat, dev)


def step(model, tokens: torch.Tensor, state: Rwkv7State) -> tuple[Rwkv7State, torch.Tensor]:
    """One decode step for tokens (B,). Returns (state, (B, V) logits)."""
    return _run(model, tokens[:, None], state)


FAMILY = Family(
    name="rwkv7", model_types=frozenset({"rwkv7"}), color="tab:brown",
    tiny={"tiny-rwkv7": ("Rwkv7Config", dict(hidden_size=128, num_hidden_layers=4, head_dim=64,
                                             intermediate_size=512, decay_low_rank_dim=32, a_low_rank_dim=32,
                                             v_low_rank_dim=16, gate_low_rank_dim=32))},
    seed_style="seed-rwkv",
    lora_targets={"*": ["r_proj", "k_proj", "v_proj", "o_proj", "key", "value"]},
    pad_safe=False,  # a padded token would enter the recurrent state; its forward refuses padded masks
    layer_kinds=lambda cfg: ["rwkv7"] * cfg.num_hidden_layers,
    prefill=prefill, step=step, select=Rwkv7State.select, cat=Rwkv7State.cat, state_bytes=Rwkv7State.nbytes,
    kernel=kernel,
)
