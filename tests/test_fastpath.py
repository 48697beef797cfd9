"""The lab's fast recurrent mixers (lab/fastpath.py), beyond test_lab's parity at the default sizes:

- the hand-written backwards of MambaInner and Mamba2Inner pass torch.autograd.gradcheck (float64, several
  scan chunks and a partial last one, several SSD chunks with a padded last one, two groups);
- against transformers' reference forward (logits and every gradient): Mamba-2 with several SSD chunks, two
  groups, a clamped time step, no conv bias; Mamba with no conv bias, a sequence shorter than the conv, and
  decays below exp's floor (the clamped path);
- the pooled states stay with their graph: a second backward through a retained graph, after other steps
  have run, gives the first one's gradients; a call under inference_mode leaves nothing that breaks training.
"""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from archbench.lab import fastpath, shapes  # noqa: E402


def _tiny(arch: str, width: int = 32, depth: int = 1, **config):
    from transformers import AutoModelForCausalLM

    cfg = shapes.build(arch, width, depth, 50, 64)
    for key, value in config.items():
        setattr(cfg, key, value)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():  # move away from the symmetric init so every path matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.train()


def _logits_and_grads(model, x):
    model.zero_grad()
    out = model(input_ids=x, labels=x, use_cache=False)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_matches_reference(model, batch: int, length: int):
    x = torch.randint(0, 50, (batch, length), generator=torch.Generator().manual_seed(1))
    ref_logits, ref_grads = _logits_and_grads(model, x)
    assert "lab-" in fastpath.install(model)
    logits, grads = _logits_and_grads(model, x)
    fastpath.uninstall(model)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        scale = ref_grads[name].abs().max().item() + 1e-8
        assert (g - ref_grads[name]).abs().max().item() <= 1e-4 * scale, f"gradient of {name} differs"


# ---------------------------------------------------------------------------------------------- gradcheck
def test_mamba_inner_backward_passes_gradcheck():
    g = torch.Generator().manual_seed(0)
    e, n, r, k = 4, 2, 1, 3
    rand = lambda *s, scale=0.5: (scale * torch.randn(*s, generator=g, dtype=torch.float64)).requires_grad_()  # noqa: E731
    a_log = torch.log(torch.tensor([[1.0, 2.0]] * e, dtype=torch.float64)).requires_grad_()
    inputs = (rand(2, 2 * fastpath.SCAN_CHUNK + 1, 2 * e), rand(e, 1, k), rand(e), rand(r + 2 * n, e), rand(e, r),
              rand(e), a_log, rand(e))
    assert torch.autograd.gradcheck(lambda *x: fastpath.MambaInner.apply(*x, True), inputs)


def test_mamba2_inner_backward_passes_gradcheck():
    g = torch.Generator().manual_seed(0)
    heads, groups, state, p, k, chunk = 4, 2, 2, 2, 3, 3
    e = heads * p
    cd = e + 2 * groups * state
    rand = lambda *s, scale=0.5: (scale * torch.randn(*s, generator=g, dtype=torch.float64)).requires_grad_()  # noqa: E731
    inputs = (rand(2, 3 * chunk - 1, e + cd + heads), rand(cd, 1, k), rand(cd), rand(heads),
              torch.log(torch.arange(1.0, heads + 1, dtype=torch.float64)).requires_grad_(), rand(heads),
              (1 + rand(e, scale=0.1)).detach().requires_grad_())
    shape = (heads, groups, state, 2, 1e-6, 0.0, float("inf"), chunk)
    assert torch.autograd.gradcheck(lambda *x: fastpath.Mamba2Inner.apply(*x, shape), inputs)


# ---------------------------------------------------------------------------------------------- vs transformers
@pytest.mark.parametrize("config", [{}, {"n_groups": 2, "use_conv_bias": False},
                                    {"time_step_limit": (0.01, 0.05)}])
def test_mamba2_several_chunks_match_transformers(monkeypatch, config):
    monkeypatch.setattr(fastpath, "SSD_CHUNK", 8)  # T = 21: three chunks, the last one padded
    _assert_matches_reference(_tiny("mamba2", 64, **config), 3, 21)


@pytest.mark.parametrize("length", [3, 21])
def test_mamba_without_conv_bias_matches_transformers(length):
    _assert_matches_reference(_tiny("mamba", use_conv_bias=False), 2, length)


def test_mamba_past_the_exp_floor_matches_transformers():
    model = _tiny("mamba")
    with torch.no_grad():  # A down to about -870 and dt about 2: dt A far below -80 on many channels
        for layer in model.backbone.layers:
            layer.mixer.A_log.add_(4.0)
            layer.mixer.dt_proj.bias.add_(2.0)
    _assert_matches_reference(model, 3, 21)


# ---------------------------------------------------------------------------------------------- pooled states
def test_retained_graph_keeps_its_states():
    model = _tiny("mamba", depth=2)
    fastpath.install(model)
    x, other = (torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    loss = model(input_ids=x, labels=x, use_cache=False).loss
    loss.backward(retain_graph=True)
    first = {n: p.grad.clone() for n, p in model.named_parameters()}
    for _ in range(2):  # other graphs take and give back pooled buffers meanwhile
        model.zero_grad()
        model(input_ids=other, labels=other, use_cache=False).loss.backward()
    model.zero_grad()
    loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, first[name], rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["mamba", "mamba2"])
def test_inference_mode_call_then_training(monkeypatch, arch):
    monkeypatch.setattr(fastpath, "_WORK", {})  # nothing made earlier outside inference mode
    monkeypatch.setattr(fastpath, "_POOL", {})
    model = _tiny(arch)
    fastpath.install(model)
    x = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():  # scratch and pooled tensors made here are inference tensors
        model(input_ids=x, use_cache=False)
    model(input_ids=x, labels=x, use_cache=False).loss.backward()
    assert all(p.grad is not None for p in model.parameters())
