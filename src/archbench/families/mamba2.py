"""Mamba-2 (Dao & Gu 2024, "Transformers are SSMs": state-space duality).

A scalar-decay SSM per head with a fixed-size state; chunked scan for prefill, recurrence for decode.
"""
NAME = "mamba2"
MODEL_TYPES = frozenset({"mamba2"})
PAD_SAFE = True  # transformers masks padded positions (apply_mask_to_padding_states)
LORA_TARGETS = {"*": ["in_proj"]}
