"""RWKV-7 "Goose" (Peng et al. 2025, "RWKV-7 Goose with Expressive Dynamic State Evolution") as a transformers
model: `Rwkv7Config` (model_type "rwkv7") and `Rwkv7ForCausalLM`, in plain PyTorch (CPU and GPU).

The arithmetic follows BlinkDL's reference, the `rwkv` PyPI package (`rwkv/model.py`, `RWKV_x070_TMix_*` and
`RWKV_x070_CMix_*`) and RWKV-LM's RWKV-v7; the state update is models/wkv7.py. Per block: LayerNorm -> time
mixing (token shift; r, k, v projections; low-rank decay w, in-context learning rate a, value residual to the
first layer's v, gate g; the wkv7 state update; per-head GroupNorm; the r.k bonus; gate; output) -> residual ->
LayerNorm -> channel mixing (token shift; squared-ReLU MLP) -> residual. Layer 0 also normalises the embedding.

Parameter names are those of flash-linear-attention's `RWKV7ForCausalLM` (the fla-hub HF-format repos, config
fields included), so such a directory loads here without remote code (fla's older fused `attn.x_x` tensor is not
read). Where each comes from in BlinkDL's `.pth` (see models/rwkv_convert.py; `.T` = transposed):

    emb.weight                  -> model.embeddings.weight       ln_out.{weight,bias}  -> model.norm.*
    head.weight                 -> lm_head.weight                blocks.0.ln0.*        -> model.layers.0.pre_norm.*
    blocks.i.ln1.* / ln2.*      -> model.layers.i.attn_norm.* / ffn_norm.*
    blocks.i.att.x_{r,w,k,v,a,g} (1, 1, C)      -> model.layers.i.attn.x_{r,w,k,v,a,g} (1, 1, C)
    blocks.i.att.k_k, k_a (1, 1, C)             -> attn.k_k, attn.k_a (C,);  att.r_k (H, N) -> attn.r_k
    blocks.i.att.{receptance,key,value,output}.weight -> attn.{r,k,v,o}_proj.weight
    blocks.i.att.{w,a,v}1 (C, D) / {w,a,v}2 (D, C) / {w,a,v}0 (1, 1, C)
                                -> attn.{w,a,v}_lora.lora.0.weight (.T) / lora.2.weight (.T) / lora.2.bias
    blocks.i.att.g1, g2         -> attn.g_lora.lora.0.weight (.T), lora.2.weight (.T) (no bias)
    blocks.i.att.ln_x.*         -> attn.g_norm.*  (GroupNorm, H groups, eps = head_dim * norm_eps = 64e-5)
    blocks.i.ffn.x_k (1, 1, C)  -> ffn.x_k (C,);  blocks.i.ffn.{key,value}.weight -> ffn.{key,value}.weight
    blocks.0.att.v0/v1/v2       -> not used (layer 0 has no value residual)
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers import initialization as init

from archbench.models.rwkv_state import (
    RwkvState,
    causal_lm_forward,
    input_embeddings,
    set_input_embeddings,
    whole_sequence_inputs,
)
from archbench.models.wkv7 import wkv7

DECAY_SCALE = math.exp(-0.5)  # log w = -exp(-0.5) * sigmoid(.): every decay lies in (0.545, 1)


def shift(x: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """Token shift: x (B, T, C) -> the previous position's x, `prev` (B, C) before the first."""
    return prev[:, None] if x.shape[1] == 1 else torch.cat([prev[:, None], x[:, :-1]], dim=1)


class Rwkv7Config(PretrainedConfig):
    """RWKV-7 hyper-parameters; field names follow fla's RWKV7Config so fla-hub config.json files read as is."""

    model_type = "rwkv7"

    def __init__(self, vocab_size=65536, hidden_size=768, num_hidden_layers=12, head_dim=64,
                 intermediate_size=None, hidden_ratio=4, decay_low_rank_dim=64, gate_low_rank_dim=128,
                 a_low_rank_dim=64, v_low_rank_dim=32, norm_eps=1e-5, initializer_range=0.02,
                 tie_word_embeddings=False, **kwargs):
        self.vocab_size, self.hidden_size, self.num_hidden_layers = vocab_size, hidden_size, num_hidden_layers
        self.head_dim = head_dim
        self.num_heads = hidden_size // head_dim
        self.hidden_ratio = hidden_ratio
        self.intermediate_size = intermediate_size or int(hidden_size * hidden_ratio)
        self.decay_low_rank_dim, self.gate_low_rank_dim = decay_low_rank_dim, gate_low_rank_dim
        self.a_low_rank_dim, self.v_low_rank_dim = a_low_rank_dim, v_low_rank_dim
        self.norm_eps, self.initializer_range = norm_eps, initializer_range
        for key in ("attn_mode", "fuse_norm", "fuse_cross_entropy", "use_l2warp", "hidden_act", "norm_first"):
            kwargs.pop(key, None)  # fla kernel switches: meaningless here
        value_dim = kwargs.pop("value_dim", None)
        if value_dim is not None and any(d != hidden_size for d in ([value_dim] if isinstance(value_dim, int)
                                                                    else value_dim)):
            raise ValueError(f"rwkv7 config: value_dim {value_dim} != hidden_size {hidden_size} is not supported")
        if hidden_size % head_dim:
            raise ValueError(f"rwkv7 config: hidden_size {hidden_size} is not a multiple of head_dim {head_dim}")
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


