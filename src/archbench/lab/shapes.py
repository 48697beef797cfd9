"""Model shapes for the lab: one transformers config builder per architecture, and `--params N` matching.

`ARCHS` maps an architecture name to (family, config builder, depth factor). A builder takes the width, the
number of blocks, the vocabulary and the longest sequence and returns a transformers config with dropout off
(nanoGPT's CPU recipe) and fp32 everything. The depth factor follows the papers' convention for equal size:
a Mamba or Mamba-2 block (one mixer, no MLP) has about half a Transformer block's parameters, so those
models get twice the blocks (Gu & Dao 2023, Sec. 4: "2 Mamba blocks ~ 1 Transformer block").

The hybrid (Bamba: Mamba-2 mixers, attention in one block of four, an MLP in every block) counts one block
per Transformer block. Adding an architecture is one entry in ARCHS: `"name": Arch(family, build_name, 1)`, where
build_name(width, depth, vocab, context) returns that model's config (any class transformers'
AutoModelForCausalLM.from_config accepts, e.g. one registered by archbench.models). An architecture whose
config init is not its training init names its own in `Arch.init` (RWKV-7: lab/init_rwkv7.py, BlinkDL's).

`match(arch, params, depth)` picks the width (a multiple of the arch's width_step: 32 where heads of 32
must divide it, 16 otherwise) whose
non-embedding parameter count (everything but token/position embeddings and an untied output head) is
closest to `params`, trying depths around the requested one, and fails in one line if none is within 10%.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from archbench.lab.init_rwkv7 import init_rwkv7

HEAD_DIM = 32  # attention head width and Mamba-2 head width: heads = width / 32 (nanoGPT's baby GPT: 128 / 4)
ROPE_WINDOW = 4096  # the window a RoPE model declares (no parameters): `bench` may time it past its training length
TOLERANCE = 0.10  # --params: non-embedding parameters within 10%


def build_gpt2(width: int, depth: int, vocab: int, context: int):
    from transformers import GPT2Config

    return GPT2Config(vocab_size=vocab, n_positions=context, n_embd=width, n_layer=depth, n_head=width // HEAD_DIM,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)


def build_llama(width: int, depth: int, vocab: int, context: int):
    from transformers import LlamaConfig

    inter = 32 * round(8 * width / 3 / 32)  # SwiGLU width 8/3 d: the same 12 d^2 per block as GPT-2
    return LlamaConfig(vocab_size=vocab, hidden_size=width, intermediate_size=inter, num_hidden_layers=depth,
                       num_attention_heads=width // HEAD_DIM, num_key_value_heads=width // HEAD_DIM,
                       max_position_embeddings=max(context, ROPE_WINDOW), tie_word_embeddings=True, bos_token_id=None,
                       eos_token_id=None, pad_token_id=None)


def build_mamba(width: int, depth: int, vocab: int, context: int):
    from transformers import MambaConfig

    return MambaConfig(vocab_size=vocab, hidden_size=width, num_hidden_layers=depth, state_size=16, expand=2,
                       conv_kernel=4, bos_token_id=None, eos_token_id=None, pad_token_id=None)


def build_mamba2(width: int, depth: int, vocab: int, context: int):
    from transformers import Mamba2Config

    return Mamba2Config(vocab_size=vocab, hidden_size=width, num_hidden_layers=depth, state_size=16, expand=2,
                        head_dim=HEAD_DIM, num_heads=2 * width // HEAD_DIM, n_groups=1, conv_kernel=4,
                        chunk_size=64, bos_token_id=None, eos_token_id=None, pad_token_id=None)


def build_rwkv(width: int, depth: int, vocab: int, context: int):
    from transformers import RwkvConfig

    if depth < 2:
        raise ValueError(f"--depth {depth}: transformers' RWKV initialisation needs at least 2 blocks")
    # rescale_every=0: transformers would otherwise halve weights in place on every train/eval switch
    return RwkvConfig(vocab_size=vocab, hidden_size=width, num_hidden_layers=depth, attention_hidden_size=width,
                      intermediate_size=4 * width, context_length=context, rescale_every=0, bos_token_id=None,
                      eos_token_id=None)


def build_rwkv7(width: int, depth: int, vocab: int, context: int):
    """RWKV-7 with heads of 32 (BlinkDL's default 64 would leave a baby-GPT width of 128 two heads) and
    BlinkDL's suggested LoRA ranks (RWKV-v7/train_temp: max(32, 32 round(f sqrt(C) / 32)), f = 2.5 for the
    decay and a, 1.7 for the value residual, 5 for the gate); channel mixing 4 x width, as there."""
    from archbench.models import Rwkv7Config  # the package import registers rwkv7 with the Auto classes

    def rank(f: float) -> int:
        return max(32, 32 * round(f * width ** 0.5 / 32))

    return Rwkv7Config(vocab_size=vocab, hidden_size=width, num_hidden_layers=depth, head_dim=HEAD_DIM,
                       hidden_ratio=4, decay_low_rank_dim=rank(2.5), a_low_rank_dim=rank(2.5),
                       v_low_rank_dim=rank(1.7), gate_low_rank_dim=rank(5), bos_token_id=None, eos_token_id=None,
                       pad_token_id=None)


def build_bamba(width: int, depth: int, vocab: int, context: int):
    """A Bamba hybrid (transformers' BambaConfig: each block is a mixer and a SwiGLU MLP): Mamba-2 mixers with
    attention (RoPE) in every fourth block, the second of each group of four (block 0 alone when depth is 1)."""
    from transformers import BambaConfig

    attention = [i for i in range(depth) if i % 4 == 1] or [0]
    return BambaConfig(vocab_size=vocab, hidden_size=width, intermediate_size=32 * round(8 * width / 3 / 32),
                       num_hidden_layers=depth, num_attention_heads=width // HEAD_DIM,
                       num_key_value_heads=width // HEAD_DIM, attn_layer_indices=attention,
                       mamba_n_heads=2 * width // HEAD_DIM, mamba_d_head=HEAD_DIM, mamba_n_groups=1, mamba_d_state=16,
                       mamba_d_conv=4, mamba_expand=2, mamba_chunk_size=64,
                       max_position_embeddings=max(context, ROPE_WINDOW),
                       tie_word_embeddings=True, pad_token_id=None, bos_token_id=None, eos_token_id=None)


@dataclass(frozen=True)
class Arch:
    family: str  # archbench family (families/__init__.py) the trained model belongs to
    build: Callable  # (width, depth, vocab, context) -> transformers config
    depth_factor: int  # blocks per Transformer block at equal size
    width_step: int = HEAD_DIM  # widths tried by match(): attention needs whole heads of 32
    init: Callable | None = None  # (model) -> None: the training init, applied after the config's random init


ARCHS: dict[str, Arch] = {
    "gpt2": Arch("transformer", build_gpt2, 1),
    "llama": Arch("transformer", build_llama, 1),
    "mamba": Arch("mamba", build_mamba, 2, 16),
    "mamba2": Arch("mamba2", build_mamba2, 2, 16),  # 2 x width / 32 heads of 32
    "rwkv": Arch("rwkv", build_rwkv, 1, 16),
    "rwkv7": Arch("rwkv7", build_rwkv7, 1, HEAD_DIM, init_rwkv7),
    "bamba": Arch("hybrid", build_bamba, 1),  # Mamba-2 + attention blocks
}


def get(arch: str) -> Arch:
    if arch not in ARCHS:
        raise ValueError(f"--arch {arch!r}: choose one of {', '.join(ARCHS)}")
    return ARCHS[arch]


def non_embedding_params(config) -> int:
    """Parameters outside token/position embeddings and an untied output head (built on the meta device)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    skip = {id(model.get_input_embeddings().weight)}
    out = model.get_output_embeddings()
    if out is not None:
        skip.add(id(out.weight))
    for name, p in model.named_parameters():
        if name.endswith(("wpe.weight", "position_embeddings.weight")):
            skip.add(id(p))
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)  # parameters() yields tied ones once


