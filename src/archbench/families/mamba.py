"""Mamba (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces").

A selective SSM: a fixed-size state per sequence (conv window + SSM state), no KV cache.
"""
NAME = "mamba"
MODEL_TYPES = frozenset({"mamba", "falcon_mamba"})
PAD_SAFE = True  # transformers zeroes padded positions before the conv and the scan
LORA_TARGETS = {"*": ["in_proj", "x_proj", "dt_proj"]}
