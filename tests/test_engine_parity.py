"""archbench's engine against transformers, on the tiny random models of every family (offline, fp32).

- greedy tokens of a batch of prompts of different lengths equal transformers' greedy tokens for the same
  prompts generated one at a time; a difference is allowed only from a step where the reference's top-two
  logits are within NEAR_TIE (random models have near-tied logits), and such steps are counted and printed;
- prefill logits (with and without a shared prefix state) match transformers' forward pass;
- batch composition (order, batch size) and the prefix cache never change an example's output.
ARCHBENCH_TEST_DEVICE=cuda runs the same checks on a GPU (benchmarks/gpu_check.sh does).
"""
from __future__ import annotations

import functools
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from archbench import engine, families, fastlinear  # noqa: E402
from archbench.config import GenConfig  # noqa: E402
from archbench.families import transformer  # noqa: E402
from archbench.generation import generate  # noqa: E402
from archbench.loading import load  # noqa: E402

MODELS = ["tiny-gpt2", "tiny-gpt-neo", "tiny-llama", "tiny-mamba", "tiny-mamba2", "tiny-rwkv"]
NEAR_TIE = 1e-4
DEVICE = os.environ.get("ARCHBENCH_TEST_DEVICE", "cpu")
NEW = 10
LENGTHS = (7, 31, 18, 44, 25)  # suffix lengths after a shared 40-token prefix; gpt-neo adds a long one
PREFIX = 40


@pytest.fixture(scope="module", params=MODELS)
def lm(request):
    return load(request.param, device=DEVICE)


def _prompts(lm) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    lengths = LENGTHS + ((270,) if lm.model_type == "gpt_neo" else ())  # past gpt-neo's 256-token window
    prefix = torch.randint(100, lm.tokenizer.vocab_size, (PREFIX,), generator=g).tolist()
    return [prefix + torch.randint(100, lm.tokenizer.vocab_size, (n,), generator=g).tolist() for n in lengths]


def _settings(batch_size: int = 8) -> GenConfig:
    return GenConfig(max_new_tokens=NEW, stop=(), batch_size=batch_size, min_new_tokens=NEW)


def _engine_tokens(lm, ids, batch_size=8, share_prefix=True) -> list[list[int]]:
    out = [None] * len(ids)
    for b in engine.run(lm, ids, _settings(batch_size), share_prefix=share_prefix):
        for i, t in zip(b.rows, b.tokens):
            out[i] = t
    return out


def _reference(lm, ids) -> tuple[list[int], torch.Tensor]:
    """transformers' greedy tokens for one prompt and the logits of every step (NEW, V)."""
    with torch.inference_mode():
        out = lm.model.generate(torch.tensor([ids], device=lm.device),
                                attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=lm.device),
                                do_sample=False, max_new_tokens=NEW, min_new_tokens=NEW,
                                pad_token_id=lm.tokenizer.pad_token_id, output_logits=True,
                                return_dict_in_generate=True, temperature=None, top_p=None, top_k=None)
    return out.sequences[0, len(ids):].tolist(), torch.cat(out.logits).float()


def test_greedy_tokens_match_transformers_one_at_a_time(lm):
    ids = _prompts(lm)
    ours = _engine_tokens(lm, ids, batch_size=3)
    near_ties = 0
    for i, prompt in enumerate(ids):
        ref, logits = _reference(lm, prompt)
        k = next((k for k, (a, b) in enumerate(zip(ref, ours[i])) if a != b), None)
        if k is None:
            continue
        top2 = logits[k].topk(2).values
        assert top2[0] - top2[1] <= NEAR_TIE, (f"{lm.name} prompt {i}: step {k} differs ({ours[i][k]} vs "
                                               f"{ref[k]}) with a top-two gap of {top2[0] - top2[1]:.2e}")
        near_ties += 1
    print(f"{lm.name}: {len(ids)} prompts x {NEW} tokens, near-tie divergences: {near_ties}")


def test_prefill_logits_match_forward(lm):
    ids = _prompts(lm)
    fam = families.get(lm.family)
    if DEVICE == "cpu" and lm.model_type in ("gpt2", "llama"):  # the prefills below are packed (varlen)
        assert fam.kernel(lm.model).endswith("+packed-prefill")
    with torch.inference_mode():
        ref = torch.stack([lm.model(torch.tensor([s], device=lm.device)).logits[0, -1].float() for s in ids])
        _, plain = fam.prefill(lm.model, ids)
        prefix, _ = fam.prefill(lm.model, [ids[0][:PREFIX]])
        _, cached = fam.prefill(lm.model, [s[PREFIX:] for s in ids], prefix)
    scale = ref.abs().max()
    assert (plain - ref).abs().max() <= 1e-4 * scale
    assert (cached - ref).abs().max() <= 1e-4 * scale


def test_batch_composition_and_prefix_cache_do_not_change_outputs(lm):
    ids = _prompts(lm)
    base = _engine_tokens(lm, ids)
    perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(2)).tolist()
    shuffled = _engine_tokens(lm, [ids[i] for i in perm], batch_size=2)
    assert [shuffled[perm.index(i)] for i in range(len(ids))] == base
    assert _engine_tokens(lm, ids, batch_size=1) == base
    assert _engine_tokens(lm, ids, batch_size=0) == base  # auto: one batch under the token budget
    assert _engine_tokens(lm, ids, share_prefix=False) == base
    with pytest.MonkeyPatch.context() as mp:  # the prefill path of non-CPU devices, then cascade decode
        mp.setattr(transformer, "_cpu_packed", lambda device, dtype: False)
        assert _engine_tokens(lm, ids) == base


def test_text_seam_reports_engine_info(lm):
    tok = lm.tokenizer
    prompts = ["The cat sat on the mat. The dog sat on the log. Q: who sat on the mat?\nA:",
               "The cat sat on the mat. The dog sat on the log. Q: where did the dog sit?\nA:"]
    res = list(generate(lm, prompts, GenConfig(max_new_tokens=6, stop=("\n",), batch_size=2),
                        engine="archbench"))
    assert {c.index for r in res for c in r.completions} == {0, 1}
    info = res[0].info
    assert info["engine"] == "archbench" and info["kernel"] and info["prefix_cache_tokens"] >= 8
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    p = info["prefix_cache_tokens"]  # computed once, counted once (in the first batch)
    assert sum(r.prefill_tokens for r in res) == p + sum(len(i) - p for i in ids)
    for c in (c for r in res for c in r.completions):
        assert "\n" not in c.text and c.new_tokens <= 6


def test_out_of_memory_halves_the_batch_and_keeps_finished_work(patch_family):
    lm = load("tiny-gpt2", device=DEVICE)
    ids = _prompts(lm)
    base = _engine_tokens(lm, ids, batch_size=4)
    fam = families.get(lm.family)
    real, sizes = fam.prefill, []

    def small_memory(model, seqs, state=None):
        sizes.append(len(seqs))
        if len(seqs) > 2 and state is not None:  # the batch prefill, not the prefix's
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, seqs, state)

    patch_family(lm.family, prefill=small_memory)
    assert _engine_tokens(lm, ids, batch_size=4) == base
    assert sizes[:3] == [1, 4, 2] and max(sizes[2:]) == 2


def test_cascade_decode_keeps_a_shared_prefix_once():
    lm = load("tiny-gpt2", device=DEVICE)
    fam, cfg = families.get(lm.family), lm.model.config
    per_token = 2 * cfg.n_layer * cfg.n_embd * 4  # keys + values, fp32
    with torch.inference_mode():
        prefix, _ = fam.prefill(lm.model, [[5] * 20])
        state, logits = fam.prefill(lm.model, [[7] * 5, [8] * 9], prefix)
        assert state.shared is not None and fam.state_bytes(state) == per_token * (20 + 2 * 9)
        state, _ = fam.step(lm.model, logits.argmax(-1), state)
    assert fam.state_bytes(state) == per_token * (20 + 2 * 10)
    assert state.keep.tolist() == [[0] * 4 + [1] * 6, [1] * 10]  # row 0's first 4 columns are its prefix tail


