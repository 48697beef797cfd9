"""Helpers shared by the family modules (no family imports another's code): padding-free prefill of
recurrent models by row length, the fused-kernel check, the (conv, ssm) state and layer loop that Mamba
and Mamba-2 share (norm -> mixer -> residual per block, the head on the last position), and prefill / step of
archbench's own RWKV-5/6/7 models (models/: `base_model.run` carries an `RwkvState`)."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch


def prefill_by_length(seqs, state, fresh, run, select, cat, device):
    """Prefill of a recurrent family without padding: rows of equal length run together, starting from the
    batch-1 prefix `state` or from `fresh(n)`; `run(ids (n, T), start) -> (state, (n, V) logits)`.
    Returns (state, (B, V) logits) with rows in the order of `seqs` (token lists or a (B, T) tensor)."""
    seqs = seqs.tolist() if torch.is_tensor(seqs) else [list(s) for s in seqs]
    states, logits = [None] * len(seqs), [None] * len(seqs)
    for n in sorted({len(s) for s in seqs}):
        rows = [i for i, s in enumerate(seqs) if len(s) == n]
        start = select(state, torch.zeros(len(rows), dtype=torch.long)) if state else fresh(len(rows))
        st, lg = run(torch.tensor([seqs[i] for i in rows], device=device), start)
        for j, i in enumerate(rows):
            states[i], logits[i] = select(st, torch.tensor([j])), lg[j]
    return cat(states), torch.stack(logits)


def mamba_ssm_fused(x: torch.Tensor) -> bool:
    """Whether mamba-ssm's fused CUDA kernels can run on `x`'s device (detected, never required)."""
    return x.is_cuda and importlib.util.find_spec("mamba_ssm") is not None


@dataclass
class SsmState:
    conv: list[torch.Tensor]  # per layer (B, conv channels, conv_kernel - 1): last inputs of the conv
    ssm: list[torch.Tensor]  # per layer (B, ...) fp32: the SSM state


def ssm_run_layers(model, ids: torch.Tensor, state: SsmState, mix_fn) -> tuple[SsmState, torch.Tensor]:
    """Embeddings, residual blocks (norm -> mix_fn) and the head on the last position of a Mamba/Mamba-2
    model. ids (B, T) with a prefill mixer, or (B,) with a step mixer. Returns (state, (B, V) logits)."""
    bb = model.backbone
    x = bb.embeddings(ids)
    conv, ssm = [], []
    for i, layer in enumerate(bb.layers):
        out, c, h = mix_fn(layer.mixer, layer.norm(x), state.conv[i], state.ssm[i])
        x = x + out
        conv.append(c)
        ssm.append(h)
    last = x[:, -1] if x.dim() == 3 else x
    return SsmState(conv, ssm), model.lm_head(bb.norm_f(last)).float()


def ssm_prefill(model, seqs, state: SsmState | None, empty, mix_fn) -> tuple[SsmState, torch.Tensor]:
    """Equal-length rows prefill together from `state` (batch 1) or `empty(model, n, device)`, so padding
    never enters a state. Returns (state, (B, V) last logits)."""
    dev = model.lm_head.weight.device
    return prefill_by_length(seqs, state, lambda n: empty(model, n, dev),
                             lambda ids, start: ssm_run_layers(model, ids, start, mix_fn), ssm_select, ssm_cat, dev)


def ssm_select(state: SsmState, rows: torch.Tensor) -> SsmState:
    rows = rows.to(state.ssm[0].device)
    return SsmState([c[rows] for c in state.conv], [h[rows] for h in state.ssm])


def ssm_cat(states: list[SsmState]) -> SsmState:
    return SsmState([torch.cat(t) for t in zip(*(s.conv for s in states))],
                    [torch.cat(t) for t in zip(*(s.ssm for s in states))])


def ssm_state_bytes(state: SsmState) -> int:
    return sum(t.numel() * t.element_size() for t in state.conv + state.ssm)


SSM_STATE_OPS = dict(select=ssm_select, cat=ssm_cat, state_bytes=ssm_state_bytes)  # a Family's state functions


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def rwkv_run(model, ids: torch.Tensor, state):
    """ids (B, T) after `state` through an archbench RWKV model (models/rwkv5.py, rwkv6.py, rwkv7.py); returns
    (state, (B, V) fp32 logits of the last position)."""
    hidden, state = model.base_model.run(ids, state)
    return state, model.get_output_embeddings()(hidden[:, -1]).float()


def rwkv_prefill(model, seqs, state=None):
    """Prefill token lists (or a (B, T) tensor) after an optional batch-1 prefix `state`; rows of equal length
    run together. Returns (state, (B, V) logits of each row's last token)."""
    from archbench.models.rwkv_state import RwkvState

    return prefill_by_length(seqs, state, model.base_model.empty_state, lambda ids, start: rwkv_run(model, ids, start),
                             RwkvState.select, RwkvState.cat, model.get_output_embeddings().weight.device)


def rwkv_step(model, tokens: torch.Tensor, state):
    """One decode step for tokens (B,). Returns (state, (B, V) logits)."""
    return rwkv_run(model, tokens[:, None], state)


def rwkv_family(name: str, color: str, tiny: dict, lora_targets: list[str]):
    """The Family of one of archbench's own RWKV versions (model_type == family name == layer kind): the
    seed's RWKV prompt style, the RwkvState engine functions above, never left-padded (a padded token would
    enter the recurrent state; the model's forward refuses padded masks)."""
    from archbench.families import Family
    from archbench.models.rwkv_state import RwkvState

    return Family(name=name, model_types=frozenset({name}), color=color, tiny=tiny, seed_style="seed-rwkv",
                  lora_targets={"*": lora_targets}, pad_safe=False,
                  layer_kinds=lambda cfg: [name] * cfg.num_hidden_layers, prefill=rwkv_prefill, step=rwkv_step,
                  select=RwkvState.select, cat=RwkvState.cat, state_bytes=RwkvState.nbytes,
                  kernel=lambda model: f"torch-wkv{name[-1]}-chunked")
