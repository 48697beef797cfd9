"""RWKV-5 "Eagle" (models/rwkv5.py, families/rwkv5.py) against BlinkDL's own runtime, the `rwkv` PyPI package (its
v5.2 path, `strategy="cpu fp32"`, JIT and CUDA kernels off), on a tiny random checkpoint in BlinkDL's `.pth`
layout: whole-sequence logits within 1e-4 of the package's logit scale and the wkv state, token-by-token logits
and greedy tokens, RWKV-5's chunked state update against a plain per-token loop, batch composition and a shared
prefix never changing an output through the engine, an HF-format hub-style directory (remote-code config and
tokenizer declarations, hub parameter names) loading without remote code to the same model as the `.pth`, and
save_pretrained -> from_pretrained with training.
"""
from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from archbench.families import rwkv5 as fam
from archbench.models.rwkv5 import Rwkv5Config, Rwkv5ForCausalLM, wkv5
from archbench.models.rwkv_convert import cached, random_pth

VOCAB, WIDTH, LAYERS, HEAD = 500, 128, 3, 64
REL = 1e-4  # max |logit difference| / max |reference logit|


def _rwkv_package():
    """A private copy of `rwkv.model` with its v4-v6 path (RWKV_V7_ON off); it reads RWKV_* env vars at import,
    construction and forward time (the fixture keeps them set) and flips global TF32 switches (restored)."""
    spec = importlib.util.find_spec("rwkv.model") if importlib.util.find_spec("rwkv") else None
    if spec is None:
        pytest.skip("BlinkDL's `rwkv` package is not installed (pip install rwkv)")
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    private = importlib.util.spec_from_file_location("_rwkv_model_v5", spec.origin)
    mod = importlib.util.module_from_spec(private)
    private.loader.exec_module(mod)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return mod


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(the rwkv package's model, archbench's model, the BlinkDL state dict) on the same random RWKV-5.2 weights."""
    tmp = tmp_path_factory.mktemp("rwkv5")
    sd = random_pth(tmp / "tiny.pth", vocab=VOCAB, width=WIDTH, layers=LAYERS, head=HEAD, version=5)
    with pytest.MonkeyPatch.context() as mp:
        for key in ("RWKV_V7_ON", "RWKV_JIT_ON", "RWKV_CUDA_ON"):
            mp.setenv(key, "0")
        ref = _rwkv_package().RWKV(model=str(tmp / "tiny"), strategy="cpu fp32", verbose=False)
        assert ref.version == 5.2  # the package read the file as RWKV-5.2, the layout random_pth(version=5) writes
        yield ref, Rwkv5ForCausalLM.from_pretrained(str(cached(tmp / "tiny.pth", tmp / "cache"))).eval(), sd


def _ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def test_prefill_logits_and_state_match_rwkv_package(pair):
    ref, model, _ = pair
    ids = _ids(70, 1)  # crosses four chunk boundaries (CHUNK = 16)
    with torch.no_grad():
        want, ref_state = ref.forward(ids, None, full_output=True)
        got = model(torch.tensor([ids])).logits[0]
        state, last = fam.FAMILY.prefill(model, [ids])
    print(f"\nRWKV-5 prefill of 70 tokens vs rwkv package: max abs {(got - want).abs().max():.2e}, "
          f"relative {_rel(got, want):.2e}")
    assert _rel(got, want) < REL and _rel(last[0], want[-1]) < REL
    for i in range(LAYERS):
        assert torch.allclose(state.att_x[i][0], ref_state[3 * i], atol=1e-5)
        assert _rel(state.wkv[i][0], ref_state[3 * i + 1]) < REL
        assert torch.allclose(state.ffn_x[i][0], ref_state[3 * i + 2], atol=1e-5)


def test_steps_and_greedy_tokens_match_rwkv_package(pair):
    ref, model, _ = pair
    worst, gap = 0.0, math.inf
    with torch.no_grad():
        want, ref_state = ref.forward(_ids(30, 2), None)
        state, got = fam.FAMILY.prefill(model, [_ids(30, 2)])
        ours, theirs = [], []
        for _ in range(40):
            worst = max(worst, _rel(got[0], want))
            top = want.topk(2).values
            gap = min(gap, (top[0] - top[1]).item())
            theirs.append(int(want.argmax()))
            ours.append(int(got[0].argmax()))
            want, ref_state = ref.forward([theirs[-1]], ref_state)  # the package's one-token path (att_one_v5_1)
            state, got = fam.FAMILY.step(model, torch.tensor([ours[-1]]), state)
    print(f"\nRWKV-5 40 steps vs rwkv package: max relative logit difference {worst:.2e}, "
          f"smallest reference top-2 gap {gap:.2e}")
    assert worst < REL
    assert ours == theirs


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
    _, model, _ = pair
    prefix, rows = _ids(40, 3), [_ids(n, 10 + n) for n in (7, 31, 18, 7, 1)]
    with torch.no_grad():
        state, logits = fam.FAMILY.prefill(model, rows, fam.FAMILY.prefill(model, [prefix])[0])
        for j, row in enumerate(rows):
            alone_state, alone = fam.FAMILY.prefill(model, [prefix + row])
            assert _rel(logits[j], alone[0]) < REL
            _, nxt = fam.FAMILY.step(model, logits[j:j + 1].argmax(-1), fam.FAMILY.select(state, torch.tensor([j])))
            assert _rel(nxt[0], fam.FAMILY.step(model, alone.argmax(-1), alone_state)[1][0]) < REL


def test_engine_batches_and_prefix_cache_match_batch_one(pair, tmp_path):
    """Greedy tokens through archbench's engine (engine.run): the same at batch size 1 without the shared-prefix
    cache as in batches of 2 and 5 with it (families/common.rwkv_prefill from a batch-1 prefix state)."""
    from archbench import engine
    from archbench.config import GenConfig
    from archbench.loading import load
    from archbench.models.rwkv_world import RwkvWorldTokenizer, package_vocab

    if package_vocab() is None:
        pytest.skip("the world vocabulary ships with the `rwkv` package")
    _, model, _ = pair
    model.save_pretrained(str(tmp_path))
    RwkvWorldTokenizer(str(package_vocab())).save_pretrained(str(tmp_path))
    lm = load(str(tmp_path))
    assert lm.family == "rwkv5" and engine.kernel(lm).startswith("torch-wkv5-chunked")
    prefix = _ids(40, 6)
    ids = [prefix + _ids(n, 20 + n) for n in (7, 31, 18, 44, 25)]

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
    from archbench.models.rwkv_world import VOCAB_FILE, package_vocab

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
    (path / VOCAB_FILE).write_bytes(package_vocab().read_bytes())
    torch.save(_hub_names(sd), path / "pytorch_model.bin")


def test_hub_directory_loads_without_remote_code_and_equals_pth(pair, tmp_path):
    from archbench.loading import load
    from archbench.models.rwkv_world import package_vocab

    if package_vocab() is None:
        pytest.skip("the world vocabulary ships with the `rwkv` package")
    _, model, sd = pair
    _hub_dir(tmp_path / "hub", sd)
    lm = load(str(tmp_path / "hub"))
    assert lm.family == "rwkv5" and type(lm.model) is Rwkv5ForCausalLM
    assert type(lm.tokenizer).__name__ == "RwkvWorldTokenizer"
    assert lm.model.config.intermediate_size == int(WIDTH * 3.5) // 32 * 32
    assert lm.model.config.num_attention_heads == WIDTH // HEAD
    ours, theirs = lm.model.state_dict(), model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    ids = torch.tensor([_ids(40, 5)])
    with torch.no_grad():
        assert torch.equal(lm.model(ids).logits, model(ids).logits)
    text = "RWKV-5 \"Eagle\" 鹰 — round trip\n"
    assert lm.tokenizer.decode(lm.tokenizer(text)["input_ids"]) == text


@pytest.mark.parametrize("declared", ["Rwkv5Tokenizer", "RWKVWorldTokenizer"])
def test_remote_code_world_tokenizer_loads_builtin(tmp_path, declared):
    """A tokenizer_config.json naming the hub's remote-code world tokenizer (RWKV-5 / RWKV-4 world repos) gives
    archbench's RwkvWorldTokenizer without remote code; without a .txt vocabulary beside it (RWKV-4 world repos
    ship a JSON one), the rwkv package's copy of the same vocabulary is used."""
    from archbench.models.rwkv_world import for_remote_code, package_vocab

    if package_vocab() is None:
        pytest.skip("the world vocabulary ships with the `rwkv` package")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": declared, "auto_map": {"AutoTokenizer": [f"tokenization.{declared}", None]}}))
    tok = for_remote_code(str(tmp_path))
    assert type(tok).__name__ == "RwkvWorldTokenizer" and tok.eos_token_id == 0
    spec = importlib.util.spec_from_file_location("_rwkv_tokenizer", package_vocab().parent / "rwkv_tokenizer.py")
    blinkdl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(blinkdl)
    text = "Question: Who is Albert Einstein?\nAnswer: 物理学家 🧪"
    ids = tok(text)["input_ids"]
    assert ids == blinkdl.TRIE_TOKENIZER(str(package_vocab())).encode(text) and tok.decode(ids) == text
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
    model.save_pretrained(str(tmp_path))
    from transformers import AutoModelForCausalLM

    import archbench.models  # noqa: F401  registers rwkv5

    again = AutoModelForCausalLM.from_pretrained(str(tmp_path))
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses
