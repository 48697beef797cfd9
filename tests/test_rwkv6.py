"""RWKV-6 (models/rwkv6.py, families/rwkv6.py) against BlinkDL's own runtime, the `rwkv` PyPI package (its v6
path, `strategy="cpu fp32"`, JIT and CUDA kernels off), on a tiny random checkpoint in BlinkDL's `.pth` layout:
whole-sequence and token-by-token logits within 1e-4 of the package's logit scale, identical greedy tokens,
the wkv state, the chunked form against the plain recurrence, batched prefill with a shared prefix and mixed
lengths equal to batch 1, and save_pretrained -> from_pretrained. The set-up and checks the three RWKV versions
share are in rwkv_reference.py.
"""
from __future__ import annotations

import pytest
import torch

import rwkv_reference as shared
from archbench.families import rwkv6 as fam
from archbench.models.rwkv6 import Rwkv6Config, Rwkv6ForCausalLM
from archbench.models.wkv6 import wkv6_chunked, wkv6_step


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The rwkv package's model and archbench's on the same random RWKV-6 weights (rwkv_reference.Pair)."""
    yield from shared.pair(tmp_path_factory, 6, Rwkv6ForCausalLM, fam.FAMILY)


def test_prefill_logits_and_state_match_rwkv_package(pair):
    shared.check_prefill_matches_package(pair, 70)  # crosses four chunk boundaries (CHUNK = 16)


def test_steps_and_greedy_tokens_match_rwkv_package(pair):
    shared.check_steps_match_package(pair)


def test_chunked_form_equals_recurrence():
    torch.manual_seed(0)
    b, h, t, n = 2, 2, 37, 8
    r, k, v = (torch.randn(b, h, t, n, dtype=torch.float64) for _ in range(3))
    logw = -torch.exp(2 * torch.randn(b, h, t, n, dtype=torch.float64))  # decays from ~1 to ~0
    u, s0 = torch.randn(h, n, dtype=torch.float64), torch.randn(b, h, n, n, dtype=torch.float64)
    shared.check_chunked_equals_steps(wkv6_step, wkv6_chunked, (r, logw, k, v), (u,), s0, chunks=(1, 16, 37))


def test_batched_prefill_with_prefix_equals_batch_one(pair):
    shared.check_batch_with_prefix_equals_alone(pair, (7, 31, 18, 7, 1), keeps=[[0], [1], [2], [3], [4]])


def test_save_pretrained_round_trip_and_training(tmp_path):
    cfg = Rwkv6Config(vocab_size=64, hidden_size=64, num_hidden_layers=2, head_size=32, intermediate_size=128,
                      time_mix_extra_dim=8, time_decay_extra_dim=8)
    torch.manual_seed(0)
    model = Rwkv6ForCausalLM(cfg)
    ids = torch.randint(0, 64, (2, 40))
    shared.check_save_pretrained_round_trip(model, ids, tmp_path)
    shared.check_training_lowers_loss(model, ids)
