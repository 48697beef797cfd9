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


def test_trust_remote_code_runs_the_repos_own_class_on_hf_only(tmp_path, monkeypatch):
    """A directory whose config maps AutoModelForCausalLM to its own modeling file: without the flag
    transformers' class loads; with it the repo's class does, archbench's engine refuses it in one line and
    `--engine hf` gives the same greedy tokens as transformers' class."""
    import json
    import shutil

    from archbench.config import GenConfig
    from archbench.generation import generate

    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    repo = tmp_path / "custom-gpt2"
    shutil.copytree(zoo.ensure("tiny-gpt2"), repo)
    (repo / "modeling_custom.py").write_text("from transformers import GPT2LMHeadModel\n\n\n"
                                             "class CustomGPT2(GPT2LMHeadModel):\n    pass\n")
    cfg = json.loads((repo / "config.json").read_text())
    (repo / "config.json").write_text(json.dumps({**cfg, "auto_map": {"AutoModelForCausalLM":
                                                                      "modeling_custom.CustomGPT2"}}))
    plain, remote = loading.load(str(repo)), loading.load(str(repo), trust_remote_code=True)
    assert type(plain.model).__name__ == "GPT2LMHeadModel" and not plain.remote_code
    assert type(remote.model).__name__ == "CustomGPT2" and remote.remote_code
    gen = GenConfig(max_new_tokens=6, stop=(), batch_size=2)
    with pytest.raises(loading.ModelError, match="--engine hf") as err:
        list(generate(remote, ["Hello there", "The capital"], gen, engine="archbench"))
    assert "\n" not in str(err.value)
    texts = [[c.text for c in r.completions] for r in generate(remote, ["Hello there", "The capital"], gen, "hf")]
    want = [[c.text for c in r.completions] for r in generate(plain, ["Hello there", "The capital"], gen, "hf")]
    assert texts == want
