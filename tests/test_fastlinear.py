"""CPU linear paths (fastlinear.py): oneDNN prepacked linears give F.linear's outputs, are scoped to the block and
repacked on change; the path per regime is measured once per host, cached, reported and can be forced."""
import json

import pytest
import torch
from torch import nn

from archbench import fastlinear
from archbench.loading import load

pytestmark = pytest.mark.skipif(not fastlinear.available(torch.device("cpu"), torch.float32),
                                reason="this PyTorch build has no oneDNN")
CPU = torch.device("cpu")


@pytest.fixture
def path(monkeypatch):
    """Force a linear path (ARCHBENCH_LINEAR: torch, onednn or auto = measured) with a fresh choice."""

    def force(name: str):
        monkeypatch.setenv("ARCHBENCH_LINEAR", name)
        fastlinear.choice.cache_clear()

    yield force
    fastlinear.choice.cache_clear()


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-mamba", "tiny-rwkv"])
def test_model_logits_match_and_the_model_is_restored(name, path):
    path("onednn")
    lm = load(name, device="cpu")
    ids = torch.randint(100, 1000, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = lm.model(ids).logits
        with fastlinear.packed(lm.model):
            got = lm.model(ids).logits
        again = lm.model(ids).logits
    assert (got - ref).abs().max() <= 1e-4 * ref.abs().max()
    assert torch.equal(again, ref)  # outside the block the model is plain transformers again
    assert not any("forward" in vars(m) for m in lm.model.modules())
    assert any(hasattr(m, "_onednn_weight") for m in lm.model.modules())  # the big products did go to oneDNN


def test_a_changed_weight_is_packed_again_and_small_products_stay_on_f_linear(path):
    path("onednn")
    lin = nn.Linear(512, 512)
    x = torch.randn(16, 512)
    with torch.no_grad(), fastlinear.packed(lin):
        first = lin(x)
        lin.weight.mul_(2)
        second = lin(x)
        small = lin(x[:1])  # 1 x 512 x 512 multiply-adds: under MIN_MACS
    assert torch.allclose(first, x @ lin.weight.T / 2 + lin.bias, atol=1e-4)
    assert torch.allclose(second, x @ lin.weight.T + lin.bias, atol=1e-4)
    assert torch.equal(small, nn.functional.linear(x[:1], lin.weight, lin.bias))


def test_forcing_torch_leaves_the_model_alone_and_says_so(path):
    path("torch")
    lin = nn.Linear(512, 512)
    with torch.no_grad(), fastlinear.packed(lin):
        assert "forward" not in vars(lin)
        lin(torch.randn(64, 512))
    assert not hasattr(lin, "_onednn_weight")
    assert fastlinear.kernel(CPU, torch.float32) == "decode1 torch, decode torch, prefill torch (forced)"
    w = torch.randn(300, 64)
    assert torch.equal(fastlinear.Weight(w)(torch.ones(40, 64)), torch.ones(40, 64) @ w.T)


@pytest.mark.parametrize("forced", ["torch", "onednn"])
def test_weight_matches_f_linear_on_either_path(path, forced):
    path(forced)
    w, b = torch.randn(1536, 576), torch.randn(1536)
    fused = fastlinear.Weight(w, b)
    for rows in (1, 8, 40):
        x = torch.randn(rows, 576)
        with torch.inference_mode():
            assert torch.allclose(fused(x), nn.functional.linear(x, w, b), atol=1e-4)
    assert (fused._packed is not None) == (forced == "onednn")


def test_the_path_is_measured_once_per_host_cached_and_reported(path, monkeypatch, tmp_path):
    calls = []
    fake = {"decode1": {"torch": 1.0, "onednn-prepacked": 1.2}, "decode": {"torch": 3.0, "onednn-prepacked": 1.0},
            "prefill": {"torch": 1.0, "onednn-prepacked": 1.5}}
    monkeypatch.setattr(fastlinear, "measure", lambda: calls.append(1) or fake)
    monkeypatch.setenv("ARCHBENCH_CACHE", str(tmp_path))
    path("auto")
    c = fastlinear.choice()
    assert (c["decode"]["path"], c["prefill"]["path"]) == ("onednn-prepacked", "torch")
    assert c["decode"]["speedup"] == 3.0 and c["source"] == "measured now"
    assert [fastlinear.uses_onednn(CPU, torch.float32, rows) for rows in (1, 2, 3, 16, 17)] == \
        [False, False, True, True, False]  # 1-2 rows: decode1, 3-16: decode, more: prefill
    cached = json.loads((tmp_path / "linear-paths.json").read_text())
    assert list(cached) == [fastlinear.host_key()]
    fastlinear.choice.cache_clear()  # a new process on the same host reads the file
    assert fastlinear.kernel(CPU, torch.float32) == \
        "decode1 torch x1.20, decode onednn-prepacked x3.00, prefill torch x1.50 (measured (cached))"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # another ISA cap is another host key: measured again
    fastlinear.choice.cache_clear()
    fastlinear.choice()
    assert len(calls) == 2 and len(json.loads((tmp_path / "linear-paths.json").read_text())) == 2
    # a cache written before the 1-row regime existed is measured again, not read with a regime missing
    stale = {fastlinear.host_key(): {r: {"path": "torch"} for r in ("decode", "prefill")}}
    (tmp_path / "linear-paths.json").write_text(json.dumps(stale))
    fastlinear.choice.cache_clear()
    assert fastlinear.choice()["decode1"]["path"] == "torch" and len(calls) == 3
