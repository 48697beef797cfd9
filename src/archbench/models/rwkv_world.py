"""The RWKV "world" tokenizer (BlinkDL; used by RWKV-4-world, RWKV-5/6/7 world models) as a transformers
tokenizer, without remote code.

The vocabulary is BlinkDL's `rwkv_vocab_v20230424.txt` (shipped by the `rwkv` PyPI package; saved beside a
model with `save_pretrained`): one token per line, `id python-literal byte-length`, ids 1..65529, id 0 is the
end-of-text token. Encoding is greedy longest match on the UTF-8 bytes, as the package's `TRIE_TOKENIZER`
(`rwkv/rwkv_tokenizer.py`) does: at each position take the longest vocabulary entry that the remaining bytes
start with. Here the trie is nested dicts. Token strings are the token's bytes read as latin-1 (one char per
byte, so tokens that split a multi-byte UTF-8 character still round-trip); decoding joins the bytes and reads
them as UTF-8.

The hub's RWKV repos declare the same tokenizer as remote code under other class names (`REMOTE_NAMES`);
`for_remote_code` gives this class for them instead (loading.py asks it first), so they load without remote code.
"""
from __future__ import annotations

import ast
import functools
import importlib.util
import shutil
from pathlib import Path

from transformers import PreTrainedTokenizer

VOCAB_FILE = "rwkv_vocab_v20230424.txt"
_END = -1  # trie key holding the id of the token that ends at a node
# tokenizer_config.json `tokenizer_class` of the hub repos whose remote code is this tokenizer: RWKV/rwkv-4-world-*
# (RWKVWorldTokenizer), RWKV/rwkv-5-world-* (Rwkv5Tokenizer), RWKV/v6-Finch-*-HF (RwkvTokenizer)
REMOTE_NAMES = frozenset({"RWKVWorldTokenizer", "Rwkv5Tokenizer", "RwkvTokenizer"})


def package_vocab() -> Path | None:
    """The vocabulary file inside the installed `rwkv` package (found without importing it), or None."""
    spec = importlib.util.find_spec("rwkv")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / VOCAB_FILE
    return path if path.is_file() else None


def read_vocab(path: str | Path) -> dict[bytes, int]:
    """token bytes -> id from a world vocabulary file; a malformed line is refused naming the file."""
    vocab = {}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        try:
            idx, rest = line.split(" ", 1)
            literal, length = rest.rsplit(" ", 1)
            tok = ast.literal_eval(literal)
            tok = tok.encode("utf-8") if isinstance(tok, str) else tok
            if len(tok) != int(length):
                raise ValueError("length mismatch")
        except (ValueError, SyntaxError) as err:
            raise ValueError(f"{path}: line {n} is not `id literal length` ({err})") from None
        vocab[tok] = int(idx)
    return vocab


@functools.lru_cache(maxsize=4)
def _parsed(path: str) -> tuple[dict[str, int], dict]:
    """(token string -> id, byte trie) of a vocabulary file, built once per process (~1 s for 65k tokens)."""
    encoder = {tok.decode("latin-1"): i for tok, i in read_vocab(path).items()}
    trie: dict = {}
    for s, i in encoder.items():
        node = trie
        for byte in s.encode("latin-1"):
            node = node.setdefault(byte, {})
        node[_END] = i
    return encoder, trie


class RwkvWorldTokenizer(PreTrainedTokenizer):
    """BlinkDL's world tokenizer: greedy longest byte match over a 65,529-entry vocabulary (+ id 0)."""

    vocab_files_names = {"vocab_file": VOCAB_FILE}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file: str, eos_token="<|endoftext|>", **kwargs):
        self.encoder = dict(_parsed(str(Path(vocab_file).resolve()))[0])
        self.encoder[eos_token] = 0
        self.decoder = {i: s for s, i in self.encoder.items()}
        self.vocab_file = vocab_file
        self.trie = _parsed(str(Path(vocab_file).resolve()))[1]  # shared, never modified
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        kwargs.setdefault("split_special_tokens", True)  # text "<|endoftext|>" is plain bytes, as in BlinkDL's
        super().__init__(eos_token=eos_token, pad_token=kwargs.pop("pad_token", eos_token), **kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.encoder) | self.added_tokens_encoder

    def encode_bytes(self, data: bytes) -> list[int]:
        """Greedy longest match; every single byte is in the vocabulary, so it always advances."""
        ids, pos = [], 0
        while pos < len(data):
            node, best, end, j = self.trie, None, pos, pos
            while j < len(data) and data[j] in node:
                node = node[data[j]]
                j += 1
                if _END in node:
                    best, end = node[_END], j
            if best is None:
                raise ValueError(f"byte {data[pos]} at {pos} is not in the world vocabulary")
            ids.append(best)
            pos = end
        return ids

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return [self.decoder[i] for i in self.encode_bytes(text.encode("utf-8"))]

    def _convert_token_to_id(self, token: str) -> int:
        return self.encoder[token]

    def _convert_id_to_token(self, index: int) -> str:
        return self.decoder[index]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return "".join(t if t in self.added_tokens_encoder else t.encode("latin-1").decode("utf-8", "replace")
                       for t in _merge_bytes(tokens, self.added_tokens_encoder))

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        out = Path(save_directory) / ((filename_prefix + "-" if filename_prefix else "") + VOCAB_FILE)
        if Path(self.vocab_file).resolve() != out.resolve():
            shutil.copyfile(self.vocab_file, out)
        return (str(out),)


def for_remote_code(source: str) -> RwkvWorldTokenizer | None:
    """The world tokenizer for a model directory or hub id whose tokenizer_config.json names one of
    `REMOTE_NAMES`, read from the vocabulary file beside the model or, when there is none (RWKV-4 world repos ship
    a JSON form of it), from the `rwkv` package's copy of the same vocabulary; None for any other tokenizer."""
    from transformers.models.auto.tokenization_auto import get_tokenizer_config
    from transformers.utils import cached_file

    if get_tokenizer_config(source).get("tokenizer_class") not in REMOTE_NAMES:
        return None
    vocab = cached_file(source, VOCAB_FILE, _raise_exceptions_for_missing_entries=False,
                        _raise_exceptions_for_connection_errors=False) or package_vocab()
    if vocab is None:
        raise ValueError(f"{source}: no {VOCAB_FILE} for its RWKV world tokenizer (pip install rwkv ships one)")
    return RwkvWorldTokenizer(str(vocab))


def _merge_bytes(tokens: list[str], special) -> list[str]:
    """Adjacent ordinary tokens joined (a UTF-8 character may span two tokens); special tokens kept apart."""
    out: list[str] = []
    for t in tokens:
        if out and t not in special and out[-1] not in special:
            out[-1] += t
        else:
            out.append(t)
    return out
