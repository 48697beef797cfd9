"""The recurrent state of archbench's RWKV-5 / RWKV-6 / RWKV-7 models (models/rwkv5.py, rwkv6.py, rwkv7.py) and
the batch operations archbench's engine needs on it (families/rwkv5.py, rwkv6.py, rwkv7.py): keep rows, concatenate,
count bytes. Fixed size per row whatever the context length (Peng et al. 2024, 2025). Also the whole-sequence
causal-LM plumbing the model classes share as methods (`causal_lm_forward`, the embedding accessors,
`whole_sequence_inputs`)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import CausalLMOutput
from transformers.modeling_utils import slice_logits_to_keep

_FIELDS = ("att_x", "wkv", "ffn_x")


@dataclass
class RwkvState:
    att_x: list[torch.Tensor]  # per layer (B, C): last ln1 / attn_norm output (time-mixing token shift)
    wkv: list[torch.Tensor]  # per layer (B, H, N, N) fp32: each head's matrix, laid out as BlinkDL's package
    #                          does: RWKV-7 S[b, h, value, key], RWKV-5/6 S[b, h, key, value]
    ffn_x: list[torch.Tensor]  # per layer (B, C): last ln2 / ffn_norm output (channel-mixing token shift)

    def select(self, rows: torch.Tensor) -> RwkvState:
        """The rows `rows` (B',) of the batch, in that order."""
        rows = rows.to(self.wkv[0].device)
        return RwkvState(*([t[rows] for t in getattr(self, f)] for f in _FIELDS))

    @staticmethod
    def cat(states: list[RwkvState]) -> RwkvState:
        """Batches concatenated row-wise."""
        return RwkvState(*([torch.cat(t) for t in zip(*(getattr(s, f) for s in states))] for f in _FIELDS))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for f in _FIELDS for t in getattr(self, f))


def causal_lm_forward(model, input_ids: torch.Tensor, labels=None, attention_mask=None,
                      logits_to_keep: int | torch.Tensor = 0, **kwargs) -> CausalLMOutput:
    """The whole sequence in parallel from the zero state (training and scoring) through `model.base_model.run`
    and the output head. input_ids (B, T); labels (B, T) with -100 for ignored positions. Right padding is
    harmless (nothing real follows it); left padding is refused, it would enter the recurrent state.
    Returns CausalLMOutput(loss, logits (B, T, V))."""
    if attention_mask is not None and bool((attention_mask[:, 1:] > attention_mask[:, :-1]).any()):
        raise ValueError(f"{model.config.model_type}: left padding is not supported (padding would enter the "
                         "state); pad on the right (the fine-tuning batches) or run rows of equal length together")
    hidden = model.base_model.run(input_ids)[0]
    logits = model.get_output_embeddings()(slice_logits_to_keep(hidden, logits_to_keep))  # transformers' rule
    loss = None
    if labels is not None:  # with logits_to_keep = 0 (all positions)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
    return CausalLMOutput(loss=loss, logits=logits)


# Methods of every RWKV *ForCausalLM class (assigned in its body): the base model keeps `embeddings`.
def input_embeddings(model) -> torch.nn.Module:
    return model.base_model.embeddings


def set_input_embeddings(model, value: torch.nn.Module) -> None:
    model.base_model.embeddings = value


def whole_sequence_inputs(model, input_ids: torch.Tensor, **kwargs) -> dict:
    """transformers' `generate` (archbench's --engine hf) reruns the whole sequence each step: no cache object,
    so correct but quadratic; archbench's engine carries the state instead."""
    return {"input_ids": input_ids}
