"""BlinkDL's native RWKV-7, RWKV-6 and RWKV-5 (v5.2) `.pth` checkpoints (RWKV-LM's training output, what the
`rwkv` package runs) to archbench's HF-format directories (models/rwkv7.py, rwkv6.py, rwkv5.py; their docstrings
list every name mapping), cached so that `--model path/to/file.pth` converts once.

The version is told from tensor names as the package does (`rwkv/model.py`): `att.r_k` is RWKV-7, `att.time_maa_x`
RWKV-6, `att.ln_x` + `att.gate.weight` + a 2-D `att.time_decay` (H, N) RWKV-5.2; the older v5.0 / v5.1 layouts
(one decay per head, no gate in v5.0) are refused. The hyper-parameters are read from tensor shapes, as BlinkDL's
loader does (`RWKV_x070`, `RWKV`): vocab and width from `emb.weight`, heads and head size from `att.r_k` (v7) or
`att.time_faaaa` (v5, v6), low-rank sizes from `att.{w,a,v,g}1` / `time_maa_w1` / `time_decay_w1`, the MLP width
from `ffn.key.weight`, the depth from the largest `blocks.i`. A model with the world vocabulary (65,536 rows)
gets the world tokenizer (models/rwkv_world.py) written beside it when the `rwkv` package, which ships the
vocabulary file, is installed; other vocabularies need their tokenizer files added to the directory.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch

from archbench.models import rwkv_world

WORLD_VOCAB = 65536  # embedding rows of BlinkDL's world models (65,529 tokens + id 0, padded)
_TOP = {"emb.weight": "model.embeddings.weight", "ln_out.weight": "model.norm.weight",
        "ln_out.bias": "model.norm.bias", "head.weight": "lm_head.weight"}
_TOP6 = {"emb.weight": "rwkv.embeddings.weight", "ln_out.weight": "rwkv.ln_out.weight",
         "ln_out.bias": "rwkv.ln_out.bias", "head.weight": "head.weight"}
_PART = {"ln0": "pre_norm", "ln1": "attn_norm", "ln2": "ffn_norm", "att": "attn", "ffn": "ffn"}
_ATT = {"receptance": "r_proj", "key": "k_proj", "value": "v_proj", "output": "o_proj", "ln_x": "g_norm"}
_LORA = {"0": "lora.2.bias", "1": "lora.0.weight", "2": "lora.2.weight"}  # BlinkDL w0 / w1 / w2 -> fla


class PthError(ValueError):
    """A `.pth` file that is not an RWKV-5.2/6/7 checkpoint; the message is one line."""


def hf_name(name: str) -> tuple[str | None, bool]:
    """The HF-format name of BlinkDL tensor `name` and whether it is transposed; (None, False) if unused."""
    if name in _TOP:
        return _TOP[name], False
    m = re.fullmatch(r"blocks\.(\d+)\.(ln0|ln1|ln2|att|ffn)\.(.+)", name)
    if m is None:
        raise PthError(f"unexpected RWKV-7 tensor {name!r}")
    layer, part, rest = m.groups()
    if layer == "0" and re.fullmatch(r"v[012]", rest):
        return None, False  # layer 0 keeps v_first and has no value residual
    lora = re.fullmatch(r"([wavg])([012])", rest)
    if part == "att" and lora:
        return f"model.layers.{layer}.attn.{lora[1]}_lora.{_LORA[lora[2]]}", lora[2] != "0"
    head, _, tail = rest.partition(".")
    if part == "att" and head in _ATT:
        rest = f"{_ATT[head]}.{tail}"
    return f"model.layers.{layer}.{_PART[part]}.{rest}", False


def config_from_pth(sd: dict) -> dict:
    """Rwkv7Config keyword arguments read from the tensor shapes of a BlinkDL RWKV-7 state dict."""
    vocab, width = sd["emb.weight"].shape
    heads, head_dim = sd["blocks.0.att.r_k"].shape
    layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    v1 = sd.get("blocks.1.att.v1")
    return dict(vocab_size=vocab, hidden_size=width, num_hidden_layers=layers, head_dim=head_dim,
                intermediate_size=sd["blocks.0.ffn.key.weight"].shape[0],
                decay_low_rank_dim=sd["blocks.0.att.w1"].shape[1], a_low_rank_dim=sd["blocks.0.att.a1"].shape[1],
                gate_low_rank_dim=sd["blocks.0.att.g1"].shape[1],
                v_low_rank_dim=v1.shape[1] if v1 is not None else 32)


def pth_to_hf(sd: dict) -> dict:
    """BlinkDL state dict -> HF-format state dict of Rwkv7ForCausalLM (fp32, shapes as the modules hold them)."""
    out = {}
    for name, t in sd.items():
        new, transposed = hf_name(name)
        if new is None:
            continue
        t = t.float()
        t = t.t() if transposed else t
        if re.search(r"\.(k_k|k_a|ffn\.x_k|lora\.2\.bias)$", new):
            t = t.flatten()  # (1, 1, C) in BlinkDL's files, (C,) in the modules
        out[new] = t.contiguous()
    return out


def config6_from_pth(sd: dict) -> dict:
    """Rwkv6Config keyword arguments read from the tensor shapes of a BlinkDL RWKV-6 state dict."""
    vocab, width = sd["emb.weight"].shape
    return dict(vocab_size=vocab, hidden_size=width, attention_hidden_size=sd["blocks.0.att.key.weight"].shape[0],
                num_hidden_layers=1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks.")),
                head_size=sd["blocks.0.att.time_faaaa"].shape[-1],
                intermediate_size=sd["blocks.0.ffn.key.weight"].shape[0],
                time_mix_extra_dim=sd["blocks.0.att.time_maa_w1"].shape[1] // 5,
                time_decay_extra_dim=sd["blocks.0.att.time_decay_w1"].shape[1])


def pth6_to_hf(sd: dict) -> dict:
    """BlinkDL RWKV-6 state dict -> Rwkv6ForCausalLM's (renamed only; models/rwkv6.py lists the names)."""
    parts = {"ln0": "pre_ln", "ln1": "ln1", "ln2": "ln2", "att": "attention", "ffn": "feed_forward"}
    out = {}
    for name, t in sd.items():
        m = re.fullmatch(r"blocks\.(\d+)\.(ln0|ln1|ln2|att|ffn)\.(.+)", name)
        new = f"rwkv.blocks.{m[1]}.{parts[m[2]]}.{m[3]}" if m else _TOP6[name]
        out[new] = t.float().contiguous()
    return out


