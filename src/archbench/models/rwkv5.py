"""RWKV-5 "Eagle" (Peng et al. 2024, "Eagle and Finch: RWKV with Matrix-Valued States and Dynamic Recurrence")
as a transformers model: `Rwkv5Config` (model_type "rwkv5") and `Rwkv5ForCausalLM`, in plain PyTorch.

The arithmetic follows the v5.2 path of BlinkDL's `rwkv` package (`att_seq_v5_2`, `att_one_v5_1`, `ffn_seq`,
`ffn_one`; fp32, no layer rescaling). Per block: LayerNorm -> time mixing (static token shift: r, k, v and the
gate each read lerp(previous token, current token, time_mix_*); a per-channel decay exp(-exp(time_decay)) that
does not depend on the data; the matrix-state update with bonus `time_faaaa`; per-head GroupNorm with eps
1e-5 * head_size_divisor^2 = 64e-5, as the package; silu gate; output) -> residual -> LayerNorm -> channel
mixing (RWKV-4's: token shift by time_mix_key / time_mix_receptance; sigmoid(receptance) * value(relu(key)^2))
-> residual.

Reuse: RWKV-6 only made RWKV-5's decay data-dependent, so the state update is models/wkv6.py's chunked form
with the log decay -exp(time_decay) broadcast over positions (`wkv5`). The layer loop and the zero state are
Rwkv6Model's own functions (same block interface, same `RwkvState`) and the causal-LM plumbing is
models/rwkv_state.py's, attached below rather than copied.

Where the names come from. Parameter and config names are those of the HF-format RWKV-5 repos
(`RWKV/rwkv-5-world-*`, model_type "rwkv5", remote code `configuration_rwkv5.py` / `modeling_rwkv5.py`, classes
`Rwkv5ForCausalLM` -> `rwkv.` + `head.`), so such a directory loads here without remote code. BlinkDL's `.pth`
(RWKV-LM v5.2, which the `rwkv` package detects by `ln_x`, `gate.weight` and a 2-D `time_decay`) converts in
models/rwkv_convert.py (`pth5_to_hf`), renamed only, nothing transposed:

    emb.weight -> rwkv.embeddings.weight (V, C)    ln_out.* -> rwkv.ln_out.*    head.weight -> head.weight (V, C)
    blocks.i.ln0.* -> rwkv.blocks.i.pre_ln.* (i = 0)    blocks.i.ln1.* / ln2.* -> rwkv.blocks.i.ln1.* / ln2.*
    blocks.i.att.time_mix_{k,v,r,g} (1, 1, C) -> rwkv.blocks.i.attention.time_mix_{key,value,receptance,gate}
    blocks.i.att.X -> rwkv.blocks.i.attention.X    for X in time_decay (H, N), time_faaaa (H, N),
        {receptance,key,value,gate}.weight (A, C), output.weight (C, A), ln_x.{weight,bias} (A,)
    blocks.i.ffn.time_mix_{k,r} (1, 1, C) -> rwkv.blocks.i.feed_forward.time_mix_{key,receptance}
    blocks.i.ffn.X -> rwkv.blocks.i.feed_forward.X    for X in key.weight (F, C), receptance.weight (C, C),
        value.weight (C, F)

Config fields read from a hub config.json: vocab_size, hidden_size (C), num_hidden_layers, attention_hidden_size
(A, default C), head_size (N; H = A // N heads), intermediate_size (F; null -> int(3.5 C) // 32 * 32, the remote
code's rule), layer_norm_epsilon. Not read: `rescale_every` (the remote code's fp16 overflow guard; archbench runs
fp32 / bf16) and `num_attention_heads` (the remote code uses it both as a head count and as a head size; here
it is set to H). The remote code's `ln_x` GroupNorm keeps torch's default eps 1e-5; BlinkDL's package and
training code use 64e-5 (`head_size_divisor` 8), which is what this model does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers import initialization as init

from archbench.models.rwkv6 import Rwkv6Model, RwkvBlock
from archbench.models.rwkv7 import shift
from archbench.models.rwkv_state import causal_lm_forward, input_embeddings, set_input_embeddings, whole_sequence_inputs
from archbench.models.wkv6 import wkv6


class Rwkv5Config(PretrainedConfig):
    """RWKV-5 hyper-parameters with the field names of the HF-format RWKV-5 repos."""

    model_type = "rwkv5"

    def __init__(self, vocab_size=65536, hidden_size=768, num_hidden_layers=24, attention_hidden_size=None,
                 head_size=64, head_size_divisor=8, intermediate_size=None, layer_norm_epsilon=1e-5,
                 initializer_range=0.02, tie_word_embeddings=False, **kwargs):
        self.vocab_size, self.hidden_size, self.num_hidden_layers = vocab_size, hidden_size, num_hidden_layers
        self.attention_hidden_size = attention_hidden_size or hidden_size
        self.head_size, self.head_size_divisor = head_size, head_size_divisor
        self.num_attention_heads = self.attention_hidden_size // head_size
        self.intermediate_size = intermediate_size or int((hidden_size * 3.5) // 32 * 32)
        self.layer_norm_epsilon, self.initializer_range = layer_norm_epsilon, initializer_range
        kwargs.pop("num_attention_heads", None)  # ambiguous in the hub configs (module docstring); H is derived
        kwargs.pop("rescale_every", None)  # fp16 overflow guard of the remote code; archbench runs fp32 / bf16
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


def wkv5(r, decay, k, v, u, state):
    """RWKV-5's state update: r, k, v (B, T, H, N); decay (H, N), the `time_decay` parameter (per-step factor
    exp(-exp(decay)), the same at every position); u (H, N) the bonus; state (B, H, N_k, N_v) fp32.
    Returns (o (B, T, H, N_v) fp32, state). The chunked wkv6 form with a position-independent log decay."""
    logw = -decay.float().exp().expand(r.shape)  # (B, T, H, N): a view, no copy
    return wkv6(r, logw, k, v, u, state)


class Rwkv5SelfAttention(nn.Module):
    def __init__(self, cfg: Rwkv5Config):
        super().__init__()
        c, a = cfg.hidden_size, cfg.attention_hidden_size
        self.heads = a // cfg.head_size
        for name in ("key", "value", "receptance", "gate"):
            setattr(self, f"time_mix_{name}", nn.Parameter(torch.zeros(1, 1, c)))
        self.time_decay = nn.Parameter(torch.zeros(self.heads, cfg.head_size))
        self.time_faaaa = nn.Parameter(torch.zeros(self.heads, cfg.head_size))
        self.key, self.value, self.receptance, self.gate = (nn.Linear(c, a, bias=False) for _ in range(4))
        self.output = nn.Linear(a, c, bias=False)
        self.ln_x = nn.GroupNorm(self.heads, a, eps=1e-5 * cfg.head_size_divisor ** 2)

    def forward(self, x, prev, state):
        """x (B, T, C) normalised, prev (B, C), state (B, H, N, N) fp32. Returns (out (B, T, C), state)."""
        bsz, t, _ = x.shape
        sx = shift(x, prev)  # (B, T, C)
        mixes = (self.time_mix_key, self.time_mix_value, self.time_mix_receptance, self.time_mix_gate)
        xk, xv, xr, xg = (torch.lerp(sx, x, m) for m in mixes)  # x * m + sx * (1 - m)
        heads = (bsz, t, self.heads, -1)
        r, k, v = self.receptance(xr).view(heads), self.key(xk).view(heads), self.value(xv).view(heads)
        g = F.silu(self.gate(xg))
        o, state = wkv5(r, self.time_decay, k, v, self.time_faaaa, state)  # o (B, T, H, N) fp32
        o = F.group_norm(o.reshape(bsz * t, -1), self.heads, self.ln_x.weight.float(), self.ln_x.bias.float(),
                         self.ln_x.eps).view(bsz, t, -1)
        return self.output(o.to(x.dtype) * g), state


class Rwkv5FeedForward(nn.Module):
    def __init__(self, cfg: Rwkv5Config):
        super().__init__()
        c = cfg.hidden_size
        self.time_mix_key = nn.Parameter(torch.zeros(1, 1, c))
        self.time_mix_receptance = nn.Parameter(torch.zeros(1, 1, c))
        self.key = nn.Linear(c, cfg.intermediate_size, bias=False)
        self.receptance = nn.Linear(c, c, bias=False)
        self.value = nn.Linear(cfg.intermediate_size, c, bias=False)

    def forward(self, x, prev):
        """x (B, T, C), prev (B, C). Returns (B, T, C)."""
        sx = shift(x, prev)
        k = torch.relu(self.key(torch.lerp(sx, x, self.time_mix_key))).square()  # (B, T, F)
        return torch.sigmoid(self.receptance(torch.lerp(sx, x, self.time_mix_receptance))) * self.value(k)


class Rwkv5PreTrainedModel(PreTrainedModel):
    config_class = Rwkv5Config
    base_model_prefix = "rwkv"
    _no_split_modules = ["RwkvBlock"]

    def _init_weights(self, module):
        """transformers' defaults, then RWKV-5's own parameters near BlinkDL's ranges (token-shift mixes in
        [0, 1), decays from slow to fast, a small alternating bonus)."""
        super()._init_weights(module)
        if isinstance(module, (Rwkv5SelfAttention, Rwkv5FeedForward)):
            c = module.time_mix_key.shape[-1]
            ramp = torch.arange(c, dtype=torch.float32, device=module.time_mix_key.device) / c
            mixes = [p for name, p in module.named_parameters(recurse=False) if name.startswith("time_mix_")]
            for i, p in enumerate(mixes):
                init.copy_(p, (ramp ** (0.3 + 0.2 * i)).view(1, 1, c))
        if isinstance(module, Rwkv5SelfAttention):
            h, n = module.time_decay.shape
            ramp = torch.arange(h * n, dtype=torch.float32, device=module.time_decay.device) / max(h * n - 1, 1)
            init.copy_(module.time_decay, (-6 + 5 * ramp ** 0.7).view(h, n))
            init.copy_(module.time_faaaa, (0.1 * ((torch.arange(h * n) + 1) % 3 - 1)).view(h, n))


class Rwkv5Model(Rwkv5PreTrainedModel):
    def __init__(self, config: Rwkv5Config):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(RwkvBlock(config, i, Rwkv5SelfAttention(config), Rwkv5FeedForward(config))
                                    for i in range(config.num_hidden_layers))
        self.ln_out = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.post_init()

    # RWKV-6's: the same state (two (B, C) token shifts and the (B, H, N, N) fp32 matrix per layer) and the same
    # loop (embeddings -> pre_ln -> per block ln1 -> attention, ln2 -> feed_forward -> ln_out)
    empty_state = Rwkv6Model.empty_state  # (n) -> RwkvState of n zero rows
    run = Rwkv6Model.run  # (ids (B, T), state | None) -> (hidden (B, T, C), RwkvState)
    forward = Rwkv6Model.forward


class Rwkv5ForCausalLM(Rwkv5PreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"head.weight": "rwkv.embeddings.weight"}

    def __init__(self, config: Rwkv5Config):
        super().__init__(config)
        self.rwkv = Rwkv5Model(config)
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.head

    # models/rwkv_state.py: embedding accessors, generate() inputs and the whole-sequence forward
    get_input_embeddings, set_input_embeddings = input_embeddings, set_input_embeddings
    prepare_inputs_for_generation, forward = whole_sequence_inputs, causal_lm_forward
