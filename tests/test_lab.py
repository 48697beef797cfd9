"""The architecture lab (src/archbench/lab), offline, on tiny models:

- MQAR: every query's key appears exactly once before it and the token after that key is the label; labels
  only at answer positions; disjoint key/value halves; same seed same data;
- fast mixers (fastpath.py) give transformers' reference logits and gradients (Mamba, Mamba-2, RWKV-4, the
  Bamba hybrid's Mamba-2 mixers);
- training lowers the loss for every architecture; an interrupted and resumed run ends with bit-identical
  weights; 2 processes (torchrun) equal 1 at the same global batch; --params matching lands within 10%;
- a trained directory loads through archbench.loading.load (tokenizer included, marked trained) and
  archbench's engine gives transformers' greedy tokens on it.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from archbench.lab import fastpath, mqar, shapes, text  # noqa: E402
from archbench.lab.train import TrainConfig, train  # noqa: E402

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared/data/text/tinyshakespeare.txt"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """~30k characters of real text (tiny Shakespeare's start when present, else a generated verse)."""
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    if SHAKESPEARE.exists():
        path.write_text(SHAKESPEARE.read_text()[:30000])
    else:
        lines = [f"Line {i}: the {w} of the night is {v}.\n" for i, (w, v) in
                 enumerate(zip(["king", "queen", "moon", "sea"] * 300, ["dark", "long", "cold", "near"] * 300))]
        path.write_text("".join(lines))
    return path


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: tiny models gain nothing from more, and a shared host loses a lot to oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(out: Path, corpus: Path, **kw) -> TrainConfig:
    base = dict(out=str(out), text=str(corpus), width=32, depth=2, context=32, batch_size=8, iters=30, lr=1e-2,
                min_lr=1e-3, warmup=4, eval_every=0, log_every=1, save_every=0, db=str(out.parent / "t.sqlite"))
    return TrainConfig(**{**base, **kw})


# ---------------------------------------------------------------------------------------------- MQAR
@pytest.mark.parametrize("fill", mqar.FILLS)
def test_mqar_queries_keys_and_labels(fill):
    vocab, pairs = 256, 8
    seg = mqar.generate(64, pairs, vocab, n=200, seed=3, fill=fill)
    assert seg.inputs.shape == seg.labels.shape == (200, 64)
    for x, y in zip(seg.inputs.tolist(), seg.labels.tolist()):
        answers = [i for i, v in enumerate(y) if v != mqar.IGNORE]
        assert len(answers) == pairs  # one answer per key, nothing else labelled
        keys = x[0:2 * pairs:2]
        assert all(1 <= k < vocab // 2 for k in keys) and len(set(keys)) == pairs
        assert all(vocab // 2 <= v < vocab for v in x[1:2 * pairs:2])  # disjoint halves
        for i in answers:
            q = x[i]
            assert q in keys and i >= 2 * pairs
            before = [j for j in range(i) if x[j] == q]
            assert len(before) == 1, f"key {q} occurs {len(before)} times before its query"
            assert x[before[0] + 1] == y[i]  # the label is the value stored after the key
        if fill == "zero":  # Zoology's figure-2 inputs: only keys, values and queries are nonzero
            assert sum(v != 0 for v in x) == 2 * pairs + 2 * pairs


def test_mqar_is_seeded_and_checks_its_arguments():
    a, b = mqar.generate(128, 8, 512, 20, seed=1), mqar.generate(128, 8, 512, 20, seed=1)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.inputs, mqar.generate(128, 8, 512, 20, seed=2).inputs)
    assert mqar.parse_points("64x4, 128x8") == [(64, 4), (128, 8)]
    with pytest.raises(ValueError, match="LENGTHxPAIRS"):
        mqar.parse_points("64-4")
    with pytest.raises(ValueError, match="length 30"):
        mqar.generate(30, 8, 256, 1, 0)
    with pytest.raises(ValueError, match="fill"):
        mqar.generate(64, 4, 256, 1, 0, fill="ones")


# ---------------------------------------------------------------------------------------------- fast path
def _tiny_recurrent(arch: str):
    from test_fastpath import _tiny  # the same tiny perturbed model test_fastpath checks its Functions on

    # Mamba-2: several chunks and a padded last one at T = 21
    return _tiny(arch, 32, 2, **({"chunk_size": 8} if arch == "mamba2" else {}))


@pytest.mark.parametrize("arch", ["mamba", "mamba2", "rwkv", "bamba"])
def test_fast_mixer_matches_transformers_logits_and_grads(arch):
    model = _tiny_recurrent(arch)
    x = torch.randint(0, 50, (3, 21), generator=torch.Generator().manual_seed(1))

    def run():
        model.zero_grad()
        out = model(input_ids=x, labels=x, use_cache=False)
        out.loss.backward()
        return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    ref_logits, ref_grads = run()
    assert "lab-" in fastpath.install(model)
    logits, grads = run()
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-5)
    for name, g in grads.items():
        scale = ref_grads[name].abs().max().item() + 1e-8
        assert (g - ref_grads[name]).abs().max().item() <= 1e-4 * scale, f"{arch} gradient of {name} differs"
    fastpath.uninstall(model)
    assert fastpath.kernel(model) == "transformers reference forward"


# ---------------------------------------------------------------------------------------------- shapes
def test_params_matching_within_ten_percent():
    for arch in shapes.ARCHS:
        width, blocks, n = shapes.match(arch, 800_000, 4, 67, 64)
        assert abs(n - 800_000) <= 0.1 * 800_000, (arch, width, blocks, n)
        assert n == shapes.non_embedding_params(shapes.build(arch, width, blocks // shapes.get(arch).depth_factor,
                                                             67, 64))
    with pytest.raises(ValueError, match="--params 10"):
        shapes.match("gpt2", 10, 4, 67, 64)
    with pytest.raises(ValueError, match="--arch"):
        shapes.get("lstm")


# ---------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus):
    """One tiny trained model directory per architecture: {arch: (config, result)}."""
    root = tmp_path_factory.mktemp("lab")
    runs = {}
    for arch in shapes.ARCHS:
        cfg = tiny(root / arch, corpus, arch=arch)
        runs[arch] = (cfg, train(cfg))
    return runs


@pytest.mark.parametrize("arch", list(shapes.ARCHS))
def test_loss_falls_for_every_architecture(trained, arch):
    cfg, result = trained[arch]
    log = [json.loads(line) for line in (Path(cfg.out) / "train_log.jsonl").read_text().splitlines()]
    first, last = sum(e["loss"] for e in log[:5]) / 5, sum(e["loss"] for e in log[-5:]) / 5
    assert last < first - 0.4, f"{arch}: loss {first:.3f} -> {last:.3f}"
    assert result["val_loss"] < first - 0.3 and result["finished"]
    assert ("lab-" in result["kernel"]) == (shapes.get(arch).family != "transformer")


@pytest.mark.parametrize("arch", ["gpt2", "mamba", "rwkv", "bamba"])
def test_trained_directory_loads_and_engine_matches_transformers(trained, corpus, arch):
    from archbench import engine
    try:  # the generation settings' class moved from generation.GenSettings to config.GenConfig
        from archbench.config import GenConfig
    except ImportError:
        from archbench.generation import GenSettings as GenConfig
    from archbench.loading import load
    from archbench.store import Store

    cfg, _ = trained[arch]
    lm = load(cfg.out)
    assert not lm.untrained and lm.family == shapes.get(arch).family
    marker = json.loads((Path(cfg.out) / "archbench.json").read_text())
    assert marker["recipe"]["arch"] == arch and marker["kernel"]
    text = corpus.read_text()[:22]  # "First Citizen:\nWe are" with tiny Shakespeare, else the generated verse
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert lm.tokenizer.decode(ids) == text
    settings = GenConfig(max_new_tokens=8, stop=(), batch_size=1, min_new_tokens=8)
    ours = next(iter(engine.run(lm, [ids], settings))).tokens[0]
    with torch.inference_mode():
        ref = lm.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                do_sample=False, max_new_tokens=8, min_new_tokens=8,
                                pad_token_id=lm.tokenizer.pad_token_id)
    assert ours == ref[0, len(ids):].tolist()
    with Store(cfg.db) as store:
        keys = {r["key"] for r in store.records(f"train-{arch}", "train")}
    assert {"val", "result", "log-000030"} <= keys