Rwkv7State = RwkvState  # per layer: token shifts (B, C) and the wkv matrix S[b, h, value, key] (B, H, N, N)


class LoRA(nn.Module):
    """x -> lora.2(act(lora.0(x))): RWKV-7's low-rank projections (fla's layout, hence the Sequential; called
    through F.linear, which saves four module calls per projection in the one-token decode step)."""

    def __init__(self, dim: int, rank: int, act: nn.Module, bias: bool = True):
        super().__init__()
        self.lora = nn.Sequential(nn.Linear(dim, rank, bias=False), act, nn.Linear(rank, dim, bias=bias))

    def forward(self, x):
        down, act, up = self.lora
        return F.linear(act(F.linear(x, down.weight)), up.weight, up.bias)


class Rwkv7Attention(nn.Module):
    """Time mixing (BlinkDL's RWKV_x070_TMix)."""

    def __init__(self, cfg: Rwkv7Config, layer: int):
        super().__init__()
        c, self.layer, self.heads, self.eps = cfg.hidden_size, layer, cfg.num_heads, cfg.head_dim * cfg.norm_eps
        for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"):
            setattr(self, name, nn.Parameter(torch.zeros(1, 1, c)))
        self.k_k, self.k_a = nn.Parameter(torch.zeros(c)), nn.Parameter(torch.zeros(c))
        self.r_k = nn.Parameter(torch.zeros(cfg.num_heads, cfg.head_dim))
        self.r_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(c, c, bias=False) for _ in range(4))
        self.w_lora = LoRA(c, cfg.decay_low_rank_dim, nn.Tanh())
        if layer > 0:
            self.v_lora = LoRA(c, cfg.v_low_rank_dim, nn.Identity())
        self.a_lora = LoRA(c, cfg.a_low_rank_dim, nn.Identity())
        self.g_lora = LoRA(c, cfg.gate_low_rank_dim, nn.Sigmoid(), bias=False)
        self.g_norm = nn.GroupNorm(cfg.num_heads, c, eps=self.eps)

    def forward(self, x, prev, wkv_state, v_first, wkv=wkv7):
        """x (B, T, C) normalised; prev (B, C) the token before x; wkv_state (B, H, N, N) fp32; v_first
        (B, T, C) from layer 0 (None there); `wkv` the state update (wkv7.wkv7's contract; the lab trains
        with its own backward). Returns (out (B, T, C), wkv_state, v_first)."""
        bsz, t, c = x.shape
        xx = shift(x, prev) - x  # token shift
        xr, xw, xk, xv, xa, xg = (torch.addcmul(x, xx, m) for m in (self.x_r, self.x_w, self.x_k, self.x_v,
                                                                      self.x_a, self.x_g))
        r, k, v = self.r_proj(xr), self.k_proj(xk), self.v_proj(xv)
        logw = -DECAY_SCALE * torch.sigmoid(self.w_lora(xw).float())  # (B, T, C): log decay
        a = torch.sigmoid(self.a_lora(xa))
        g = self.g_lora(xg)
        heads = (bsz, t, self.heads, -1)
        kk = F.normalize((k * self.k_k).view(heads), dim=-1)  # (B, T, H, N)
        k = k * (1 + (a - 1) * self.k_a)
        if self.layer == 0:
            v_first = v
        else:
            v = torch.lerp(v, v_first, torch.sigmoid(self.v_lora(xv)))
        o, wkv_state = wkv(r.view(heads), logw.view(heads), k.view(heads), v.view(heads), -kk,
                           kk * a.view(heads), wkv_state)  # o (B, T, H, N) fp32
        o = F.group_norm(o.reshape(bsz * t, c).to(x.dtype), self.heads, self.g_norm.weight, self.g_norm.bias,
                         self.eps).view(bsz, t, c)
        bonus = (r * k * self.r_k.flatten()).view(heads).sum(-1, keepdim=True) * v.view(heads)  # (B, T, H, N)
        return self.o_proj((o + bonus.reshape(bsz, t, c)) * g), wkv_state, v_first


