"""RWKV-7's from-scratch training initialisation for archbench's own model class (models/rwkv7.py).

The source is BlinkDL's RWKV-LM, RWKV-v7/train_temp/src/model.py (github.com/BlinkDL/RWKV-LM, read at commit
524481d5): the constructors of `RWKV_Tmix_x070` and `RWKV_CMix_x070` set the vector parameters and the LoRAs,
then `RWKV.generate_init_weight` (what train.py starts every run from) overwrites the matrices and the
embedding / head. Our own code, written from that description, in the model's parameter names (fla's layout,
the mapping is in models/rwkv7.py's docstring). With i the layer, L the layers, C the width, N the head size:

- ratio_0_to_1 = i / (L - 1) (0 for a single layer), ratio_1_to_almost0 = 1 - i / L, ddd = c / C (c < C);
- token-shift mixes: x_r, x_w, x_k, x_v, x_a, x_g = 1 - ddd ** (p * ratio_1_to_almost0) with p = 0.2, 0.9,
  0.7, 0.7, 0.9, 0.2; channel mixing x_k = 1 - ddd ** (ratio_1_to_almost0 ** 4);
- with linear = c / (C - 1) - 0.5 and zigzag = z |z|, z = ((c mod N) - (N - 1) / 2) / ((N - 1) / 2):
  decay base w0 = -6 + 6 (c / (C - 1)) ** (1 + ratio_0_to_1 ** 0.3) + 0.5 + 2.5 zigzag (slow to fast
  channels, more slow ones in deeper layers), a0 = -0.19 + 0.3 zigzag + 0.4 linear, v0 = 0.73 - 0.4 linear,
  k_k = 0.71 - 0.1 linear, k_a = 1.02, r_k = -0.04;
- every LoRA (w, a, v, g): down projection (w1 ...) zero, up projection (w2 ...) orthogonal with gain 0.1
  (times sqrt(rank / C) if the rank exceeds C), so each starts at its bias (w0, a0, v0; the gate at
  sigmoid(0) g2);
- receptance and value orthogonal (gain 1), key orthogonal (gain 0.1), output zero; channel mixing key
  orthogonal (gain 1), value zero: every block starts as the identity on the residual stream;
- ln_x (g_norm) weight ((i + 1) / L) ** 0.7, bias 0; the other LayerNorms 1 and 0;
- embedding uniform(-1e-4, 1e-4) (the first LayerNorm rescales it), head orthogonal with gain
  0.5 sqrt(V / C) if V > C, else 0.5: the initial logits are small, the loss about ln V.

Not taken from there (they are the optimizer's, not the init's): w0's 2x learning rate and the L2-wrap loss.
"""
from __future__ import annotations

import math

import torch
from torch import nn

SHIFT_POWERS = {"x_r": 0.2, "x_w": 0.9, "x_k": 0.7, "x_v": 0.7, "x_a": 0.9, "x_g": 0.2}


def _orthogonal(rows: int, cols: int, gain: float) -> torch.Tensor:
    return nn.init.orthogonal_(torch.empty(rows, cols), gain=gain)


def _lora(lora: nn.Module, bias: torch.Tensor | None) -> None:
    """down = 0 (w1 (C, D) stored as lora.0.weight (D, C)); up = w2 (D, C) orthogonal, gain 0.1, stored as
    lora.2.weight (C, D); the bias (w0, a0, v0) when the LoRA has one."""
    down, _, up = lora.lora
    rank, c = down.weight.shape
    down.weight.zero_()
    up.weight.copy_(_orthogonal(rank, c, 0.1 * (math.sqrt(rank / c) if rank > c else 1.0)).T)
    if bias is not None:
        up.bias.copy_(bias)


def _layer_norm(norm: nn.Module, weight: float = 1.0) -> None:
    norm.weight.fill_(weight)
    norm.bias.zero_()


def _block(block: nn.Module, layer: int, layers: int, head_size: int) -> None:
    att, ffn = block.attn, block.ffn
    c = att.k_k.shape[0]
    ratio_0_to_1 = layer / (layers - 1) if layers > 1 else 0.0
    ratio_1_to_almost0 = 1.0 - layer / layers
    n = torch.arange(c, dtype=torch.float32)
    ddd = n / c
    linear = n / (c - 1) - 0.5
    z = ((n % head_size) - (head_size - 1) / 2) / ((head_size - 1) / 2)
    zigzag = z * z.abs()
    for name, p in SHIFT_POWERS.items():
        getattr(att, name).copy_((1 - ddd ** (p * ratio_1_to_almost0)).view(1, 1, c))
    ffn.x_k.copy_(1 - ddd ** (ratio_1_to_almost0 ** 4))
    w0 = -6 + 6 * (n / (c - 1)) ** (1 + ratio_0_to_1 ** 0.3) + 0.5 + 2.5 * zigzag
    _lora(att.w_lora, w0)
    _lora(att.a_lora, -0.19 + 0.3 * zigzag + 0.4 * linear)
    if layer > 0:  # layer 0 makes the value residual (v_first) and has no v LoRA
        _lora(att.v_lora, 0.73 - 0.4 * linear)
    _lora(att.g_lora, None)
    att.k_k.copy_(0.71 - 0.1 * linear)
    att.k_a.fill_(1.02)
    att.r_k.fill_(-0.04)
    for proj, gain in ((att.r_proj, 1.0), (att.k_proj, 0.1), (att.v_proj, 1.0), (ffn.key, 1.0)):
        proj.weight.copy_(_orthogonal(*proj.weight.shape, gain))
    att.o_proj.weight.zero_()
    ffn.value.weight.zero_()
    _layer_norm(att.g_norm, ((layer + 1) / layers) ** 0.7)
    for name in ("pre_norm", "attn_norm", "ffn_norm"):
        if hasattr(block, name):
            _layer_norm(getattr(block, name))


@torch.no_grad()
def init_rwkv7(model) -> None:
    """Re-initialise an `Rwkv7ForCausalLM` in place with BlinkDL's training init (random draws from torch's
    global generator: seed it first). Parameter names, shapes and dtypes are unchanged."""
    cfg, body = model.config, model.model
    for i, block in enumerate(body.layers):
        _block(block, i, cfg.num_hidden_layers, cfg.head_dim)
    _layer_norm(body.norm)
    nn.init.uniform_(body.embeddings.weight, -1e-4, 1e-4)
    vocab, width = model.lm_head.weight.shape
    gain = 0.5 * math.sqrt(vocab / width) if vocab > width else 0.5
    model.lm_head.weight.copy_(_orthogonal(vocab, width, gain))
