"""What archbench knows about each hybrid decoder type of transformers: the kind of each layer, read from the
config (Jamba's `layers_block_type`, LFM2's / Qwen3-Next's `layer_types`, ...), and a tiny random-init
configuration of every type the hybrid family has been checked on (tests/test_hybrid.py builds them all; the
zoo holds a few as `tiny-*`).
"""
from __future__ import annotations

# the non-attention mixer of each type, named as archbench reports it
RECURRENT = {
    "jamba": "mamba", "zamba": "mamba",
    "bamba": "mamba2", "granitemoehybrid": "mamba2", "nemotron_h": "mamba2", "zamba2": "mamba2", "falcon_h1": "mamba2",
    "lfm2": "conv", "lfm2_moe": "conv",
    "qwen3_next": "linear_attention", "olmo_hybrid": "linear_attention", "kimi_linear": "linear_attention",
    "minimax": "linear_attention", "lfm3": "conv", "qwen3_5_text": "linear_attention",
    "qwen3_5_moe_text": "linear_attention", "lara_mini": "linear_attention",
}
MODEL_TYPES = frozenset(RECURRENT)

_ATT = dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, intermediate_size=256,
            max_position_embeddings=4096)
_M2 = dict(mamba_n_heads=8, mamba_d_head=32, mamba_n_groups=1, mamba_d_state=16, mamba_chunk_size=64)
_LIN = dict(linear_conv_kernel_dim=4, linear_key_head_dim=32, linear_value_head_dim=32, linear_num_key_heads=2,
            linear_num_value_heads=4)
_PAT = ["linear_attention", "full_attention", "linear_attention", "full_attention"]
_CONV = ["conv", "full_attention", "conv", "full_attention"]
_ZAMBA = ["mamba", "hybrid", "mamba", "hybrid"]  # "hybrid": the shared attention block runs before the mamba layer

