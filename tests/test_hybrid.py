"""The hybrid family (families/hybrid.py) against transformers, for every hybrid decoder type it claims
(hybrid_kinds.SPECS: tiny random-init models, width 128, attention and non-attention layers mixed; offline, fp32).

- archbench's engine (batch 8, mixed lengths, a shared few-shot-like prefix) gives transformers' greedy tokens
  generated one prompt at a time; a difference is allowed only from a step where the reference's top-two logits
  are within NEAR_TIE (counted and printed); one row is made to stop early (its token made the EOS), so rows
  leave the batch (`select`) while others go on;
- prefill logits, with and without the prefix state, within 1e-4 of the logit scale of transformers' forward;
- batch size, order and the prefix cache never change an output (with the early-stopping row);
- state_bytes grows per decode step by exactly the attention layers' key/value bytes; the conv/recurrent part
  stays fixed.
"""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from archbench import engine, families, zoo  # noqa: E402
from archbench.config import GenConfig  # noqa: E402
from archbench.families import hybrid, hybrid_kinds  # noqa: E402
from archbench.loading import load  # noqa: E402

NEAR_TIE = 1e-4
NEW = 4
PREFIX = 10  # shared prefix tokens (>= engine.MIN_PREFIX)
LENGTHS = (2, 6, 6, 11, 1, 8, 6, 14)  # suffix lengths: 8 rows, some equal (prefilled together)


def _build(model_type: str, root) -> str:
    """A zoo alias for the types the zoo holds, else a tiny checkpoint written to `root` (zoo's recipe)."""
    import transformers

    cls, kwargs = hybrid_kinds.SPECS[model_type]
    alias = next((a for a, (c, kw) in hybrid_kinds.TINY.items() if c == cls and kw == kwargs), None)
    if alias is not None:
        return alias
    tok = transformers.AutoTokenizer.from_pretrained(str(zoo.ensure("tiny-lfm2")))
    cfg = getattr(transformers, cls)(vocab_size=49152, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                     pad_token_id=tok.pad_token_id, initializer_range=zoo.INIT_RANGE, **kwargs)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(str(root))
    tok.save_pretrained(str(root))
    return str(root)


FAST = ("bamba", "lfm2", "qwen3_next", "zamba2")  # one per cache layout; the rest are marked slow
TYPES = [t if t in FAST else pytest.param(t, marks=pytest.mark.slow) for t in sorted(hybrid_kinds.SPECS)]


@pytest.fixture(scope="module", params=TYPES)
def lm(request, tmp_path_factory):
    lm = load(_build(request.param, tmp_path_factory.mktemp(request.param)))
    assert lm.family == "hybrid" and lm.model_type == request.param
    kinds = families.get("hybrid").layer_kinds(lm.model.config)
    assert any("attention" in k.split("+") for k in kinds) and any(k != "attention" for k in kinds), kinds
    return lm


@pytest.fixture(scope="module")
def prompts(lm) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    pre = torch.randint(100, 49152, (PREFIX,), generator=g).tolist()
    return [pre + torch.randint(100, 49152, (n,), generator=g).tolist() for n in LENGTHS]


@pytest.fixture(scope="module")
def reference(lm, prompts) -> list[tuple[list[int], torch.Tensor]]:
    """transformers' greedy tokens and step logits (NEW, V), one prompt at a time (no EOS)."""
    out = []
    with torch.inference_mode():
        for ids in prompts:
            res = lm.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    do_sample=False, max_new_tokens=NEW, min_new_tokens=NEW, eos_token_id=None,
                                    pad_token_id=lm.tokenizer.pad_token_id, output_logits=True,
                                    return_dict_in_generate=True, temperature=None, top_p=None, top_k=None)
            out.append((res.sequences[0, len(ids):].tolist(), torch.cat(res.logits).float()))
    return out


def _engine(lm, ids, batch_size=8, share_prefix=True) -> list[list[int]]:
    out = [None] * len(ids)
    for b in engine.run(lm, ids, GenConfig(max_new_tokens=NEW, stop=(), batch_size=batch_size),
                        share_prefix=share_prefix):
        assert share_prefix is False or b.info["prefix_cache_tokens"] == PREFIX
        for i, t in zip(b.rows, b.tokens):
            out[i] = t
    return out


def _expected(ref: list[int], eos: set[int]) -> list[int]:
    """A reference generated without EOS, cut after its first EOS token."""
    return next((ref[: k + 1] for k, t in enumerate(ref) if t in eos), ref)


