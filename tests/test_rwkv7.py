"""RWKV-7 (models/rwkv7.py, families/rwkv7.py) against BlinkDL's own runtime, the `rwkv` PyPI package.

A tiny random checkpoint is written in BlinkDL's `.pth` layout; the `rwkv` package runs it (`strategy="cpu
fp32"`, its RWKV-7 path: RWKV_V7_ON=1, JIT and CUDA kernels off) and archbench runs its converted HF-format
directory. Checked: whole-sequence logits and token-by-token logits within 1e-4 of the package's logit scale,
identical greedy tokens, the wkv state itself, the chunked form against the plain recurrence, batched prefill
with a shared prefix and mixed lengths equal to batch 1 (family functions and engine.run), save_pretrained ->
loading.load, the .pth cache and its one-line errors, and that the model trains (loss falls).
"""
from __future__ import annotations

import math

import pytest
import torch

import rwkv_reference as shared
from archbench.families import rwkv7 as fam
from archbench.models import rwkv_convert
from archbench.models.rwkv7 import Rwkv7Config, Rwkv7ForCausalLM
from archbench.models.rwkv_convert import random_pth
from archbench.models.wkv7 import wkv7_chunked, wkv7_step
from rwkv_reference import HEAD, LAYERS, VOCAB, WIDTH

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # the rwkv package's RWKV-7 path


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The rwkv package's model (its RWKV-7 path: RWKV_V7_ON=1) and archbench's on the same random weights
    (rwkv_reference.Pair)."""
    yield from shared.pair(tmp_path_factory, 7, Rwkv7ForCausalLM, fam.FAMILY)


def test_prefill_logits_match_rwkv_package(pair):
    shared.check_prefill_matches_package(pair, 80)  # crosses two chunk boundaries (CHUNK = 32)


def test_steps_and_greedy_tokens_match_rwkv_package(pair):
    shared.check_steps_match_package(pair)


def test_hf_generate_equals_engine_steps(pair):
    """transformers' `generate` (the --engine hf path) on the model gives the family's greedy tokens."""
    model = pair.model
    ids = torch.tensor([shared.ids(20, 5)])
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=6, do_sample=False)[0, 20:].tolist()
        state, logits = fam.FAMILY.prefill(model, ids)
        toks = []
        for _ in range(6):
            toks.append(int(logits.argmax()))
            state, logits = fam.FAMILY.step(model, logits.argmax(-1), state)
    assert out == toks


def test_chunked_form_equals_recurrence():
    torch.manual_seed(0)
    b, h, t, n = 2, 2, 75, 16
    r, k, v = (torch.randn(b, h, t, n, dtype=torch.float64) for _ in range(3))
    logw = -math.exp(-0.5) * torch.sigmoid(3 * torch.randn(b, h, t, n, dtype=torch.float64) - 2)
    kk = torch.nn.functional.normalize(torch.randn(b, h, t, n, dtype=torch.float64), dim=-1)
    a, bb = -kk, kk * torch.rand(b, h, t, n, dtype=torch.float64)
    s0 = torch.randn(b, h, n, n, dtype=torch.float64)
    seqs = (r, logw, k, v, a, bb)
    shared.check_chunked_equals_steps(wkv7_step, wkv7_chunked, seqs, (), s0, chunks=(1, 16, 32, 75))


def test_batched_prefill_with_prefix_equals_batch_one(pair):
    """A shared batch-1 prefix state, suffixes of mixed (and repeated) lengths, rows leaving the batch: every
    row's logits equal running it alone from the zero state, and so do the next logits of the rows left; then
    cat, select and state_bytes on that state."""
    state = shared.check_batch_with_prefix_equals_alone(pair, (7, 31, 18, 44, 7, 1), keeps=[[0, 2, 3, 5]])
    both = fam.FAMILY.cat([fam.FAMILY.select(state, torch.tensor([1])), fam.FAMILY.select(state, torch.tensor([0]))])
    assert torch.equal(both.wkv[0][0], state.wkv[0][1])
    per_layer = 4 * (2 * WIDTH + WIDTH // HEAD * HEAD * HEAD)
    assert fam.FAMILY.state_bytes(state) == 4 * sum(per_layer for _ in range(LAYERS))


def test_engine_batches_equal_batch_one():
    """engine.run on the tiny-rwkv7 zoo model: batch 8 with a shared 40-token prefix and mixed lengths gives the
    same greedy tokens as each prompt alone without a prefix."""
    from archbench import engine
    from archbench.config import GenConfig
    from archbench.loading import load

    lm = load("tiny-rwkv7")
    assert lm.family == "rwkv7" and lm.untrained
    g = torch.Generator().manual_seed(1)
    prefix = torch.randint(100, 49000, (40,), generator=g).tolist()
    ids = [prefix + torch.randint(100, 49000, (n,), generator=g).tolist() for n in (7, 31, 18, 44, 25, 7)]
    gen = GenConfig(max_new_tokens=8, stop=(), batch_size=8, min_new_tokens=8)
    batched = {i: t for b in engine.run(lm, ids, gen) for i, t in zip(b.rows, b.tokens)}
    assert next(iter(engine.run(lm, ids[:2], gen))).info["prefix_cache_tokens"] == 40
    for i, x in enumerate(ids):
        alone = next(iter(engine.run(lm, [x], GenConfig(max_new_tokens=8, stop=(), batch_size=1,
                                                         min_new_tokens=8), share_prefix=False)))
        assert batched[i] == alone.tokens[0], i


def test_save_pretrained_then_load(tmp_path):
    from archbench import zoo
    from archbench.loading import load

    cfg = Rwkv7Config(vocab_size=49152, hidden_size=128, num_hidden_layers=2, intermediate_size=256,
                      decay_low_rank_dim=16, a_low_rank_dim=16, v_low_rank_dim=16, gate_low_rank_dim=16)
    torch.manual_seed(0)
    model = Rwkv7ForCausalLM(cfg).eval()
    model.save_pretrained(str(tmp_path))
    zoo._tokenizer().save_pretrained(str(tmp_path))
    lm = load(str(tmp_path))
    assert (lm.family, lm.model_type, lm.max_len) == ("rwkv7", "rwkv7", None)
    ids = torch.tensor([shared.ids(20, 4)])
    with torch.no_grad():
        assert torch.equal(lm.model(ids).logits, model(ids).logits)


def test_pth_cache_and_errors(tmp_path):
    random_pth(tmp_path / "a.pth", vocab=VOCAB, width=WIDTH, layers=LAYERS)
    first = rwkv_convert.cached(tmp_path / "a.pth", tmp_path / "cache")
    stamp = (first / "config.json").stat().st_mtime_ns
    assert rwkv_convert.cached(tmp_path / "a.pth", tmp_path / "cache") == first
    assert (first / "config.json").stat().st_mtime_ns == stamp  # not converted twice
    cfg = Rwkv7Config.from_pretrained(str(first))
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_heads, cfg.vocab_size) == (WIDTH, LAYERS, 2, VOCAB)
    torch.save({"emb.weight": torch.zeros(3, 4), "blocks.0.att.time_mix_k": torch.zeros(4)}, tmp_path / "v4.pth")
    with pytest.raises(rwkv_convert.PthError, match="neither RWKV-7"):
        rwkv_convert.cached(tmp_path / "v4.pth", tmp_path / "cache")
    torch.save({"emb.weight": torch.zeros(3, 4), "blocks.0.att.time_maa_x": torch.zeros(4)}, tmp_path / "v6.pth")
    with pytest.raises(rwkv_convert.PthError, match="missing"):
        rwkv_convert.cached(tmp_path / "v6.pth", tmp_path / "cache")
    with pytest.raises(rwkv_convert.PthError, match="not found"):
        rwkv_convert.cached(tmp_path / "missing.pth", tmp_path / "cache")


def test_left_padding_refused_and_training_lowers_loss():
    cfg = Rwkv7Config(vocab_size=64, hidden_size=64, num_hidden_layers=2, head_dim=32, intermediate_size=128,
                      decay_low_rank_dim=8, a_low_rank_dim=8, v_low_rank_dim=8, gate_low_rank_dim=8)
    torch.manual_seed(0)
    model = Rwkv7ForCausalLM(cfg)
    ids = torch.randint(0, 64, (2, 40))
    with pytest.raises(ValueError, match="left padding"):
        model(ids, attention_mask=torch.tensor([[0] + [1] * 39] * 2))
    right = torch.tensor([[1] * 40, [1] * 30 + [0] * 10])  # fine-tuning batches: real positions unchanged
    assert torch.allclose(model(ids, attention_mask=right).logits[1, :30], model(ids[1:, :30]).logits[0], atol=1e-5)
    keep = torch.rand(2, 40, generator=torch.Generator().manual_seed(0)) > 0.5  # finetune's loss_sum asks this
    assert torch.equal(model(ids, logits_to_keep=keep).logits, model(ids).logits[keep])
    shared.check_training_lowers_loss(model, ids, every_grad=True)


WORLD_TEXTS = ["Hello world!", "  two spaces\n\n\ttab, and <|endoftext|> as plain text", "中文测试，RWKV 是一个 RNN。",
               "emoji 🦆🪿 goose", "a" * 300, "\x00\x01 control bytes", "Ünïcödé café naïve", "",
               "Context: The Normans were...\nQuestion: In what country is Normandy located?\nAnswer: France\n"]


@pytest.fixture(scope="module")
def world():
    """(BlinkDL's TRIE_TOKENIZER from the rwkv package, archbench's RwkvWorldTokenizer) on the same vocabulary."""
    from archbench.models.rwkv_world import RwkvWorldTokenizer

    return shared.blinkdl_world_tokenizer(), RwkvWorldTokenizer(str(shared.world_vocab()))


def test_world_tokenizer_matches_blinkdl_and_round_trips(world, tmp_path):
    from transformers import AutoTokenizer

    ref, tok = world
    for text in WORLD_TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids == ref.encode(text), text
        assert tok.decode(ids) == text
    assert tok.decode([0] + ref.encode("hi"), skip_special_tokens=True) == "hi" and tok.eos_token_id == 0
    assert tok.decode(ref.encode("🦆")[:1]) == "\ufffd"  # half a character decodes to the replacement char
    tok.save_pretrained(str(tmp_path))
    again = AutoTokenizer.from_pretrained(str(tmp_path))  # found by class name, no remote code
    assert type(again) is type(tok) and again(WORLD_TEXTS[2])["input_ids"] == ref.encode(WORLD_TEXTS[2])


def test_world_pth_loads_and_generates(world, tmp_path):
    """A world-vocabulary .pth converts with its tokenizer beside it and runs through loading.load + engine."""
    from archbench import engine
    from archbench.config import GenConfig
    from archbench.loading import load

    random_pth(tmp_path / "w.pth", vocab=65536, width=64, layers=1)
    lm = load(str(rwkv_convert.cached(tmp_path / "w.pth", tmp_path / "cache")))
    assert lm.family == "rwkv7" and type(lm.tokenizer).__name__ == "RwkvWorldTokenizer"
    out = list(engine.generate(lm, ["Question: where is Paris?\nAnswer:"] * 2, GenConfig(max_new_tokens=4, stop=())))
    assert sum(len(b.completions) for b in out) == 2
