"""Decoder-only Transformers (GPT-2, GPT-Neo, GPT-NeoX, Llama, ...): attention with a KV cache.

Reference: Vaswani et al. 2017; transformers' GPT-2 / Llama implementations.
"""
NAME = "transformer"
MODEL_TYPES = frozenset()  # catch-all: every decoder-only type not owned by a recurrent family
PAD_SAFE = True
LORA_TARGETS = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neo": ["q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "*": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
