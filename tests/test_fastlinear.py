"""oneDNN prepacked linears (fastlinear.py): same outputs as F.linear, scoped to the block, repacked on change."""
import pytest
import torch
from torch import nn

from archbench import fastlinear
from archbench.loading import load

pytestmark = pytest.mark.skipif(not fastlinear.available(torch.device("cpu"), torch.float32),
                                reason="this PyTorch build has no oneDNN")


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-mamba", "tiny-rwkv"])
def test_model_logits_match_and_the_model_is_restored(name):
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


def test_a_changed_weight_is_packed_again_and_small_products_stay_on_f_linear():
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
