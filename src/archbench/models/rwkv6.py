"""RWKV-6 "Finch" (Peng et al. 2024, "Eagle and Finch: RWKV with Matrix-Valued States and Dynamic Recurrence")
as a transformers model: `Rwkv6Config` (model_type "rwkv6") and `Rwkv6ForCausalLM`, in plain PyTorch.

The arithmetic follows BlinkDL's `rwkv` package (`att_seq_v6_0`, `att_one_v6_0`, `ffn_seq_v6`; fp32, no layer
rescaling); the state update is models/wkv6.py. Per block: LayerNorm -> time mixing (data-dependent token shift
through a 5-way low-rank `time_maa` projection; r, k, v, gate; data-dependent decay exp(-exp(time_decay +
low-rank)); the wkv6 update with bonus `time_faaaa`; per-head GroupNorm; silu gate; output) -> residual ->
LayerNorm -> channel mixing (token shift; sigmoid(receptance) * value(relu(key)^2)) -> residual.

Parameter names are those of the HF-format RWKV-6 repos (`RWKV/v6-Finch-*-HF`, whose remote code defines
`Rwkv6ForCausalLM` with `rwkv.` and `head.`), config fields included, so such a directory loads here without
remote code. From BlinkDL's `.pth` (models/rwkv_convert.py `pth6_to_hf`), nothing is transposed:

    emb.weight -> rwkv.embeddings.weight    ln_out.* -> rwkv.ln_out.*    head.weight -> head.weight
    blocks.i.ln0.* -> rwkv.blocks.i.pre_ln.* (i = 0)    blocks.i.ln1.* / ln2.* -> rwkv.blocks.i.ln1.* / ln2.*
    blocks.i.att.X -> rwkv.blocks.i.attention.X     for X in time_maa_{x,w,k,v,r,g} (1, 1, C), time_maa_w1
        (C, 5 D), time_maa_w2 (5, D, C), time_decay (1, 1, A), time_decay_w1 (C, D_w), time_decay_w2 (D_w, A),
        time_faaaa (H, N), {receptance,key,value,gate,output}.weight, ln_x.*
    blocks.i.ffn.X -> rwkv.blocks.i.feed_forward.X  for X in time_maa_k, time_maa_r, {key,receptance,value}.weight
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers import initialization as init

from archbench.models.rwkv7 import shift
from archbench.models.rwkv_state import (
    RwkvState,
    causal_lm_forward,
    input_embeddings,
    set_input_embeddings,
    whole_sequence_inputs,
)
from archbench.models.wkv6 import wkv6


class Rwkv6Config(PretrainedConfig):
    """RWKV-6 hyper-parameters with the field names of the HF-format RWKV-6 repos."""

    model_type = "rwkv6"

    def __init__(self, vocab_size=65536, hidden_size=768, num_hidden_layers=12, attention_hidden_size=None,
                 head_size=64, head_size_divisor=8, intermediate_size=None, layer_norm_epsilon=1e-5,
                 time_mix_extra_dim=None, time_decay_extra_dim=None, initializer_range=0.02,
                 tie_word_embeddings=False, **kwargs):
        self.vocab_size, self.hidden_size, self.num_hidden_layers = vocab_size, hidden_size, num_hidden_layers
        self.attention_hidden_size = attention_hidden_size or hidden_size
        self.head_size, self.head_size_divisor = head_size, head_size_divisor
        self.intermediate_size = intermediate_size or int((hidden_size * 3.5) // 32 * 32)
        self.layer_norm_epsilon, self.initializer_range = layer_norm_epsilon, initializer_range
        big = hidden_size == 4096  # the remote code's rule: the 7B model has wider low-rank projections
        self.time_mix_extra_dim = time_mix_extra_dim or (64 if big else 32)
        self.time_decay_extra_dim = time_decay_extra_dim or (128 if big else 64)
        kwargs.pop("rescale_every", None)  # fp16 overflow guard of the remote code; archbench runs fp32 / bf16
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


class Rwkv6SelfAttention(nn.Module):
    def __init__(self, cfg: Rwkv6Config):
        super().__init__()
        c, a, d, dw = cfg.hidden_size, cfg.attention_hidden_size, cfg.time_mix_extra_dim, cfg.time_decay_extra_dim
        self.heads = a // cfg.head_size
        for name in ("x", "w", "k", "v", "r", "g"):
            setattr(self, f"time_maa_{name}", nn.Parameter(torch.zeros(1, 1, c)))
        self.time_maa_w1 = nn.Parameter(torch.zeros(c, 5 * d))
        self.time_maa_w2 = nn.Parameter(torch.zeros(5, d, c))
        self.time_decay = nn.Parameter(torch.zeros(1, 1, a))
        self.time_decay_w1 = nn.Parameter(torch.zeros(c, dw))
        self.time_decay_w2 = nn.Parameter(torch.zeros(dw, a))
        self.time_faaaa = nn.Parameter(torch.zeros(self.heads, cfg.head_size))
        self.receptance, self.key, self.value, self.gate = (nn.Linear(c, a, bias=False) for _ in range(4))
        self.output = nn.Linear(a, c, bias=False)
        self.ln_x = nn.GroupNorm(self.heads, a, eps=1e-5 * cfg.head_size_divisor ** 2)

    def forward(self, x, prev, state):
        """x (B, T, C) normalised, prev (B, C), state (B, H, N, N) fp32. Returns (out (B, T, C), state)."""
        bsz, t, _ = x.shape
        xx = shift(x, prev) - x
        low = torch.tanh(torch.addcmul(x, xx, self.time_maa_x) @ self.time_maa_w1)  # (B, T, 5 D)
        low = torch.einsum("btfd,fdc->fbtc", low.view(bsz, t, 5, -1), self.time_maa_w2)  # (5, B, T, C)
        mixes = (self.time_maa_w, self.time_maa_k, self.time_maa_v, self.time_maa_r, self.time_maa_g)
        xw, xk, xv, xr, xg = (torch.addcmul(x, xx, m + d) for m, d in zip(mixes, low.unbind(0)))
        r, k, v = self.receptance(xr), self.key(xk), self.value(xv)
        g = F.silu(self.gate(xg))
        d = self.time_decay + torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2  # (B, T, A)
        heads = (bsz, t, self.heads, -1)
        o, state = wkv6(r.view(heads), -d.float().exp().view(heads), k.view(heads), v.view(heads),
                        self.time_faaaa, state)  # o (B, T, H, N) fp32
        o = F.group_norm(o.reshape(bsz * t, -1), self.heads, self.ln_x.weight.float(), self.ln_x.bias.float(),
                         self.ln_x.eps).view(bsz, t, -1)
        return self.output(o.to(x.dtype) * g), state


class Rwkv6FeedForward(nn.Module):
    def __init__(self, cfg: Rwkv6Config):
        super().__init__()
        c = cfg.hidden_size
        self.time_maa_k, self.time_maa_r = nn.Parameter(torch.zeros(1, 1, c)), nn.Parameter(torch.zeros(1, 1, c))
        self.key = nn.Linear(c, cfg.intermediate_size, bias=False)
        self.receptance = nn.Linear(c, c, bias=False)
        self.value = nn.Linear(cfg.intermediate_size, c, bias=False)

    def forward(self, x, prev):
        """x (B, T, C), prev (B, C). Returns (B, T, C)."""
        xx = shift(x, prev) - x
        k = torch.relu(self.key(torch.addcmul(x, xx, self.time_maa_k))).square()
        return torch.sigmoid(self.receptance(torch.addcmul(x, xx, self.time_maa_r))) * self.value(k)


class RwkvBlock(nn.Module):
    """The block layout of RWKV-5 and RWKV-6 (BlinkDL's `blocks.i`): pre_ln (layer 0 only), ln1 -> time mixing
    (`attention`), ln2 -> channel mixing (`feed_forward`), each added to the residual by the model's `run`."""

    def __init__(self, cfg, layer: int, attention: nn.Module, feed_forward: nn.Module):
        super().__init__()
        if layer == 0:
            self.pre_ln = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_epsilon)
        self.ln1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_epsilon)
        self.ln2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_epsilon)
        self.attention, self.feed_forward = attention, feed_forward