_MIX5 = {"time_mix_k": "time_mix_key", "time_mix_v": "time_mix_value", "time_mix_r": "time_mix_receptance",
         "time_mix_g": "time_mix_gate"}  # BlinkDL v5 -> HF-format RWKV-5 (att. and ffn. alike)


def pth_version(sd: dict) -> int:
    """7, 6 or 5 (meaning v5.2) from the tensor names and shapes of a BlinkDL state dict, as the package tells
    them apart; anything else is refused in one line."""
    if "blocks.0.att.r_k" in sd:
        return 7
    if "blocks.0.att.time_maa_x" in sd:
        return 6
    decay = sd.get("blocks.0.att.time_decay")
    if "blocks.0.att.ln_x.weight" in sd and decay is not None:
        if "blocks.0.att.gate.weight" in sd and decay.dim() == 2 and decay.shape[1] > 1:
            return 5
        raise PthError("RWKV-5.0/5.1 checkpoint (one decay per head); only RWKV-5.2 (time_decay (H, N)) is supported")
    raise PthError("checkpoint is neither RWKV-7 (blocks.0.att.r_k), RWKV-6 (blocks.0.att.time_maa_x) nor RWKV-5.2 "
                   "(blocks.0.att.ln_x, gate and a 2-D time_decay); only those .pth files are supported")


def config5_from_pth(sd: dict) -> dict:
    """Rwkv5Config keyword arguments read from the tensor shapes of a BlinkDL RWKV-5.2 state dict."""
    vocab, width = sd["emb.weight"].shape
    return dict(vocab_size=vocab, hidden_size=width, attention_hidden_size=sd["blocks.0.att.key.weight"].shape[0],
                num_hidden_layers=1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks.")),
                head_size=sd["blocks.0.att.time_faaaa"].shape[-1],
                intermediate_size=sd["blocks.0.ffn.key.weight"].shape[0])


