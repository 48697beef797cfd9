"""RWKV-6 "Finch" (Peng et al. 2024, "Eagle and Finch: RWKV with Matrix-Valued States and Dynamic Recurrence")
in archbench's engine.

The model is archbench's own transformers class (models/rwkv6.py; BlinkDL `.pth` files convert through
models/rwkv_convert.py, HF-format `RWKV/v6-Finch-*-HF` directories load by name). `Rwkv6Model.run(ids, state)`
is the whole sequence mixing: prefill runs the chunked wkv6 form (models/wkv6.py) from the batch-1 prefix
state or the zero state, one length at a time so padding never enters a state; `step` is the same code on one
token (the one-token recurrence). State per row and layer: two token-shift vectors (C) and the (H, N, N) fp32
wkv matrix, independent of the context length.
"""
from __future__ import annotations

import torch

from archbench.families import Family
from archbench.families.common import prefill_by_length
from archbench.models.rwkv_state import RwkvState


def kernel(model) -> str:
    return "torch-wkv6-chunked"


def _run(model, ids: torch.Tensor, state: RwkvState) -> tuple[RwkvState, torch.Tensor]:
    """ids (B, T) after `state`; returns (state, (B, V) fp32 logits of the last position)."""
    hidden, state = model.rwkv.run(ids, state)
    return state, model.head(hidden[:, -1]).float()


def prefill(model, seqs, state: RwkvState | None = None) -> tuple[RwkvState, torch.Tensor]:
    """Prefill token lists (or a (B, T) tensor) after an optional batch-1 prefix `state`; rows of equal length
    run together. Returns (state, (B, V) logits of each row's last token)."""
    return prefill_by_length(seqs, state, model.rwkv.empty_state, lambda ids, start: _run(model, ids, start),
                             RwkvState.select, RwkvState.cat, model.head.weight.device)


def step(model, tokens: torch.Tensor, state: RwkvState) -> tuple[RwkvState, torch.Tensor]:
    """One decode step for tokens (B,). Returns (state, (B, V) logits)."""
    return _run(model, tokens[:, None], state)


FAMILY = Family(
    name="rwkv6", model_types=frozenset({"rwkv6"}), color="tab:pink",
    tiny={"tiny-rwkv6": ("Rwkv6Config", dict(hidden_size=128, num_hidden_layers=4, head_size=64,
                                             intermediate_size=448))},
    seed_style="seed-rwkv",
    lora_targets={"*": ["receptance", "key", "value", "gate", "output"]},
    pad_safe=False,  # a padded token would enter the recurrent state; its forward refuses padded masks
    layer_kinds=lambda cfg: ["rwkv6"] * cfg.num_hidden_layers,
    prefill=prefill, step=step, select=RwkvState.select, cat=RwkvState.cat, state_bytes=RwkvState.nbytes,
    kernel=kernel,
)
