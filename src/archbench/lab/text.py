"""Character-level language-model data from any text file, with a tokenizer that travels with the model.

Follows nanoGPT's `data/shakespeare_char/prepare.py` (Karpathy): the vocabulary is the sorted set of the
file's characters, the first 90% of the text trains and the last 10% validates; training batches are random
windows of `context` + 1 characters. The tokenizer is a `tokenizers` WordLevel model over single characters
(ids in nanoGPT's order, then `<|endoftext|>` and `<unk>`), wrapped in transformers' PreTrainedTokenizerFast
and saved next to the model, so `AutoTokenizer.from_pretrained(model_dir)` - and therefore every archbench
command - reads a trained model. MQAR models get the same kind of tokenizer over their integer tokens.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

EOS, UNK = "<|endoftext|>", "<unk>"
TRAIN_FRACTION = 0.9  # nanoGPT's split


@dataclass(frozen=True)
class TextData:
    train: torch.Tensor  # (N_train,) int64 token ids
    val: torch.Tensor  # (N_val,) int64
    chars: list[str]  # id -> character, ids 0 .. len(chars) - 1
    sha256: str  # of the file's bytes


def load(path: str | Path) -> TextData:
    """Read a UTF-8 text file and split it 90/10; one-line errors for a missing, unreadable or tiny file."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--text {path}: no such file")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"--text {path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if len(text) < 100:
        raise ValueError(f"--text {path}: {len(text)} characters, too few to train on")
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    cut = int(TRAIN_FRACTION * len(ids))
    return TextData(ids[:cut], ids[cut:], chars, hashlib.sha256(raw).hexdigest())


def batch(data: torch.Tensor, step: int, batch_size: int, context: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Global batch of optimizer step `step`: random windows (nanoGPT's get_batch), a function of (seed, step)
    only, so every model and every process count sees the same rows. Returns x, y (batch_size, context)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    start = torch.randint(len(data) - context - 1, (batch_size,), generator=g)
    rows = torch.stack([data[s:s + context + 1] for s in start.tolist()])  # (B, context + 1)
    return rows[:, :-1], rows[:, 1:]


def windows(data: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole split as consecutive non-overlapping windows (every token predicted once, the last partial
    window dropped). Returns x, y (N, context)."""
    n = (len(data) - 1) // context
    x = data[:n * context].view(n, context)
    y = data[1:n * context + 1].view(n, context)
    return x, y


def tokenizer(symbols: list[str], split: str = "char"):
    """A PreTrainedTokenizerFast whose ids 0.. are `symbols`, then EOS and UNK. split="char": one token per
    character, decoded by concatenation; split="space": whitespace-separated symbols (MQAR's 't17' tokens)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({EOS: len(vocab), UNK: len(vocab) + 1})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    if split == "char":
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tok.decoder = decoders.Fuse()
    else:
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([EOS, UNK])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, unk_token=UNK, pad_token=EOS,
                                   bos_token=None, clean_up_tokenization_spaces=False)


def mqar_symbols(vocab: int) -> list[str]:
    """Symbols of an MQAR vocabulary: token i is 't{i}'."""
    return [f"t{i}" for i in range(vocab)]
