"""RWKV-6 (models/rwkv6.py, families/rwkv6.py) against BlinkDL's own runtime, the `rwkv` PyPI package (its v6
path, `strategy="cpu fp32"`, JIT and CUDA kernels off), on a tiny random checkpoint in BlinkDL's `.pth` layout:
whole-sequence and token-by-token logits within 1e-4 of the package's logit scale, identical greedy tokens,
the wkv state, the chunked form against the plain recurrence, batched prefill with a shared prefix and mixed
lengths equal to batch 1, and save_pretrained -> from_pretrained.
"""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from archbench.families import rwkv6 as fam
from archbench.models.rwkv6 import Rwkv6Config, Rwkv6ForCausalLM
from archbench.models.rwkv_convert import cached, random_pth
from archbench.models.wkv6 import wkv6_chunked, wkv6_step

VOCAB, WIDTH, LAYERS = 500, 128, 3
REL = 1e-4  # max |logit difference| / max |reference logit|


def _rwkv_package_v6():
    """A private copy of `rwkv.model` with its v4-v6 path (RWKV_V7_ON off); it reads RWKV_* env vars at import,
    construction and forward time (the fixture keeps them set) and flips global TF32 switches (restored)."""
    spec = importlib.util.find_spec("rwkv.model") if importlib.util.find_spec("rwkv") else None
    if spec is None:
        pytest.skip("BlinkDL's `rwkv` package is not installed (pip install rwkv)")
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    private = importlib.util.spec_from_file_location("_rwkv_model_v6", spec.origin)
    mod = importlib.util.module_from_spec(private)
    private.loader.exec_module(mod)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return mod


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(the rwkv package's model, archbench's model) on the same random RWKV-6 weights."""
    tmp = tmp_path_factory.mktemp("rwkv6")
    random_pth(tmp / "tiny.pth", vocab=VOCAB, width=WIDTH, layers=LAYERS, version=6)
    with pytest.MonkeyPatch.context() as mp:
        for key in ("RWKV_V7_ON", "RWKV_JIT_ON", "RWKV_CUDA_ON"):
            mp.setenv(key, "0")
        ref = _rwkv_package_v6().RWKV(model=str(tmp / "tiny"), strategy="cpu fp32", verbose=False)
        yield ref, Rwkv6ForCausalLM.from_pretrained(str(cached(tmp / "tiny.pth", tmp / "cache"))).eval()


def _ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def test_prefill_logits_and_state_match_rwkv_package(pair):
    ref, model = pair
    ids = _ids(70, 1)  # crosses four chunk boundaries (CHUNK = 16)
    with torch.no_grad():
        want, ref_state = ref.forward(ids, None, full_output=True)
        got = model(torch.tensor([ids])).logits[0]
        state, _ = fam.FAMILY.prefill(model, [ids])
    print(f"\nRWKV-6 prefill of 70 tokens vs rwkv package: max abs {(got - want).abs().max():.2e}, "
          f"relative {_rel(got, want):.2e}")
    assert _rel(got, want) < REL
    for i in range(LAYERS):
        assert torch.allclose(state.att_x[i][0], ref_state[3 * i], atol=1e-5)
        assert _rel(state.wkv[i][0], ref_state[3 * i + 1]) < REL
        assert torch.allclose(state.ffn_x[i][0], ref_state[3 * i + 2], atol=1e-5)


def test_steps_and_greedy_tokens_match_rwkv_package(pair):
    ref, model = pair
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
            want, ref_state = ref.forward([theirs[-1]], ref_state)
            state, got = fam.FAMILY.step(model, torch.tensor([ours[-1]]), state)
    print(f"\nRWKV-6 40 steps vs rwkv package: max relative logit difference {worst:.2e}, "
          f"smallest reference top-2 gap {gap:.2e}")
    assert worst < REL
    assert ours == theirs


def test_chunked_form_equals_recurrence():
    torch.manual_seed(0)
    b, h, t, n = 2, 2, 37, 8
    r, k, v = (torch.randn(b, h, t, n, dtype=torch.float64) for _ in range(3))
    logw = -torch.exp(2 * torch.randn(b, h, t, n, dtype=torch.float64))  # decays from ~1 to ~0
    u, s0 = torch.randn(h, n, dtype=torch.float64), torch.randn(b, h, n, n, dtype=torch.float64)
    outs, s = [], s0
    for i in range(t):
        o, s = wkv6_step(r[:, :, i], logw[:, :, i], k[:, :, i], v[:, :, i], u, s)
        outs.append(o)
    for chunk in (1, 16, 37):
        o, s_end = wkv6_chunked(r, logw, k, v, u, s0, chunk=chunk)
        assert torch.allclose(o, torch.stack(outs, 2), atol=1e-9, rtol=1e-9), chunk
        assert torch.allclose(s_end, s, atol=1e-9, rtol=1e-9), chunk


def test_batched_prefill_with_prefix_equals_batch_one(pair):
    _, model = pair
    prefix, rows = _ids(40, 3), [_ids(n, 10 + n) for n in (7, 31, 18, 7, 1)]
    with torch.no_grad():
        state, logits = fam.FAMILY.prefill(model, rows, fam.FAMILY.prefill(model, [prefix])[0])
        for j, row in enumerate(rows):
            alone_state, alone = fam.FAMILY.prefill(model, [prefix + row])
            assert _rel(logits[j], alone[0]) < REL
            _, nxt = fam.FAMILY.step(model, logits[j:j + 1].argmax(-1), fam.FAMILY.select(state, torch.tensor([j])))
            assert _rel(nxt[0], fam.FAMILY.step(model, alone.argmax(-1), alone_state)[1][0]) < REL


def test_save_pretrained_round_trip_and_training(tmp_path):
    cfg = Rwkv6Config(vocab_size=64, hidden_size=64, num_hidden_layers=2, head_size=32, intermediate_size=128,
                      time_mix_extra_dim=8, time_decay_extra_dim=8)
    torch.manual_seed(0)
    model = Rwkv6ForCausalLM(cfg)
    ids = torch.randint(0, 64, (2, 40))
    model.save_pretrained(str(tmp_path))
    from transformers import AutoModelForCausalLM

    import archbench.models  # noqa: F401  registers rwkv6

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
