"""RWKV-5 "Eagle" (models/rwkv5.py, families/rwkv5.py) against BlinkDL's own runtime, the `rwkv` PyPI package (its
v5.2 path, `strategy="cpu fp32"`, JIT and CUDA kernels off), on a tiny random checkpoint in BlinkDL's `.pth`
layout: whole-sequence logits within 1e-4 of the package's logit scale and the wkv state, token-by-token logits
and greedy tokens, RWKV-5's chunked state update against a plain per-token loop, batch composition and a shared
prefix never changing an output through the engine, an HF-format hub-style directory (remote-code config and
tokenizer declarations, hub parameter names) loading without remote code to the same model as the `.pth`, and
save_pretrained -> from_pretrained with training. The set-up and checks the three RWKV versions share are in
rwkv_reference.py.
"""
from __future__ import annotations

import json

import pytest
import torch

import rwkv_reference as shared
from archbench.families import rwkv5 as fam
from archbench.models.rwkv5 import Rwkv5Config, Rwkv5ForCausalLM, wkv5
from archbench.models.rwkv_convert import random_pth
from rwkv_reference import HEAD, LAYERS, VOCAB, WIDTH


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The rwkv package's model (which must read the file as RWKV-5.2), archbench's model and the BlinkDL state
    dict on the same random RWKV-5.2 weights (rwkv_reference.Pair)."""
    yield from shared.pair(tmp_path_factory, 5, Rwkv5ForCausalLM, fam.FAMILY)


def test_prefill_logits_and_state_match_rwkv_package(pair):
    shared.check_prefill_matches_package(pair, 70)  # crosses four chunk boundaries (CHUNK = 16)


def test_steps_and_greedy_tokens_match_rwkv_package(pair):
    shared.check_steps_match_package(pair)  # the package's one-token path: att_one_v5_1


def _wkv5_loop(r, decay, k, v, u, s):
    """The per-token recurrence as BlinkDL writes it (`att_seq_v5_2`): per head S (N_k, N_v),
    o_t = r_t (diag(u) k_t v_t^T + S), S = k_t v_t^T + diag(exp(-exp(decay))) S. Inputs (B, T, H, N)."""
    w = torch.exp(-torch.exp(decay))[None, :, :, None]  # (1, H, N_k, 1)
    outs = []
    for t in range(r.shape[1]):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]  # (B, H, N_k, N_v)
        outs.append((r[:, t, :, None, :] @ (u[None, :, :, None] * kv + s))[:, :, 0])
        s = kv + w * s
    return torch.stack(outs, 1), s


@pytest.mark.parametrize("length", [1, 5, 16, 37])
def test_chunked_wkv5_equals_per_token_loop(length):
    torch.manual_seed(length)
    b, h, n = 2, 3, 8
    r, k, v = (torch.randn(b, length, h, n, dtype=torch.float64) for _ in range(3))
    decay = 2 * torch.randn(h, n, dtype=torch.float64)  # per-step factors from ~1 to ~0
    u, s0 = torch.randn(h, n, dtype=torch.float64), torch.randn(b, h, n, n, dtype=torch.float64)
    want, s_want = _wkv5_loop(r, decay, k, v, u, s0)  # fp64
    got, s_got = wkv5(r, decay, k, v, u, s0.float())  # fp32 (its inputs are cast; the state is fp32)
    assert (got.double() - want).abs().max() < 1e-5 * want.abs().max()
    assert (s_got.double() - s_want).abs().max() < 1e-5 * s_want.abs().max()


def test_batch_composition_and_prefix_never_change_outputs(pair):
    shared.check_batch_with_prefix_equals_alone(pair, (7, 31, 18, 7, 1), keeps=[[0], [1], [2], [3], [4]])


def test_engine_batches_and_prefix_cache_match_batch_one(pair, tmp_path):
    """Greedy tokens through archbench's engine (engine.run): the same at batch size 1 without the shared-prefix
    cache as in batches of 2 and 5 with it (families/common.rwkv_prefill from a batch-1 prefix state)."""
    from archbench import engine
    from archbench.config import GenConfig
    from archbench.loading import load
    from archbench.models.rwkv_world import RwkvWorldTokenizer

    vocab = shared.world_vocab()
    pair.model.save_pretrained(str(tmp_path))
    RwkvWorldTokenizer(str(vocab)).save_pretrained(str(tmp_path))
    lm = load(str(tmp_path))
    assert lm.family == "rwkv5" and engine.kernel(lm).startswith("torch-wkv5-chunked")
    prefix = shared.ids(40, 6)
    ids = [prefix + shared.ids(n, 20 + n) for n in (7, 31, 18, 44, 25)]

    def tokens(batch_size: int, share: bool) -> list[list[int]]:
        out, gen = [None] * len(ids), GenConfig(max_new_tokens=8, min_new_tokens=8, stop=(), batch_size=batch_size)
        for b in engine.run(lm, ids, gen, share_prefix=share):
            assert b.info["prefix_cache_tokens"] == (40 if share else 0)
            for i, t in zip(b.rows, b.tokens):
                out[i] = t
        return out

    base = tokens(1, False)
    assert all(len(t) == 8 for t in base)
    assert tokens(5, True) == base and tokens(2, True) == base and tokens(5, False) == base


def _hub_names(sd: dict) -> dict:
    """BlinkDL names -> the HF-format hub repos' names (RWKV/rwkv-5-world-*, `modeling_rwkv5.py`), written out
    here independently of rwkv_convert so that the test checks the conversion's table."""
    att = {"time_mix_k": "time_mix_key", "time_mix_v": "time_mix_value", "time_mix_r": "time_mix_receptance",
           "time_mix_g": "time_mix_gate"}
    ffn = {"time_mix_k": "time_mix_key", "time_mix_r": "time_mix_receptance"}
    top = {"emb.weight": "rwkv.embeddings.weight", "ln_out.weight": "rwkv.ln_out.weight",
           "ln_out.bias": "rwkv.ln_out.bias", "head.weight": "head.weight"}
    out = {}
    for name, t in sd.items():
        if name in top:
            out[top[name]] = t
            continue
        _, i, part, rest = name.split(".", 3)
        part, rest = {"ln0": ("pre_ln", rest), "ln1": ("ln1", rest), "ln2": ("ln2", rest),
                      "att": ("attention", att.get(rest, rest)), "ffn": ("feed_forward", ffn.get(rest, rest))}[part]
        out[f"rwkv.blocks.{i}.{part}.{rest}"] = t
    return out


