"""The recurrent state of archbench's RWKV-6 / RWKV-7 models (models/rwkv6.py, models/rwkv7.py) and the batch
operations archbench's engine needs on it (families/rwkv6.py, families/rwkv7.py): keep rows, concatenate,
count bytes. Fixed size per row whatever the context length (Peng et al. 2024, 2025)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

_FIELDS = ("att_x", "wkv", "ffn_x")


@dataclass
class RwkvState:
    att_x: list[torch.Tensor]  # per layer (B, C): last ln1 / attn_norm output (time-mixing token shift)
    wkv: list[torch.Tensor]  # per layer (B, H, N, N) fp32: each head's matrix, laid out as BlinkDL's package
    #                          does: RWKV-7 S[b, h, value, key], RWKV-6 S[b, h, key, value]
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