# ------------------------------------------------------------------ rows that finish at different steps
# The tiny random models never emit EOS by themselves, and each row generates its own tokens. So tokens that
# some rows generate early are made EOS ids (or their texts stop strings): in the batch's state order (longest
# prompt first) the second row ends after 2 tokens, the fourth after 5, the first after 9, and the others run
# to the end, so the engine's finished-row removal (`Family.select`) runs with live rows on both sides of the
# removed ones, at several steps, and (batch size 3) with the first row of a batch leaving.
EARLY = 12  # new tokens per row in these tests


@functools.lru_cache(maxsize=None)
def _tiny(name: str):
    return load(name, device=DEVICE)


def _early_tokens(lm, ids, batch_size: int, stop=()) -> list[list[int]]:
    gen = GenConfig(max_new_tokens=EARLY, stop=tuple(stop), batch_size=batch_size, min_new_tokens=0)
    out = [None] * len(ids)
    for b in engine.run(lm, ids, gen):
        for i, t in zip(b.rows, b.tokens):
            out[i] = t
    return out


def _targets(ids) -> dict[int, int]:
    """Row -> the number of tokens it should generate before ending early."""
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # the engine's state order in one batch
    return {order[1]: 2, order[3]: 5, order[0]: 9}


def _removes_a_middle_row(ids, ends: list[int]) -> bool:
    """Whether a row leaves while a row after it in the batch's state order still runs (ends[i] = number of
    tokens row i generates)."""
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    return any(ends[a] < max(ends[b] for b in order[n + 1:]) for n, a in enumerate(order[:-1]))


def _eos_setting(lm, ids) -> tuple[list[int], list[list[int]]]:
    """EOS ids that end rows early as `_targets` says, and each row's expected tokens (batch-1 engine)."""
    free = _early_tokens(lm, ids, batch_size=1)
    eos = sorted({free[r][n - 1] for r, n in _targets(ids).items()})
    expected = [row[:next((k + 1 for k, t in enumerate(row) if t in eos), len(row))] for row in free]
    assert _removes_a_middle_row(ids, [len(t) for t in expected]), (lm.name, eos, expected)
    return eos, expected


def test_rows_finishing_at_eos_match_batch_one(tiny_model, monkeypatch):
    lm = _tiny(tiny_model)
    ids = _prompts(lm)
    eos, expected = _eos_setting(lm, ids)
    monkeypatch.setattr(lm.model.generation_config, "eos_token_id", eos)
    single = _early_tokens(lm, ids, batch_size=1)
    assert single == expected, f"{tiny_model}: at batch 1 the EOS ids {eos} did not end rows where generated"
    for bs in (len(ids), 3):
        batched = _early_tokens(lm, ids, batch_size=bs)
        for i in range(len(ids)):
            assert batched[i] == single[i], (f"{tiny_model} batch size {bs}, rows ending at EOS {eos} after "
                                             f"{[len(t) for t in single]} tokens: row {i} differs from batch 1")


def _stop_strings(lm, free, targets) -> list[str]:
    """A readable text of a token near each target step of its row (not a lone byte, not only spaces)."""
    stops = []
    for r, n in targets.items():
        for k in (n - 1, n, n - 2, n + 1):
            text = lm.tokenizer.decode([free[r][k]]).strip()
            if len(text) >= 2 and "\ufffd" not in text:
                stops.append(text)
                break
    return stops


def test_rows_finishing_at_a_stop_string_match_batch_one(tiny_model):
    lm = _tiny(tiny_model)
    ids = _prompts(lm)
    stops = _stop_strings(lm, _early_tokens(lm, ids, batch_size=1), _targets(ids))
    single = _early_tokens(lm, ids, batch_size=1, stop=stops)
    assert _removes_a_middle_row(ids, [len(r) for r in single]), (tiny_model, stops, single)
    for i, row in enumerate(single):  # a row ends at the token whose text completes a stop string
        if len(row) < EARLY:
            text, before = lm.tokenizer.decode(row), lm.tokenizer.decode(row[:-1])
            assert any(s in text and s not in before for s in stops), (tiny_model, i, stops, text)
    for bs in (len(ids), 3):
        batched = _early_tokens(lm, ids, batch_size=bs, stop=stops)
        for i in range(len(ids)):
            assert batched[i] == single[i], (f"{tiny_model} batch size {bs}, stop strings {stops} ending rows "
                                             f"after {[len(t) for t in single]} tokens: row {i} differs from batch 1")