# model_type -> (transformers config class, kwargs): width 128, a few layers mixing both kinds
SPECS = {
    "jamba": ("JambaConfig", _ATT | dict(
        num_hidden_layers=4, attn_layer_period=2, attn_layer_offset=1, num_experts=1, expert_layer_period=1,
        expert_layer_offset=0, mamba_d_state=16, mamba_dt_rank=8, use_mamba_kernels=False)),
    "zamba": ("ZambaConfig", _ATT | dict(
        num_hidden_layers=4, attention_hidden_size=256, attention_head_dim=64, n_mamba_heads=2,
        layers_block_type=_ZAMBA, mamba_d_state=16, mamba_dt_rank=8, use_mamba_kernels=False)),
    "bamba": ("BambaConfig", _ATT | _M2 | dict(num_hidden_layers=4, attn_layer_indices=[1, 3])),
    "granitemoehybrid": ("GraniteMoeHybridConfig", _ATT | _M2 | dict(
        num_hidden_layers=4, layer_types=["mamba", "attention", "mamba", "attention"], num_local_experts=0,
        shared_intermediate_size=256, position_embedding_type="rope")),
    "nemotron_h": ("NemotronHConfig", _ATT | dict(
        layers_block_type=["mamba", "attention", "mlp", "mamba"], head_dim=32, mamba_num_heads=8, mamba_head_dim=32,
        ssm_state_size=16, n_groups=1, chunk_size=64, use_mamba_kernels=False)),
    "falcon_h1": ("FalconH1Config", _ATT | _M2 | dict(num_hidden_layers=2, mamba_d_ssm=256)),
    "zamba2": ("Zamba2Config", _ATT | dict(
        num_hidden_layers=4, layers_block_type=_ZAMBA, mamba_d_state=16, n_mamba_heads=8, mamba_ngroups=1,
        chunk_size=64, use_mamba_kernels=False)),
    "lfm2": ("Lfm2Config", _ATT | dict(num_hidden_layers=4, layer_types=_CONV, block_auto_adjust_ff_dim=False)),
    "lfm2_moe": ("Lfm2MoeConfig", _ATT | dict(
        num_hidden_layers=4, layer_types=_CONV, num_dense_layers=4, moe_intermediate_size=64, num_experts=2,
        num_experts_per_tok=1)),
    "lfm3": ("Lfm3Config", _ATT | dict(
        num_hidden_layers=4, layer_types=["conv", "full_attention", "conv", "sliding_attention"], sliding_window=8)),
    "qwen3_next": ("Qwen3NextConfig", _ATT | _LIN | dict(
        num_hidden_layers=4, layer_types=_PAT, head_dim=32, num_experts=0, mlp_only_layers=[0, 1, 2, 3])),
    "qwen3_5_text": ("Qwen3_5TextConfig", _ATT | _LIN | dict(num_hidden_layers=4, layer_types=_PAT, head_dim=32)),
    "qwen3_5_moe_text": ("Qwen3_5MoeTextConfig", _ATT | _LIN | dict(
        num_hidden_layers=4, layer_types=_PAT, head_dim=32, num_experts=2, num_experts_per_tok=1,
        moe_intermediate_size=64, shared_expert_intermediate_size=64)),
    "lara_mini": ("LaraMiniConfig", _ATT | _LIN | dict(
        num_hidden_layers=4, head_dim=32, sliding_window=8,
        layer_types=["linear_attention", "sliding_attention", "linear_attention", "full_attention"])),
    "olmo_hybrid": ("OlmoHybridConfig", _ATT | _LIN | dict(num_hidden_layers=4, layer_types=_PAT)),
    "kimi_linear": ("KimiLinearConfig", _ATT | dict(
        num_key_value_heads=4, num_hidden_layers=4, layer_types=_PAT, mlp_layer_types=["dense"] * 4,
        linear_head_dim=32, linear_num_heads=4, kv_lora_rank=32, q_lora_rank=None, qk_rope_head_dim=16,
        qk_nope_head_dim=16, v_head_dim=32, moe_intermediate_size=64, num_local_experts=2, num_experts_per_tok=1)),
    "minimax": ("MiniMaxConfig", _ATT | dict(
        num_hidden_layers=4, layer_types=_PAT, head_dim=32, num_local_experts=2, num_experts_per_tok=1, block_size=16)),
}
TINY = {"tiny-jamba": SPECS["jamba"], "tiny-bamba": SPECS["bamba"], "tiny-lfm2": SPECS["lfm2"]}


def _kind(raw: str, recurrent: str) -> str:
    """One config entry ("attention", "full_attention", "mamba", "conv", "hybrid", "mlp", "M", "*", ...) -> kind."""
    raw = str(raw).lower()
    if raw in ("hybrid", "hybrid_sliding"):  # a shared attention block beside the layer's own mixer (Zamba)
        return f"attention+{recurrent}"
    if raw in ("mlp", "moe", "-", "e", "dummy"):
        return "mlp"
    if "attention" in raw and "linear" not in raw or raw in ("*", "a", "attn", "full", "sliding"):
        return "attention"
    return recurrent


def layer_kinds(cfg) -> list[str]:
    """Each layer's kind from the config: "attention", "mamba", "mamba2", "conv", "linear_attention", "mlp", or
    "attention+<mixer>" for a layer that runs both (Falcon-H1's parallel heads, Zamba's shared block)."""
    cfg = cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg
    recurrent = RECURRENT.get(cfg.model_type, "recurrent")
    if cfg.model_type == "falcon_h1":  # attention and Mamba-2 heads side by side in every layer
        return [f"attention+{recurrent}"] * cfg.num_hidden_layers
    for key in ("layers_block_type", "layer_types", "block_types", "hybrid_override_pattern"):
        raw = getattr(cfg, key, None)
        if raw:
            raw = list(raw)[: cfg.num_hidden_layers] if key != "block_types" else \
                [raw[i % len(raw)] for i in range(cfg.num_hidden_layers)]
            return [_kind(r, recurrent) for r in raw]
    raise ValueError(f"model_type {cfg.model_type!r}: the config names no per-layer types")
