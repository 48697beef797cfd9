"""RWKV-7 in the lab (lab/shapes.py "rwkv7", lab/init_rwkv7.py, lab/fastpath_rwkv7.py), offline, on tiny models:

- BlinkDL's training init (RWKV-LM RWKV-v7/train_temp): the initial loss is about ln(vocab), every block starts
  as the identity on the residual stream, and the layer-dependent pieces (token-shift mixes, decay base, ln_x)
  follow that recipe;
- the training-speed wkv7 (hand-written backward) gives models/wkv7.py's outputs, final state and gradients
  from any entering state, across chunk boundaries; installed through fastpath (the hook fastpath_rwkv7 asks
  for), the attention gives the model's own logits and gradients;
- a tiny run lowers the loss; the trained directory loads through archbench.loading.load and archbench's
  engine gives transformers' greedy tokens (test_lab's check, reused).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from archbench.lab import fastpath, fastpath_rwkv7, shapes  # noqa: E402
from archbench.lab.train import train  # noqa: E402
from archbench.models.wkv7 import wkv7  # noqa: E402
from test_lab import corpus, one_thread, tiny  # noqa: E402,F401  (fixtures: tiny Shakespeare's start, 1 thread)
from test_lab import test_trained_directory_loads_and_engine_matches_transformers as check_trained  # noqa: E402

VOCAB = 67  # tiny Shakespeare's characters + EOS + UNK


def _model(width: int = 64, depth: int = 3):
    """A seeded rwkv7 lab model with BlinkDL's init (heads of 32)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(shapes.build("rwkv7", width, depth, VOCAB, 64))
    shapes.get("rwkv7").init(model)
    return model


