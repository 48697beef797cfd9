"""Training rows for the LoRA recipe (finetune.py): rendering, label masking, batching, data order, and the loss.

A row is the zero-shot eval prompt (`prompts.render`, the style `archbench eval` uses), then " answer" and EOS,
so the model learns to stop. Prompt and answer are tokenised apart and their ids concatenated: the loss (answer
+ EOS by default, `loss_on="all"` for every token) starts exactly at the boundary, as in the answer-only loss
of instruction tuning (e.g. torchtune's `train_on_input=False`). A row over `max_length` gets its context cut by
evaluation's rule (`prompts.fit_prompt`); the answer is never cut. Optimizer step s reads slice s of a
permutation seeded by (seed, epoch), so data order depends only on (seed, s).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from archbench import prompts

IGNORE = -100  # label of a token that carries no loss


@dataclass(frozen=True)
class Sample:
    ids: list[int]  # prompt ids + answer ids + EOS
    labels: list[int]  # IGNORE on every token without loss
    text: str  # the rendered row (hashed into finetune.json)


def build_samples(examples, style, tokenizer, max_length: int, loss_on: str = "answer") -> list[Sample]:
    """Render and tokenise training rows: prompt ids + ids of " answer" + EOS, the prompt masked out."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no end-of-text token to end the answers with")
    texts = [prompts.render(style, e, [], tokenizer) for e in examples]
    answers = [" " + e.answers[0] for e in examples]
    prompt_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    answer_ids = [a + [tokenizer.eos_token_id] for a in tokenizer(answers, add_special_tokens=False)["input_ids"]]
    samples = []
    for ex, text, answer, p, a in zip(examples, texts, answers, prompt_ids, answer_ids, strict=True):
        if len(p) + len(a) > max_length:  # shorten the context, never the answer
            text = prompts.fit_prompt(style, ex, [], tokenizer, max_length, reserve=len(a)).text
            p = tokenizer(text, add_special_tokens=False)["input_ids"]
        labels = list(p) + a if loss_on == "all" else [IGNORE] * len(p) + a
        samples.append(Sample(ids=list(p) + a, labels=labels, text=text + answer))
    return samples


def collate(samples: list[Sample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch to its longest row (padding carries no loss)."""
    width = max(len(s.ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id)
    labels = torch.full((len(samples), width), IGNORE)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for i, s in enumerate(samples):
        ids[i, :len(s.ids)], labels[i, :len(s.ids)], mask[i, :len(s.ids)] = (
            torch.tensor(s.ids), torch.tensor(s.labels), 1)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def targets(sample: Sample) -> int:
    """Tokens predicted with loss: every labelled token but the first (nothing predicts it)."""
    return sum(1 for t in sample.labels[1:] if t != IGNORE)


def step_rows(step: int, n: int, per_step: int, seed: int) -> list[int]:
    """Row indices of optimizer step `step`: a slice of the permutation seeded by (seed, epoch)."""
    per_epoch = n // per_step
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    return perm[pos * per_step:(pos + 1) * per_step].tolist()


def loss_sum(model, batch: dict) -> torch.Tensor:
    """Summed cross-entropy of the labelled tokens; logits are computed only where a target follows."""
    keep = F.pad(batch["labels"][:, 1:] != IGNORE, (0, 1), value=False)  # (B, T): next token has a label
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   logits_to_keep=keep).logits  # (N, V), N = labelled tokens in the batch
    return F.cross_entropy(logits.float(), batch["labels"][:, 1:][keep[:, :-1]], reduction="sum")