def test_greedy_tokens_match_transformers_with_rows_leaving(lm, prompts, reference):
    # a row whose second token is new ends there (that token made the EOS): it leaves the batch, others go on
    r = next(r for r, (ref, _) in enumerate(reference) if ref[1] != ref[0] and lm.tokenizer.eos_token_id not in ref[:2])
    eos = reference[r][0][1]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lm.model.generation_config, "eos_token_id", eos)
        ours = _engine(lm, prompts)
        # batch size, order and the prefix cache change no output
        perm = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(2)).tolist()
        shuffled = _engine(lm, [prompts[i] for i in perm], batch_size=3, share_prefix=False)
    assert [shuffled[perm.index(i)] for i in range(len(prompts))] == ours
    assert len(ours[r]) == 2 and any(len(t) == NEW for t in ours)
    near_ties = 0
    for i, (ref, logits) in enumerate(reference):
        want = _expected(ref, {eos, lm.tokenizer.eos_token_id})
        k = next((k for k, (a, b) in enumerate(zip(want, ours[i])) if a != b), None)
        if k is None:
            assert len(ours[i]) == len(want), f"{lm.model_type} row {i}: {ours[i]} vs {want}"
            continue
        top2 = logits[k].topk(2).values
        assert top2[0] - top2[1] <= NEAR_TIE, f"{lm.model_type} row {i} step {k}: {ours[i]} vs {want}"
        near_ties += 1
    print(f"{lm.model_type}: {len(prompts)} prompts x {NEW} tokens, near-tie divergences: {near_ties}")


def test_prefill_logits_match_transformers(lm, prompts, reference):
    fam = families.get("hybrid")
    ref = torch.stack([logits[0] for _, logits in reference])  # (B, V) first-step logits
    with torch.inference_mode():
        _, plain = fam.prefill(lm.model, prompts)
        prefix, _ = fam.prefill(lm.model, [prompts[0][:PREFIX]])
        _, cached = fam.prefill(lm.model, [s[PREFIX:] for s in prompts], prefix)
    scale = ref.abs().max()
    err = max((plain - ref).abs().max(), (cached - ref).abs().max()) / scale
    print(f"{lm.model_type}: prefill max error / logit scale {err:.1e}")
    assert err <= 1e-4


def _column_bytes(cfg) -> int:
    """Key + value bytes (fp32) one token adds to one attention layer, from the config."""
    if cfg.model_type == "kimi_linear":  # multi-head latent attention caches the latent and the rope key only
        return 4 * (cfg.kv_lora_rank + cfg.qk_rope_head_dim)
    head = getattr(cfg, "attention_head_dim", None) or getattr(cfg, "head_dim", None) \
        or cfg.hidden_size // cfg.num_attention_heads
    return 2 * 4 * cfg.num_key_value_heads * head


def test_state_bytes_grow_only_by_attention_kv(lm):
    cfg, fam = lm.model.config, families.get("hybrid")
    kinds = fam.layer_kinds(cfg)
    full = sum("attention" in k.split("+") and not _sliding(cfg, i) for i, k in enumerate(kinds))
    with torch.inference_mode():
        state, logits = fam.prefill(lm.model, [[5, 6, 7], [8, 9, 10]])
        sizes = [fam.state_bytes(state)]
        for _ in range(3):
            state, logits = fam.step(lm.model, logits.argmax(-1), state)
            sizes.append(fam.state_bytes(state))
        kv = sum(t.numel() * 4 for i, layer in enumerate(state.cache.layers) if hybrid._has_kv(layer)
                 and i not in hybrid._minimax_linear(state.cache) for t in (layer.keys, layer.values))
    grow = [b - a for a, b in zip(sizes, sizes[1:])]
    assert grow == [2 * full * _column_bytes(cfg)] * 3, (grow, full)  # sliding layers (window 8) are full by now
    fixed = sizes[-1] - kv
    assert fixed > 0 and fixed == sizes[0] - (kv - 3 * 2 * full * _column_bytes(cfg))


def _sliding(cfg, i: int) -> bool:
    """Whether layer i is a sliding-window attention layer that the 6 tokens of the state test fill."""
    types = getattr(cfg, "layer_types", None) or []
    return i < len(types) and types[i] == "sliding_attention" and cfg.sliding_window <= 6
