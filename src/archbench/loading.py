"""Load a model by name: a zoo alias, a local Hugging Face directory, a `.gguf` file, or a hub id.

Every source goes through the same `from_pretrained` call; zoo models are local directories. The family
comes from the config's `model_type` (families/__init__.py). Optionally applies a PEFT LoRA adapter.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from archbench import families, zoo

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelError(ValueError):
    """A model name that cannot be loaded; the message is one line."""


@dataclass
class LM:
    """A loaded model with what the rest of archbench needs to know about it."""

    name: str  # what the user typed (alias, path or hub id); with an adapter: "name+adapter"
    source: str  # resolved local path or hub id
    family: str
    model_type: str
    model: torch.nn.Module
    tokenizer: object
    params: int  # parameters of the base model (adapters excluded)
    device: torch.device
    dtype: torch.dtype
    untrained: bool  # random-init zoo model
    max_len: int | None  # context window in tokens; None without attention layers (no positional limit)
    adapter: str | None = None
    layers: str | None = None  # the layer mix, e.g. "2 attention + 6 mamba2" (families.layer_mix)
    remote_code: bool = False  # the model's classes are its repo's own code (--trust-remote-code)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def resolve(name: str) -> tuple[str, dict]:
    """Map a model name to (path or hub id, extra from_pretrained kwargs)."""
    if zoo.is_zoo(name):
        return str(zoo.ensure(name)), {}
    path = Path(name).expanduser()
    if path.suffix == ".pth":  # BlinkDL's native RWKV-6/7 checkpoints: converted once, cached
        from archbench.models import rwkv_convert

        try:
            return str(rwkv_convert.cached(path, zoo.cache_dir())), {}
        except rwkv_convert.PthError as err:
            raise ModelError(f"model {name!r}: {err}") from None
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"model {name!r}: GGUF file not found")
        return str(path.parent), {"gguf_file": path.name}
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"model {name!r}: directory has no config.json")
        return str(path), {}
    if name.startswith((".", "/", "~")) or path.suffix in (".json", ".safetensors", ".bin"):
        raise ModelError(f"model {name!r}: no such file or directory")
    return name, {}  # a hub id


def load(name: str, *, device: str = "cpu", dtype: str = "float32", adapter: str | None = None,
         device_map: str | None = None, trust_remote_code: bool = False) -> LM:
    """Load model `name` (+ optional LoRA `adapter` directory) for inference; `device_map` ("auto") lets
    accelerate place its layers over this node's devices (big-model inference) instead of `device`;
    `trust_remote_code` lets transformers run the classes a repo ships (`auto_map`) instead of its own or
    archbench's (such a model runs only on `--engine hf`: archbench's engine knows neither)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import archbench.models  # noqa: F401  registers archbench's own model types (rwkv5/6/7) with transformers
    from archbench.models import rwkv_world

    if dtype not in DTYPES:
        raise ModelError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    source, extra = resolve(name)
    try:
        remote = {"trust_remote_code": True} if trust_remote_code else {}
        tokenizer = None if extra or remote else rwkv_world.for_remote_code(source)  # hub RWKV repos' class
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(source, **extra, **remote)
        placed = {"device_map": device_map} if device_map else {}
        model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype], **placed, **extra, **remote)
    except (OSError, ValueError) as err:  # hub errors subclass OSError
        where = "the hub is offline (HF_HUB_OFFLINE=1)" if _offline() else "it could not be fetched"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"model {name!r}: not a zoo alias or local path, and {where}: {first[:160]}. "
                         f"Offline zoo: {', '.join(zoo.names())}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    params = sum(p.numel() for p in model.parameters())
    if adapter is not None:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").exists():
            raise ModelError(f"--adapter {adapter!r}: no adapter_config.json there")
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    if device_map:  # inputs go where the embedding is; accelerate's hooks move activations layer to layer
        device = str(model.get_input_embeddings().weight.device)
    else:
        model.to(device)
    model.eval()
    try:
        family = families.family_of(model.config.model_type)
    except KeyError as err:
        raise ModelError(f"model {name!r}: {err.args[0]}") from None
    marker = Path(source) / zoo.MARKER
    untrained = json.loads(marker.read_text()).get("untrained", False) if marker.exists() else False
    return LM(name=name if adapter is None else f"{name}+{Path(adapter).name}", source=source, family=family,
              model_type=model.config.model_type, model=model, tokenizer=tokenizer, params=params,
              device=torch.device(device), dtype=DTYPES[dtype], untrained=untrained,
              max_len=families.get(family).context_window(model.config), adapter=adapter,
              layers=families.layer_mix(families.get(family), model.config),
              remote_code=type(model).__module__.startswith("transformers_modules"))


def check_engine(lm: LM, engine: str) -> None:
    """Refuse, in one line, archbench's engine for a model whose classes are its repo's own code."""
    if engine == "archbench" and lm.remote_code:
        raise ModelError(f"model {lm.name!r} runs its repo's own code (--trust-remote-code), which archbench's "
                         f"engine does not know: use --engine hf")