class Rwkv6PreTrainedModel(PreTrainedModel):
    config_class = Rwkv6Config
    base_model_prefix = "rwkv"
    _no_split_modules = ["RwkvBlock"]

    def _init_weights(self, module):
        """transformers' defaults, then RWKV-6's own parameters near BlinkDL's ranges (mixes in (0, 1), decay
        biases from slow to fast, small low-rank projections)."""
        super()._init_weights(module)
        if isinstance(module, (Rwkv6SelfAttention, Rwkv6FeedForward)):
            c = module.time_maa_k.shape[-1]
            ramp = torch.arange(c, dtype=torch.float32, device=module.time_maa_k.device) / c
            for i, (_, p) in enumerate(n for n in module.named_parameters(recurse=False) if "maa_" in n[0]):
                if p.dim() == 3 and p.shape[:2] == (1, 1):
                    init.copy_(p, (1 - ramp ** (0.3 + 0.1 * i)).view(1, 1, c))
        if isinstance(module, Rwkv6SelfAttention):
            a = module.time_decay.shape[-1]
            ramp = torch.arange(a, dtype=torch.float32, device=module.time_decay.device) / max(a - 1, 1)
            init.copy_(module.time_decay, (-6 + 5 * ramp ** 0.7).view(1, 1, a))
            init.copy_(module.time_faaaa, (0.1 * ((torch.arange(a) + 1) % 3 - 1)).view_as(module.time_faaaa))
            for p in (module.time_maa_w1, module.time_maa_w2, module.time_decay_w1, module.time_decay_w2):
                init.uniform_(p, -1e-2, 1e-2)