class Rwkv7FeedForward(nn.Module):
    """Channel mixing (BlinkDL's RWKV_x070_CMix): token shift, then a squared-ReLU MLP."""

    def __init__(self, cfg: Rwkv7Config):
        super().__init__()
        self.x_k = nn.Parameter(torch.zeros(cfg.hidden_size))
        self.key = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.value = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x, prev):
        """x (B, T, C), prev (B, C). Returns (B, T, C)."""
        return self.value(torch.relu(self.key(torch.addcmul(x, shift(x, prev) - x, self.x_k))).square())


class Rwkv7Block(nn.Module):
    def __init__(self, cfg: Rwkv7Config, layer: int):
        super().__init__()
        if layer == 0:
            self.pre_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.attn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.attn = Rwkv7Attention(cfg, layer)
        self.ffn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.ffn = Rwkv7FeedForward(cfg)


class Rwkv7PreTrainedModel(PreTrainedModel):
    config_class = Rwkv7Config
    base_model_prefix = "model"
    _no_split_modules = ["Rwkv7Block"]

    def _init_weights(self, module):
        """transformers' defaults (normal(initializer_range) linears and embeddings, unit norms), then
        RWKV-7's own parameters near the ranges of BlinkDL's initialisation (RWKV-LM v7 `RWKV_Tmix_x070`)."""
        super()._init_weights(module)
        if isinstance(module, Rwkv7Attention):
            c = module.k_k.shape[0]
            ramp = torch.arange(c, dtype=torch.float32, device=module.k_k.device) / c  # (C,) 0 .. 1
            for i, name in enumerate(("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")):
                init.copy_(getattr(module, name), (1 - ramp ** (0.2 + 0.15 * i)).view(1, 1, c))
            init.constant_(module.k_k, 0.85)
            init.constant_(module.k_a, 1.0)
            init.constant_(module.r_k, -0.04)
            init.copy_(module.w_lora.lora[2].bias, -6 + 6 * ramp ** 1.5 + 0.5)  # slow .. fast decay
            init.copy_(module.a_lora.lora[2].bias, -0.19 + 0.4 * (ramp - 0.5))
            if module.layer > 0:
                init.copy_(module.v_lora.lora[2].bias, 0.73 - 0.4 * (ramp - 0.5))
        elif isinstance(module, Rwkv7FeedForward):
            c = module.x_k.shape[0]
            init.copy_(module.x_k, 1 - (torch.arange(c, dtype=torch.float32, device=module.x_k.device) / c) ** 0.5)


class Rwkv7Model(Rwkv7PreTrainedModel):
    def __init__(self, config: Rwkv7Config):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Rwkv7Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.post_init()

    def empty_state(self, n: int) -> Rwkv7State:
        """The zero state of n rows (what every sequence starts from)."""
        cfg, p = self.config, self.embeddings.weight
        x = [torch.zeros(n, cfg.hidden_size, device=p.device, dtype=p.dtype) for _ in self.layers]
        s = [torch.zeros(n, cfg.num_heads, cfg.head_dim, cfg.head_dim, device=p.device) for _ in self.layers]
        return Rwkv7State(x, s, [t.clone() for t in x])

    def run(self, ids: torch.Tensor, state: Rwkv7State | None = None) -> tuple[torch.Tensor, Rwkv7State]:
        """ids (B, T) after `state` (zero if None). Returns (final-normed hidden states (B, T, C), new state)."""
        state = state or self.empty_state(ids.shape[0])
        x, v_first = self.embeddings(ids), None
        new = Rwkv7State([], [], [])
        for i, blk in enumerate(self.layers):
            if i == 0:
                x = blk.pre_norm(x)
            h = blk.attn_norm(x)
            out, s, v_first = blk.attn(h, state.att_x[i], state.wkv[i], v_first)
            x = x + out
            new.att_x.append(h[:, -1])
            new.wkv.append(s)
            h = blk.ffn_norm(x)
            x = x + blk.ffn(h, state.ffn_x[i])
            new.ffn_x.append(h[:, -1])
        return self.norm(x), new

    def forward(self, input_ids: torch.Tensor, **kwargs):
        return self.run(input_ids)[0]


class Rwkv7ForCausalLM(Rwkv7PreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embeddings.weight"}

    def __init__(self, config: Rwkv7Config):
        super().__init__(config)
        self.model = Rwkv7Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    # models/rwkv_state.py: embedding accessors, generate() inputs (the whole sequence each step) and the
    # whole-sequence forward (input_ids (B, T), labels, attention_mask -> CausalLMOutput, left padding refused)
    get_input_embeddings, set_input_embeddings = input_embeddings, set_input_embeddings
    prepare_inputs_for_generation, forward = whole_sequence_inputs, causal_lm_forward