def pth5_to_hf(sd: dict) -> dict:
    """BlinkDL RWKV-5.2 state dict -> Rwkv5ForCausalLM's: RWKV-6's renaming (same blocks, parts and top-level
    names) plus the token-shift mixes spelled out (models/rwkv5.py lists the names)."""
    out = {}
    for name, t in pth6_to_hf(sd).items():
        head, _, last = name.rpartition(".")
        out[f"{head}.{_MIX5.get(last, last)}"] = t
    return out


def _model_of(sd: dict):
    """(config, meta-device model, HF state dict) of a BlinkDL RWKV-5.2, RWKV-6 or RWKV-7 state dict."""
    from archbench.models.rwkv5 import Rwkv5Config, Rwkv5ForCausalLM
    from archbench.models.rwkv6 import Rwkv6Config, Rwkv6ForCausalLM
    from archbench.models.rwkv7 import Rwkv7Config, Rwkv7ForCausalLM

    kinds = {5: (Rwkv5Config, Rwkv5ForCausalLM, config5_from_pth, pth5_to_hf),
             6: (Rwkv6Config, Rwkv6ForCausalLM, config6_from_pth, pth6_to_hf),
             7: (Rwkv7Config, Rwkv7ForCausalLM, config_from_pth, pth_to_hf)}
    config_cls, cls, read_config, rename = kinds[pth_version(sd)]
    cfg = config_cls(**read_config(sd), bos_token_id=0, eos_token_id=0)
    with torch.device("meta"):
        return cfg, cls(cfg), rename(sd)


def convert(pth: Path, out: Path) -> None:
    """Write the HF-format directory (config.json + safetensors) of BlinkDL checkpoint `pth` into `out`."""
    try:
        cfg, model, hf = _model_of(torch.load(pth, map_location="cpu", weights_only=True))
    except KeyError as err:
        raise PthError(f"{pth}: tensor {err.args[0]} is missing; not a complete RWKV-5.2/6/7 checkpoint") from None
    missing, unexpected = model.load_state_dict(hf, strict=False, assign=True)
    if missing or unexpected:
        raise PthError(f"{pth}: tensors missing {missing[:3]} / unexpected {unexpected[:3]} for {cfg.model_type}")
    model.save_pretrained(str(out))
    vocab = rwkv_world.package_vocab()
    if cfg.vocab_size == WORLD_VOCAB and vocab is not None:  # BlinkDL's world models: their tokenizer beside
        rwkv_world.RwkvWorldTokenizer(str(vocab)).save_pretrained(str(out))


def cached(pth: str | Path, cache: Path) -> Path:
    """The converted directory of `pth` under `cache`, converting on first use (keyed by path, size, mtime)."""
    pth = Path(pth).expanduser().resolve()
    if not pth.is_file():
        raise PthError(f"model {str(pth)!r}: .pth file not found")
    st = pth.stat()
    key = hashlib.sha256(json.dumps([str(pth), st.st_size, st.st_mtime_ns]).encode()).hexdigest()[:10]
    path = cache / "rwkv-pth" / f"{pth.stem}-{key}"
    if not (path / "config.json").exists():
        tmp = path.with_name(path.name + ".partial")
        tmp.mkdir(parents=True, exist_ok=True)
        convert(pth, tmp)
        tmp.rename(path)
    return path


def random_pth(path, vocab: int = 500, width: int = 128, layers: int = 3, head: int = 64, seed: int = 0,
               version: int = 7) -> dict:
    """A seeded random RWKV-`version` (5 = v5.2, 6, 7) checkpoint in BlinkDL's `.pth` layout (RWKV-LM's names
    and shapes), saved to `path`, for tests and benchmarks against the `rwkv` package. Values lie in the ranges
    trained models show (decay biases from slow to fast, token-shift mixes in (0, 1)) so every code path is
    exercised. In each block `ln_x` comes before `time_decay`: the package's v5 detection reads them in order."""
    g = torch.Generator().manual_seed(seed)
    n = lambda *s, std=1.0: torch.randn(*s, generator=g) * std  # noqa: E731
    u = lambda *s, lo=0.0, hi=1.0: lo + (hi - lo) * torch.rand(*s, generator=g)  # noqa: E731
    c, block = width, {5: _block5, 6: _block6, 7: _block7}[version]
    sd = {"emb.weight": n(vocab, c, std=0.5), "head.weight": n(vocab, c, std=c ** -0.5),
          "ln_out.weight": u(c, lo=0.5, hi=1.5), "ln_out.bias": n(c, std=0.1),
          "blocks.0.ln0.weight": u(c, lo=0.5, hi=1.5), "blocks.0.ln0.bias": n(c, std=0.1)}
    for i in range(layers):
        for ln in ("ln1", "ln2", "att.ln_x"):
            sd[f"blocks.{i}.{ln}.weight"], sd[f"blocks.{i}.{ln}.bias"] = u(c, lo=0.5, hi=1.5), n(c, std=0.1)
        sd.update({f"blocks.{i}.{k}": v for k, v in block(n, u, c, head).items()})
    torch.save(sd, path)
    return sd