def test_resume_is_bit_identical(tmp_path, corpus):
    from safetensors.torch import load_file

    straight = train(tiny(tmp_path / "a", corpus, arch="mamba", iters=8))
    first = train(tiny(tmp_path / "b", corpus, arch="mamba", iters=8, stop_after=5))
    assert not first["finished"] and not (tmp_path / "b" / "model.safetensors").exists()
    resumed = train(tiny(tmp_path / "b", corpus, arch="mamba", iters=8, resume=True))
    assert resumed["finished"] and resumed["final_loss"] == straight["final_loss"]
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="--resume"):
        train(tiny(tmp_path / "b", corpus, arch="mamba", iters=8))


def test_mqar_run_scores_every_grid_point(tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "m"), arch="gpt2", data="mqar", width=32, depth=2, batch_size=16,
                      iters=6, warmup=1, mqar_vocab=128, mqar_train="32x4", mqar_test="32x4,64x4",
                      mqar_examples=64, mqar_test_examples=16, eval_every=0, save_every=0,
                      db=str(tmp_path / "t.sqlite"))
    result = train(cfg)
    assert [(r["seq_len"], r["pairs"]) for r in result["mqar"]] == [(32, 4), (64, 4)]
    assert all(r["queries"] == 64 and 0 <= r["accuracy"] <= 1 for r in result["mqar"])
    assert result["mqar"][1]["state_bytes"] == 2 * result["mqar"][0]["state_bytes"] > 0  # a KV cache: grows with T


def test_bad_input_is_one_line(tmp_path):
    with pytest.raises(ValueError, match="--text .*no such file"):
        text.load(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="--data"):
        train(dataclasses.replace(TrainConfig(out=str(tmp_path / "x")), data="images"))


def test_two_processes_match_one_at_the_same_global_batch(tmp_path, corpus):
    """torchrun --nproc_per_node 2 (gloo): each process takes half of every global batch; every step's loss and
    the final weights match one process (mamba: the fast mixer under DDP)."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    one = train(tiny(tmp_path / "one", corpus, arch="mamba", iters=4))
    flags = ["--arch", "mamba", "--text", str(corpus), "--width", "32", "--depth", "2", "--context", "32",
             "--batch-size", "8", "--iters", "4", "--lr", "1e-2", "--min-lr", "1e-3", "--warmup", "4",
             "--eval-every", "0", "--log-every", "1", "--save-every", "0", "--db", str(tmp_path / "two.sqlite")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "archbench.lab.train",
           "--out", str(tmp_path / "two"), *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "train.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    losses = [[json.loads(line)["loss"] for line in (tmp_path / d / "train_log.jsonl").read_text().splitlines()]
              for d in ("one", "two")]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
