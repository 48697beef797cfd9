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

from archbench.families.common import rwkv_family

TINY = {"tiny-rwkv7": ("Rwkv7Config", dict(hidden_size=128, num_hidden_layers=4, head_dim=64, intermediate_size=512,
                                            decay_low_rank_dim=32, a_low_rank_dim=32, v_low_rank_dim=16,
                                            gate_low_rank_dim=32))}  # untrained zoo model
FAMILY = rwkv_family("rwkv7", "tab:brown", TINY, lora_targets=["r_proj", "k_proj", "v_proj", "o_proj", "key", "value"])
