"""CPU linear layers through oneDNN with weights packed once, for archbench's engine.

PyTorch's CPU `F.linear` calls MKL's sgemm, which on some CPUs (AMD EPYC among them: MKL takes a generic
path there) reaches well under half of the fp32 FMA peak, and re-packs the weight on every call, which
dominates the skinny products of decode (a batch of 1-8 rows). oneDNN's linear with a weight reordered
once into its blocked layout (what intel-extension-for-pytorch's `ipex.optimize` does, and inductor's
CPU weight prepacking) reaches the peak on large products and runs decode shapes 2-4x faster on this
2-core EPYC (measured: benchmarks/engine_vs_hf.py). Results agree with `F.linear` to fp32 rounding.

`packed(model)` is a context manager: inside it every fp32 `nn.Linear` and GPT-2 `Conv1D` of `model` runs
through oneDNN when the product has at least MIN_MACS multiply-adds (below that, oneDNN's fixed call cost
makes plain `F.linear` faster: both measured from 1 to 256 rows on weights from 128x128 to 1536x576); the
packed copy is cached on the module and rebuilt if the weight changes. Outside it the model is untouched (the
`--engine hf` path never sees it). `kernel(device, dtype)` names the path taken.
"""
from __future__ import annotations

import types
from contextlib import contextmanager

import torch
from torch import nn

ROWS_HINT = 8  # oneDNN picks the packed layout for this many rows; measured equal from 1 to 1,500 rows
MIN_MACS = 2**19  # smaller products stay on F.linear: oneDNN's ~14 us call overhead loses below this


def available(device: torch.device, dtype: torch.dtype) -> bool:
    """oneDNN prepacked linears apply: fp32 on a CPU with a oneDNN build of PyTorch."""
    return (device.type == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def kernel(device: torch.device, dtype: torch.dtype) -> str:
    return "onednn-prepacked" if available(device, dtype) else "torch"


def _weight(module) -> torch.Tensor:
    """(out, in) weight: GPT-2's Conv1D stores (in, out)."""
    return module.weight if isinstance(module, nn.Linear) else module.weight.t()


def pack(weight: torch.Tensor) -> torch.Tensor:
    """oneDNN's blocked copy of an (out, in) fp32 weight."""
    with torch.no_grad():
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), ROWS_HINT)


def linear(x: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., in) @ weight.T + bias with a weight from `pack`."""
    return torch.ops.mkldnn._linear_pointwise(x, packed_weight, bias, "none", [], "")


def _packed(module) -> torch.Tensor:
    w = module.weight
    key = (w.data_ptr(), w._version)  # a weight changed in place (training) or replaced is packed again
    if getattr(module, "_onednn_key", None) != key:
        module._onednn_weight, module._onednn_key = pack(_weight(module)), key
    return module._onednn_weight


def _forward(module, x: torch.Tensor) -> torch.Tensor:
    if x.numel() // x.shape[-1] * module.weight.numel() < MIN_MACS:
        return type(module).forward(module, x)
    return linear(x, _packed(module), module.bias)


def _eligible(module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return (isinstance(module, (nn.Linear, Conv1D)) and module.weight.dtype == torch.float32
            and module.weight.device.type == "cpu" and "forward" not in vars(module))  # accelerate hooks own it


@contextmanager
def packed(model: nn.Module):
    """Run `model`'s fp32 CPU linears through oneDNN with prepacked weights inside the block (no-op where
    `available` is false)."""
    if not available(next(model.parameters()).device, next(model.parameters()).dtype):
        yield
        return
    mods = [m for m in model.modules() if _eligible(m)]
    for m in mods:
        m.forward = types.MethodType(_forward, m)
    try:
        yield
    finally:
        for m in mods:
            del m.forward