def build(arch: str, width: int, depth: int, vocab: int, context: int):
    """The config of `arch` at width x (depth x the arch's depth factor) blocks."""
    a = get(arch)
    if width % a.width_step or width <= 0 or depth <= 0:
        raise ValueError(f"--width {width}, --depth {depth}: {arch} needs a positive width, a multiple of "
                         f"{a.width_step}")
    return a.build(width, depth * a.depth_factor, vocab, context)


def match(arch: str, params: int, depth: int, vocab: int, context: int) -> tuple[int, int, int]:
    """(width, blocks, non-embedding params) of `arch` closest to `params`, at `depth` Transformer-block
    equivalents if possible, else at depth - 1 .. depth + 2; one-line error if nothing is within 10%."""
    best = None
    for d in [depth, depth - 1, depth + 1, depth + 2]:
        if d < 1:
            continue
        step = get(arch).width_step
        for width in range(step, 4097, step):
            n = non_embedding_params(build(arch, width, d, vocab, context))
            if best is None or abs(n - params) < abs(best[2] - params):
                best = (width, d * get(arch).depth_factor, n)
            if n > params:
                break
        if abs(best[2] - params) <= TOLERANCE * params:
            return best
    raise ValueError(f"--params {params}: no {arch} shape within 10% (closest {best[2]:,} at width {best[0]}, "
                     f"{best[1]} blocks)")
