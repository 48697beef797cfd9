"""RWKV-4 (Peng et al. 2023, "RWKV: Reinventing RNNs for the Transformer Era"), as in transformers.

Linear attention run as an RNN: O(d) state per layer. transformers' RWKV ignores the attention mask,
so its left-padded batches are wrong (the seed study's RWKV-169M garbage).
"""
NAME = "rwkv"
MODEL_TYPES = frozenset({"rwkv"})
PAD_SAFE = False
LORA_TARGETS = {"*": ["key", "value", "receptance", "output"]}
