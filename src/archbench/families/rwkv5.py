"""RWKV-5 "Eagle" (Peng et al. 2024, "Eagle and Finch: RWKV with Matrix-Valued States and Dynamic Recurrence")
in archbench's engine.

The model is archbench's own transformers class (models/rwkv5.py; BlinkDL v5.2 `.pth` files convert through
models/rwkv_convert.py, HF-format `RWKV/rwkv-5-world-*` directories load by name without their remote code, their
world tokenizer included). `Rwkv5Model.run(ids, state)` is the whole sequence mixing: prefill runs the chunked
wkv6 form with RWKV-5's static per-channel decay (models/rwkv5.py `wkv5`) from the batch-1 prefix state or the
zero state, one length at a time so padding never enters a state; `step` is the same code on one token (the
one-token recurrence). State per row and layer: two token-shift vectors (C) and the (H, N, N) fp32 wkv matrix,
independent of the context length.
"""
from __future__ import annotations

from archbench.families import Family
from archbench.families.common import rwkv_prefill, rwkv_step
from archbench.models.rwkv_state import RwkvState


def kernel(model) -> str:
    return "torch-wkv5-chunked"


FAMILY = Family(
    name="rwkv5", model_types=frozenset({"rwkv5"}), color="tab:olive",
    tiny={"tiny-rwkv5": ("Rwkv5Config", dict(hidden_size=128, num_hidden_layers=4, head_size=64,
                                             intermediate_size=448))},
    seed_style="seed-rwkv",
    lora_targets={"*": ["receptance", "key", "value", "gate", "output"]},
    pad_safe=False,  # a padded token would enter the recurrent state; its forward refuses padded masks
    layer_kinds=lambda cfg: ["rwkv5"] * cfg.num_hidden_layers,
    prefill=rwkv_prefill, step=rwkv_step, select=RwkvState.select, cat=RwkvState.cat, state_bytes=RwkvState.nbytes,
    kernel=kernel,
)
