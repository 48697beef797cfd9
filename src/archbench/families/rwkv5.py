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

from archbench.families.common import rwkv_family

TINY = {"tiny-rwkv5": ("Rwkv5Config", dict(hidden_size=128, num_hidden_layers=4, head_size=64,
                                            intermediate_size=448))}  # untrained zoo model
FAMILY = rwkv_family("rwkv5", "tab:olive", TINY, lora_targets=["receptance", "key", "value", "gate", "output"])