@pytest.mark.parametrize("name", sorted(families.get("transformer").tiny))
def test_rows_finishing_at_eos_match_transformers_greedy(name, monkeypatch):
    """transformers' greedy at batch 1 with the same EOS ids is the reference (near ties allowed as above)."""
    lm = _tiny(name)
    ids = _prompts(lm)
    eos, _ = _eos_setting(lm, ids)
    monkeypatch.setattr(lm.model.generation_config, "eos_token_id", eos)
    ours = _early_tokens(lm, ids, batch_size=len(ids))
    for i, prompt in enumerate(ids):
        with torch.inference_mode():
            out = lm.model.generate(torch.tensor([prompt], device=lm.device), attention_mask=torch.ones(
                1, len(prompt), dtype=torch.long, device=lm.device), do_sample=False, max_new_tokens=EARLY,
                eos_token_id=eos, pad_token_id=lm.tokenizer.pad_token_id, output_logits=True,
                return_dict_in_generate=True, temperature=None, top_p=None, top_k=None)
        ref, logits = out.sequences[0, len(prompt):].tolist(), torch.cat(out.logits).float()
        k = next((k for k, (a, b) in enumerate(zip(ref, ours[i])) if a != b), None)
        if k is None:
            assert ours[i] == ref, f"{name} row {i}: {len(ours[i])} tokens, transformers {len(ref)} (EOS {eos})"
            continue
        top2 = logits[k].topk(2).values
        assert top2[0] - top2[1] <= NEAR_TIE, f"{name} row {i}: step {k} differs from transformers (EOS {eos})"


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_batch_one_decode_without_prefix_matches_transformers(name):
    """One row, no shared prefix, no padding (what `archbench bench` times: the decode attention is one fused
    call): the logits of every step equal transformers' on the same tokens."""
    lm = load(name, device=DEVICE)
    ids = _prompts(lm)[1]
    tokens, ref = _reference(lm, ids)
    fam = families.get(lm.family)
    with torch.inference_mode(), fastlinear.packed(lm.model):
        state, out = fam.prefill(lm.model, [ids])
        steps = [out[0]]
        for t in tokens[:-1]:
            state, out = fam.step(lm.model, torch.tensor([t], device=lm.device), state)
            steps.append(out[0])
    assert (torch.stack(steps) - ref).abs().max() <= 1e-4 * ref.abs().max()


@pytest.mark.parametrize("bias", [False, True])
def test_fused_llama_decode_step_matches_the_module_forward(monkeypatch, bias):
    """The Llama decode step on fused weights (one q/k/v and one gate/up product per layer) gives the logits of
    the module-by-module forward (taken when accelerate placed the model), step after step, and its fused
    weights are rebuilt when a weight changes in place."""
    lm = load("tiny-llama", device=DEVICE)
    if bias:  # q/k/v/o and MLP biases: the q bias is scaled with the q rows, a bias keeps the residual add apart
        lm.model.config.attention_bias = lm.model.config.mlp_bias = True
        lm.model = type(lm.model)(lm.model.config).to(DEVICE).eval()
    with torch.no_grad():  # norm weights and biases away from their init (ones, zeros): the folds are checked
        for name, p in lm.model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.copy_(torch.rand(p.shape, generator=torch.Generator().manual_seed(len(name))) + 0.5)
    fam = families.get("transformer")
    ids = [list(range(100, 120)), list(range(300, 313))]
    logits = {}
    with torch.inference_mode():
        for fused in (True, False):
            if not fused:
                monkeypatch.setattr(lm.model, "hf_device_map", {"": DEVICE}, raising=False)
            state, out = fam.prefill(lm.model, ids)
            steps = []
            for _ in range(4):
                state, out = fam.step(lm.model, out.argmax(-1), state)
                steps.append(out)
            logits[fused] = torch.stack(steps)
    assert (logits[True] - logits[False]).abs().max() <= 1e-4 * logits[False].abs().max()
    plan = lm.model.__dict__["_archbench_decode"][1]
    with torch.no_grad():
        lm.model.model.layers[0].self_attn.k_proj.weight.mul_(2)
    assert transformer._decode_plan(lm.model) is not plan