class Rwkv6Model(Rwkv6PreTrainedModel):
    def __init__(self, config: Rwkv6Config):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(RwkvBlock(config, i, Rwkv6SelfAttention(config), Rwkv6FeedForward(config))
                                    for i in range(config.num_hidden_layers))
        self.ln_out = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.post_init()

    def empty_state(self, n: int) -> RwkvState:
        cfg, p = self.config, self.embeddings.weight
        heads, size = cfg.attention_hidden_size // cfg.head_size, cfg.head_size
        x = [torch.zeros(n, cfg.hidden_size, device=p.device, dtype=p.dtype) for _ in self.blocks]
        s = [torch.zeros(n, heads, size, size, device=p.device) for _ in self.blocks]
        return RwkvState(x, s, [t.clone() for t in x])

    def run(self, ids: torch.Tensor, state: RwkvState | None = None) -> tuple[torch.Tensor, RwkvState]:
        """ids (B, T) after `state` (zero if None). Returns (ln_out hidden states (B, T, C), new state)."""
        state = state or self.empty_state(ids.shape[0])
        x, new = self.embeddings(ids), RwkvState([], [], [])
        for i, blk in enumerate(self.blocks):
            if i == 0:
                x = blk.pre_ln(x)
            h = blk.ln1(x)
            out, s = blk.attention(h, state.att_x[i], state.wkv[i])
            x = x + out
            new.att_x.append(h[:, -1])
            new.wkv.append(s)
            h = blk.ln2(x)
            x = x + blk.feed_forward(h, state.ffn_x[i])
            new.ffn_x.append(h[:, -1])
        return self.ln_out(x), new

    def forward(self, input_ids: torch.Tensor, **kwargs):
        return self.run(input_ids)[0]


class Rwkv6ForCausalLM(Rwkv6PreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"head.weight": "rwkv.embeddings.weight"}

    def __init__(self, config: Rwkv6Config):
        super().__init__(config)
        self.rwkv = Rwkv6Model(config)
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.head

    # models/rwkv_state.py: embedding accessors, generate() inputs (the whole sequence each step) and the
    # whole-sequence forward (input_ids (B, T), labels, attention_mask -> CausalLMOutput, left padding refused)
    get_input_embeddings, set_input_embeddings = input_embeddings, set_input_embeddings
    prepare_inputs_for_generation, forward = whole_sequence_inputs, causal_lm_forward