def _block7(n, u, c: int, head: int) -> dict:
    """One RWKV-7 block's time and channel mixing (low-rank sizes D_w, D_a, D_v, D_g = 32, 32, 16, 32)."""
    sd = {f"att.x_{x}": u(1, 1, c) for x in "rwkvag"}
    sd.update({"att.w0": u(1, 1, c, lo=-4, hi=1), "att.a0": n(1, 1, c), "att.v0": n(1, 1, c)})
    for x, rank in zip("wavg", (32, 32, 16, 32)):
        sd[f"att.{x}1"], sd[f"att.{x}2"] = n(c, rank, std=0.3), n(rank, c, std=0.3)
    sd.update({"att.k_k": u(1, 1, c, lo=0.5, hi=1.0), "att.k_a": u(1, 1, c, lo=0.5, hi=1.5),
               "att.r_k": n(c // head, head, std=0.3)})
    sd.update(_square(n, c, ("receptance", "key", "value", "output")))
    return {**sd, "ffn.x_k": u(1, 1, c), **_ffn(n, c, 4 * c)}


def _block6(n, u, c: int, head: int) -> dict:
    """One RWKV-6 block: data-dependent token shift (time_maa_*, rank 32) and decay (rank 64)."""
    sd = {f"att.time_maa_{x}": u(1, 1, c) for x in "xwkvrg"}
    sd.update({"att.time_maa_w1": n(c, 5 * 32, std=0.1), "att.time_maa_w2": n(5, 32, c, std=0.1),
               "att.time_decay": u(1, 1, c, lo=-6, hi=1),  # per-step decays from 0.998 to 0.07
               "att.time_decay_w1": n(c, 64, std=0.1), "att.time_decay_w2": n(64, c, std=0.1),
               "att.time_faaaa": n(c // head, head, std=0.5)})
    sd.update(_square(n, c, ("receptance", "key", "value", "gate", "output")))
    ffn = int(c * 3.5) // 32 * 32
    return {**sd, "ffn.time_maa_k": u(1, 1, c), "ffn.time_maa_r": u(1, 1, c), **_ffn(n, c, ffn, receptance=True)}


def _block5(n, u, c: int, head: int) -> dict:
    """One RWKV-5.2 block: static token shift (time_mix_*) and a static per-channel decay (H, N)."""
    sd = {f"att.time_mix_{x}": u(1, 1, c) for x in "kvrg"}
    sd.update({"att.time_decay": u(c // head, head, lo=-6, hi=1),  # per-step decays from 0.998 to 0.07
               "att.time_faaaa": n(c // head, head, std=0.5)})
    sd.update(_square(n, c, ("receptance", "key", "value", "gate", "output")))
    ffn = int(c * 3.5) // 32 * 32
    return {**sd, "ffn.time_mix_k": u(1, 1, c), "ffn.time_mix_r": u(1, 1, c), **_ffn(n, c, ffn, receptance=True)}


def _square(n, c: int, names) -> dict:
    return {f"att.{name}.weight": n(c, c, std=c ** -0.5) for name in names}


def _ffn(n, c: int, ffn: int, receptance: bool = False) -> dict:
    sd = {"ffn.key.weight": n(ffn, c, std=c ** -0.5), "ffn.value.weight": n(c, ffn, std=ffn ** -0.5)}
    return {**sd, "ffn.receptance.weight": n(c, c, std=c ** -0.5)} if receptance else sd