# ---------------------------------------------------------------------------------------------- init
def test_init_starts_near_ln_vocab_with_identity_blocks():
    model = _model()
    x = torch.randint(0, VOCAB, (8, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        loss = model(input_ids=x, labels=x).loss.item()
        body = model.model
        # zero o_proj and ffn.value: the blocks add nothing yet, the output is the normed, normed embedding
        torch.testing.assert_close(body(x), body.norm(body.layers[0].pre_norm(body.embeddings(x))))
    # a gain-0.5 orthogonal head on unit-variance features: logits of variance ~0.25, loss ~ ln V + 0.125
    assert math.log(VOCAB) < loss < math.log(VOCAB) + 0.3, loss


def test_init_follows_blinkdl_layer_recipe():
    model = _model(width=64, depth=4)
    layers = model.model.layers
    assert model.model.embeddings.weight.abs().max() <= 1e-4
    for i, blk in enumerate(layers):
        att = blk.attn
        torch.testing.assert_close(att.g_norm.weight, torch.full((64,), ((i + 1) / 4) ** 0.7))
        w0 = att.w_lora.lora[2].bias  # -6 + 6 ramp + 0.5 + 2.5 zigzag: from ~-8 (slow) to 3 (fast)
        assert w0[0].item() == pytest.approx(-8.0) and w0[-1].item() == pytest.approx(3.0)
        for lora in (att.w_lora, att.a_lora, att.g_lora) + ((att.v_lora,) if i else ()):
            assert not lora.lora[0].weight.any()  # down projections start at zero
            torch.testing.assert_close(torch.linalg.svdvals(lora.lora[2].weight), torch.full((32,), 0.1))
        assert not att.o_proj.weight.any() and not blk.ffn.value.weight.any()
        assert att.x_r[0, 0, 0] == 1 and att.k_a.eq(1.02).all() and att.r_k.eq(-0.04).all()
    mixes = [blk.attn.x_k.mean().item() for blk in layers]  # 1 - ddd^(0.7 (1 - i / L)): less shift deeper
    assert mixes == sorted(mixes, reverse=True) and mixes[0] > mixes[-1] + 0.2


# ---------------------------------------------------------------------------------------------- fast path
@pytest.mark.parametrize("t", [64, 37, 70, 2, 1])
def test_training_wkv_matches_the_model_wkv(t):
    """Outputs, final state and the gradients of all seven inputs (entering state included)."""
    g = torch.Generator().manual_seed(t)
    bsz, h, n = 3, 2, 16
    r, k, v = (torch.randn(bsz, t, h, n, generator=g) for _ in range(3))
    logw = -math.exp(-0.5) * torch.rand(bsz, t, h, n, generator=g)  # the model's decay range
    kk = F.normalize(torch.randn(bsz, t, h, n, generator=g), dim=-1)
    a = torch.rand(bsz, t, h, n, generator=g)
    inputs = [r, logw, k, v, -kk, kk * a, torch.randn(bsz, h, n, n, generator=g)]
    results = []
    for fn in (wkv7, fastpath_rwkv7.wkv7_train):
        xs = [x.clone().requires_grad_() for x in inputs]
        o, state = fn(*xs)
        (o.sin().sum() + state.cos().sum()).backward()
        results.append((o.detach(), state.detach(), [x.grad for x in xs]))
    (o_ref, s_ref, g_ref), (o, s, grads) = results
    torch.testing.assert_close(o, o_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s, s_ref, rtol=1e-4, atol=1e-4)
    for name, got, ref in zip(("r", "logw", "k", "v", "a", "b", "state"), grads, g_ref):
        assert (got - ref).abs().max() <= 1e-4 * ref.abs().max(), f"gradient of {name} differs"


def test_fast_attention_matches_the_model(monkeypatch):
    """Through fastpath.install with fastpath_rwkv7's entries (the hook fastpath.py needs): same logits and
    gradients as the model's own forward, and the kernel recorded."""
    monkeypatch.setattr(fastpath, "_FORWARDS", {**fastpath._FORWARDS, **fastpath_rwkv7.FORWARDS})
    monkeypatch.setattr(fastpath, "KERNELS", {**fastpath.KERNELS, **fastpath_rwkv7.KERNELS})
    model = _model(width=64, depth=2).train()
    with torch.no_grad():  # away from the init's zeros so every path matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randint(0, VOCAB, (3, 45), generator=torch.Generator().manual_seed(2))

    def run():
        model.zero_grad()
        out = model(input_ids=x, labels=x)
        out.loss.backward()
        return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    ref_logits, ref_grads = run()
    assert fastpath.install(model) == fastpath_rwkv7.KERNELS["rwkv7"]
    logits, grads = run()
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-5)
    for name, g in grads.items():
        assert (g - ref_grads[name]).abs().max() <= 1e-4 * (ref_grads[name].abs().max() + 1e-8), name
    fastpath.uninstall(model)


# ---------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus):  # noqa: F811
    """test_lab's tiny run (width 32, 2 blocks, 30 steps) of rwkv7: {"rwkv7": (config, result)}."""
    cfg = tiny(tmp_path_factory.mktemp("lab7") / "rwkv7", corpus, arch="rwkv7")
    return {"rwkv7": (cfg, train(cfg))}


def test_tiny_run_lowers_the_loss(trained):
    cfg, result = trained["rwkv7"]
    log = [json.loads(line) for line in (Path(cfg.out) / "train_log.jsonl").read_text().splitlines()]
    vocab = json.loads((Path(cfg.out) / "config.json").read_text())["vocab_size"]  # the corpus's characters
    assert abs(log[0]["loss"] - math.log(vocab)) < 0.3  # the first step sees the init's loss
    first, last = sum(e["loss"] for e in log[:5]) / 5, sum(e["loss"] for e in log[-5:]) / 5
    assert last < first - 0.8, f"loss {first:.3f} -> {last:.3f}"
    assert result["finished"] and result["val_loss"] < first - 0.8 and result["family"] == "rwkv7"


def test_trained_directory_loads_and_engine_matches_transformers(trained, corpus):  # noqa: F811
    check_trained(trained, corpus, "rwkv7")
