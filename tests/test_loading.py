"""Loading: every family from a local directory through the same path as a hub id; bad model names."""
import pytest
import torch

from archbench import loading, zoo

FAMILY = {"tiny-gpt2": "transformer", "tiny-gpt-neo": "transformer", "tiny-llama": "transformer",
          "tiny-mamba": "mamba", "tiny-mamba2": "mamba2", "tiny-rwkv": "rwkv"}


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_zoo_model_loads_from_its_directory(name):
    path = zoo.ensure(name)
    by_alias, by_path = loading.load(name), loading.load(str(path))
    assert by_alias.family == by_path.family == FAMILY[name]
    assert by_alias.untrained and by_path.untrained
    assert by_alias.params == by_path.params > 1_000_000
    assert len(by_path.tokenizer) == 49152  # SmolLM2's tokenizer, borrowed
    ids = by_path.tokenizer("The capital of Hungary is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a, b = by_alias.model(ids).logits, by_path.model(ids).logits
    assert torch.equal(a, b)
    assert (by_path.max_len is None) == (FAMILY[name] != "transformer")


def test_hub_id_offline_fails_with_one_line_naming_the_zoo(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(loading.ModelError) as err:
        loading.load("state-spaces/mamba-130m-hf")
    message = str(err.value)
    assert "\n" not in message and "offline" in message and "tiny-mamba" in message


@pytest.mark.parametrize("name, words", [("./missing-dir", "no such file"), ("nope.gguf", "GGUF file not found")])
def test_bad_local_names(name, words):
    with pytest.raises(loading.ModelError, match=words):
        loading.load(name)


def test_directory_without_config(tmp_path):
    with pytest.raises(loading.ModelError, match="config.json"):
        loading.load(str(tmp_path))