def _hub_dir(path, sd: dict) -> None:
    """A directory laid out like RWKV/rwkv-5-world-3b: remote-code config and tokenizer declarations (auto_map),
    the hub config's fields (num_attention_heads holding the head size, rescale_every, no intermediate_size),
    pytorch_model.bin with the hub's names, the world vocabulary file."""
    from archbench.models.rwkv_world import VOCAB_FILE

    path.mkdir()
    config = {"architectures": ["Rwkv5ForCausalLM"], "model_type": "rwkv5", "auto_map": {
        "AutoConfig": "configuration_rwkv5.Rwkv5Config", "AutoModelForCausalLM": "modeling_rwkv5.Rwkv5ForCausalLM"},
        "attention_hidden_size": WIDTH, "head_size": HEAD, "num_attention_heads": HEAD, "hidden_size": WIDTH,
        "intermediate_size": None, "layer_norm_epsilon": 1e-5, "num_hidden_layers": LAYERS, "rescale_every": 6,
        "vocab_size": VOCAB, "bos_token_id": 0, "eos_token_id": 0, "tie_word_embeddings": False, "use_cache": True}
    (path / "config.json").write_text(json.dumps(config))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Rwkv5Tokenizer", "use_fast": False,
        "auto_map": {"AutoTokenizer": ["tokenization_rwkv5.Rwkv5Tokenizer", None]}}))
    (path / VOCAB_FILE).write_bytes(shared.world_vocab().read_bytes())
    torch.save(_hub_names(sd), path / "pytorch_model.bin")


def test_hub_directory_loads_without_remote_code_and_equals_pth(pair, tmp_path):
    from archbench.loading import load

    model = pair.model
    _hub_dir(tmp_path / "hub", pair.sd)
    lm = load(str(tmp_path / "hub"))
    assert lm.family == "rwkv5" and type(lm.model) is Rwkv5ForCausalLM
    assert type(lm.tokenizer).__name__ == "RwkvWorldTokenizer"
    assert lm.model.config.intermediate_size == int(WIDTH * 3.5) // 32 * 32
    assert lm.model.config.num_attention_heads == WIDTH // HEAD
    ours, theirs = lm.model.state_dict(), model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    ids = torch.tensor([shared.ids(40, 5)])
    with torch.no_grad():
        assert torch.equal(lm.model(ids).logits, model(ids).logits)
    text = "RWKV-5 \"Eagle\" 鹰 — round trip\n"
    assert lm.tokenizer.decode(lm.tokenizer(text)["input_ids"]) == text


@pytest.mark.parametrize("declared", ["Rwkv5Tokenizer", "RWKVWorldTokenizer"])
def test_remote_code_world_tokenizer_loads_builtin(tmp_path, declared):
    """A tokenizer_config.json naming the hub's remote-code world tokenizer (RWKV-5 / RWKV-4 world repos) gives
    archbench's RwkvWorldTokenizer without remote code; without a .txt vocabulary beside it (RWKV-4 world repos
    ship a JSON one), the rwkv package's copy of the same vocabulary is used."""
    from archbench.models.rwkv_world import for_remote_code

    blinkdl = shared.blinkdl_world_tokenizer()
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": declared, "auto_map": {"AutoTokenizer": [f"tokenization.{declared}", None]}}))
    tok = for_remote_code(str(tmp_path))
    assert type(tok).__name__ == "RwkvWorldTokenizer" and tok.eos_token_id == 0
    text = "Question: Who is Albert Einstein?\nAnswer: 物理学家 🧪"
    ids = tok(text)["input_ids"]
    assert ids == blinkdl.encode(text) and tok.decode(ids) == text
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))
    assert for_remote_code(str(tmp_path)) is None  # any other tokenizer: transformers' own path


def test_pth_version_detection_refuses_older_v5(tmp_path):
    from archbench.models import rwkv_convert

    sd = random_pth(tmp_path / "a.pth", vocab=VOCAB, width=64, layers=1, head=32, version=5)
    assert rwkv_convert.pth_version(sd) == 5
    sd["blocks.0.att.time_decay"] = torch.zeros(2)  # v5.1: one decay per head
    with pytest.raises(rwkv_convert.PthError, match="5.0/5.1"):
        rwkv_convert.pth_version(sd)


def test_save_pretrained_round_trip_and_training(tmp_path):
    cfg = Rwkv5Config(vocab_size=64, hidden_size=64, num_hidden_layers=2, head_size=32, intermediate_size=128)
    torch.manual_seed(0)
    model = Rwkv5ForCausalLM(cfg)
    ids = torch.randint(0, 64, (2, 40))
    shared.check_save_pretrained_round_trip(model, ids, tmp_path)
    shared.check_training_lowers_loss(model, ids)
