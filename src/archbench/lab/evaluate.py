"""Evaluation of lab models: validation loss and bits per character on held-out text (every token of the
split once, nanoGPT's metric on the whole split instead of its 200 sampled batches), and MQAR accuracy per
(sequence length, pairs) point of a test grid (Zoology's metric: the share of queries whose answer is the
argmax), lengths beyond training included, with the bytes of the state the model holds after reading one
sequence of that length (KV cache or recurrent state, measured on the engine's own prefill: Zoology's
recall-memory axis). Results go to the caller's dict and to archbench's store.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from archbench.lab import mqar

IGNORE = mqar.IGNORE


class LMLoss(torch.nn.Module):
    """A causal LM plus its loss, as one module (what accelerate/DDP wraps): the output head runs only on
    positions with a label, so a large vocabulary never builds (B, T, V) logits. Keeps the model under `lm`."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, x: torch.Tensor, y: torch.Tensor, reduction: str = "sum"):
        """x, y (B, T) -> (summed or per-target cross-entropy, logits (N, V) of the N labelled positions)."""
        out = self.lm.base_model(input_ids=x, use_cache=False)  # the backbone, final norm applied
        hidden = out if torch.is_tensor(out) else out[0]  # (B, T, d); archbench's own models return a tensor
        keep = y != IGNORE
        logits = self.lm.get_output_embeddings()(hidden[keep]).float()  # (N, V)
        return F.cross_entropy(logits, y[keep], reduction=reduction), logits


@torch.no_grad()
def text_loss(loss_mod: LMLoss, x: torch.Tensor, y: torch.Tensor, batch_size: int, device) -> dict:
    """Mean cross-entropy (nats) and bits per character over windows x, y (N, T)."""
    was = loss_mod.training
    loss_mod.eval()
    total, count = 0.0, 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        total += loss_mod(xb, yb)[0].item()
        count += int((yb != IGNORE).sum())
    loss_mod.train(was)
    return {"val_loss": total / count, "val_bpc": total / count / math.log(2), "val_tokens": count}


@torch.inference_mode()
def state_bytes(lm, inputs: torch.Tensor) -> int:
    """Bytes of the state (KV cache or recurrent state) model `lm` holds after prefilling inputs (1, T)."""
    from archbench import families

    fam = families.get(families.family_of(lm.config.model_type))
    state, _ = fam.prefill(lm, inputs)
    return int(fam.state_bytes(state))


@torch.no_grad()
def mqar_accuracy(loss_mod: LMLoss, segments: list[mqar.Segment], batch_size: int, device,
                  with_state: bool = False) -> list[dict]:
    """Accuracy of every test segment: [{seq_len, pairs, accuracy, queries, loss}] (+ state_bytes of one
    sequence with `with_state`)."""
    was = loss_mod.training
    loss_mod.eval()
    rows = []
    for seg in segments:
        right, total, loss = 0, 0, 0.0
        for i in range(0, len(seg.inputs), batch_size):
            x, y = seg.inputs[i:i + batch_size].to(device), seg.labels[i:i + batch_size].to(device)
            part, logits = loss_mod(x, y)
            right += int((logits.argmax(-1) == y[y != IGNORE]).sum())
            total += int((y != IGNORE).sum())
            loss += part.item()
        rows.append({"seq_len": seg.seq_len, "pairs": seg.pairs, "accuracy": right / total, "queries": total,
                     "loss": loss / total})
        if with_state:
            rows[-1]["state_bytes"] = state_bytes(loss_mod.lm, seg.inputs[:1].to(device))
    loss_mod.train(was)
    return rows


def store_results(db: str, run_id: str, results: dict) -> None:
    """Write evaluation rows to archbench's store (records of kind 'train', keys 'val' and 'mqar-LxP')."""
    from archbench.store import Store

    with Store(db) as store:
        if "val_loss" in results:
            store.put(run_id, "train", "val", {k: results[k] for k in ("val_loss", "val_bpc", "val_tokens")})
        for row in results.get("mqar", []):
            store.put(run_id, "train", f"mqar-{row['seq_len']}x{row['pairs']}", row)
