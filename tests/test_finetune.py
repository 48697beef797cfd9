"""The LoRA recipe on tiny zoo models (CPU, fp32): loss falls by a margin, only LoRA weights move, the saved
adapter reloads to the in-memory model's logits (and the engine's), the loss sits on answer tokens only, exact
resume, and two-process data parallelism (torchrun, gloo) and gradient accumulation matching one process on
every update of the same global batches. Settings are a validated FinetuneConfig."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from archbench import families, loading, prompts
from archbench.config import ConfigError
from archbench.data import Example
from archbench.finetune import run
from archbench.finetune_config import STUDY_ARGS, FinetuneConfig
from archbench.finetune_data import IGNORE, build_samples, collate, loss_sum
from archbench.store import Store

FACTS = [("Paris", "France"), ("Rome", "Italy"), ("Madrid", "Spain"), ("Lisbon", "Portugal"),
         ("Berlin", "Germany"), ("Vienna", "Austria"), ("Warsaw", "Poland"), ("Prague", "Czechia")]
FAMILIES = ["tiny-gpt2", "tiny-llama", "tiny-mamba", "tiny-mamba2", "tiny-rwkv"]
LEARNS = 0.7  # a run must end below this fraction of its first loss (lr / 1000 stays above it)


@pytest.fixture(scope="module")
def train_file(tmp_path_factory) -> str:
    """Eight short SQuAD rows (Hugging Face JSON Lines layout)."""
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    rows = [{"id": f"q{i}", "title": country, "question": f"What is the capital of {country}?",
             "context": f"{city} is the capital and largest city of {country}. It lies on a river.",
             "answers": {"text": [city], "answer_start": [0]}} for i, (city, country) in enumerate(FACTS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def settings(tmp_path: Path, train: str, **over) -> FinetuneConfig:
    base = dict(model="tiny-gpt2", train=train, out=str(tmp_path / "ft"), lora_dropout=0.0, max_steps=6, lr=1e-2,
                batch_size=4, max_length=256, warmup_steps=0, limit=4, eval_limit=2, save_every=0, seed=0,
                device="cpu", db=str(tmp_path / "db.sqlite"))
    return FinetuneConfig(**{**base, **over})


def read_log(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_learns_only_lora_and_the_adapter_reloads(name, tmp_path, train_file):
    model, result = run(settings(tmp_path, train_file, model=name))
    # limit 4 = batch 4: every step sees the same rows, so the loss must fall well below where it started
    assert result["final_loss"] < LEARNS * result["first_loss"], (result["first_loss"], result["final_loss"])
    assert result["trainable_params"] == sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    base = loading.load(name).model.state_dict()
    for key, value in model.base_model.model.state_dict().items():
        if "lora_" not in key:
            assert torch.equal(value, base[key.replace(".base_layer", "")]), key
    if name == "tiny-mamba":  # transformers reads dt_proj.weight directly: its LoRA gets no gradient
        assert result["no_grad_modules"] and all(n.endswith("dt_proj") for n in result["no_grad_modules"])
    else:
        assert result["no_grad_modules"] == []

    lm = loading.load(name, adapter=result["adapter"])  # merged, as `archbench eval --adapter` runs it
    ids = lm.tokenizer("Context: Paris is the capital of France.\nQuestion: What is", return_tensors="pt").input_ids
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        torch.testing.assert_close(lm.model(ids).logits, expected, atol=1e-4, rtol=1e-4)
        _, last = families.get(lm.family).prefill(lm.model, ids)  # the engine reads weights itself
        torch.testing.assert_close(last, expected[:, -1].float(), atol=1e-4, rtol=1e-4)


def test_answer_only_labels_mask_exactly_the_prompt():
    tok = loading.load("tiny-gpt2").tokenizer
    style = prompts.load_style("default")
    ex = Example("q", "Paris is the capital of France.", "What is the capital of France?", ("Paris",))
    prompt = prompts.render(style, ex, [])
    p = tok(prompt, add_special_tokens=False).input_ids
    a = tok(" Paris", add_special_tokens=False).input_ids + [tok.eos_token_id]
    (answer_only,) = build_samples([ex], style, tok, max_length=256)
    assert answer_only.ids == p + a
    assert answer_only.labels == [IGNORE] * len(p) + a
    assert tok.decode(answer_only.ids) == prompt + " Paris" + tok.eos_token
    (everything,) = build_samples([ex], style, tok, max_length=256, loss_on="all")
    assert everything.labels == everything.ids

    long = Example("l", "Paris is the capital of France. " * 40, ex.question, ("Paris",))
    (cut,) = build_samples([long], style, tok, max_length=48)
    assert len(cut.ids) <= 48 and cut.ids[-len(a):] == a and cut.labels[-len(a):] == a  # answer never cut
    batch = collate([answer_only, cut], tok.pad_token_id)
    assert batch["input_ids"].shape == (2, max(len(answer_only.ids), len(cut.ids)))
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()


class FixedLogits(torch.nn.Module):
    """A stand-in causal LM whose logits are a given (B, T, V) table, honouring a boolean `logits_to_keep`."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table

    def forward(self, input_ids, attention_mask, logits_to_keep):
        return SimpleNamespace(logits=self.table[logits_to_keep])  # (N, V)


def test_loss_is_on_answer_tokens_only():
    """Logits at prompt positions do not move the loss; logits predicting an answer token (or EOS) do. Where
    the answer starts comes from tokenising the prompt alone, not from the labels under test."""
    tok = loading.load("tiny-gpt2").tokenizer
    style = prompts.load_style("default")
    rows = [Example("a", "Rome is in Italy.", "Where is Rome?", ("Italy",)),
            Example("b", "Oslo is the capital of Norway, a country.", "Which country?", ("Norway",))]
    batch = collate(build_samples(rows, style, tok, 256), tok.pad_token_id)
    b, t = batch["input_ids"].shape
    table = torch.randn(b, t, len(tok), generator=torch.Generator().manual_seed(0))  # (B, T, V)
    base = loss_sum(FixedLogits(table), batch)
    expected = torch.zeros(())
    for row, ex in enumerate(rows):
        start = len(tok(prompts.render(style, ex, []), add_special_tokens=False).input_ids)  # first answer token
        end = int(batch["attention_mask"][row].sum())  # answer + EOS end here
        ids = batch["input_ids"][row]
        expected += torch.nn.functional.cross_entropy(table[row, start - 1:end - 1], ids[start:end], reduction="sum")
        moved = table.clone()
        moved[row, :start - 1] = torch.randn(start - 1, table.shape[-1])  # every position predicting a prompt token
        assert loss_sum(FixedLogits(moved), batch) == base  # prompt tokens carry no loss
        moved = table.clone()
        moved[row, start - 1, ids[start]] += 5.0  # the first answer token made more likely: the loss falls
        assert loss_sum(FixedLogits(moved), batch) < base - 1e-2
        moved = table.clone()
        moved[row, end - 2, ids[end - 1]] += 5.0  # so is EOS, which ends the answer
        assert loss_sum(FixedLogits(moved), batch) < base - 1e-2
    torch.testing.assert_close(base, expected)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-rwkv"])
def test_loss_from_kept_logits_equals_full_logits_cross_entropy(name):
    """The real models: logits computed only where a target follows give the full-logits masked loss."""
    lm = loading.load(name)
    style = prompts.load_style("default")
    rows = [Example("a", "Rome is in Italy.", "Where is Rome?", ("Italy",)),
            Example("b", "Oslo is the capital of Norway, a country.", "Which country?", ("Norway",))]
    batch = collate(build_samples(rows, style, lm.tokenizer, 256), lm.tokenizer.pad_token_id)
    with torch.no_grad():
        logits = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        full = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(),
                                                 ignore_index=IGNORE, reduction="sum")
        torch.testing.assert_close(loss_sum(lm.model, batch), full, atol=1e-3, rtol=1e-5)


def test_resume_after_interruption_gives_the_same_adapter(tmp_path, train_file, monkeypatch):
    common = dict(limit=8, batch_size=2, max_steps=6, lora_dropout=0.1, lr=5e-3)  # 4 steps/epoch: crosses one
    _, straight = run(settings(tmp_path / "a", train_file, **common))

    put = Store.put

    def interrupt(self, run_id, kind, key, data):
        if kind == "train_log" and key == "5":
            raise RuntimeError("interrupted")
        put(self, run_id, kind, key, data)

    monkeypatch.setattr(Store, "put", interrupt)
    cfg = settings(tmp_path / "b", train_file, save_every=2, **common)
    with pytest.raises(RuntimeError, match="interrupted"):
        run(cfg)
    monkeypatch.setattr(Store, "put", put)
    with pytest.raises(ValueError, match="--resume"):
        run(cfg)
    with pytest.raises(ValueError, match=r"other settings \(lr\)"):
        run(dataclasses.replace(cfg, resume=True, lr=1e-3))
    edited = tmp_path / "edited.jsonl"  # the run is its content: edited training rows are refused ...
    edited.write_text(Path(train_file).read_text().replace("largest city", "biggest city"))
    with pytest.raises(ValueError, match=r"other settings \(training rows\)"):
        run(dataclasses.replace(cfg, resume=True, train=str(edited)))
    same = tmp_path / "same.jsonl"  # ... and the same rows through another path resume
    same.symlink_to(train_file)
    _, resumed = run(dataclasses.replace(cfg, resume=True, train=str(same)))

    a, b = load_file(Path(straight["adapter"]) / "adapter_model.safetensors"), \
        load_file(Path(resumed["adapter"]) / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = read_log(resumed["adapter"])
    assert [e["step"] for e in log] == [1, 2, 3, 4, 5, 6]
    assert [e["loss"] for e in log] == [e["loss"] for e in read_log(straight["adapter"])]
    assert straight["final_loss"] == resumed["final_loss"]


def test_two_processes_and_accumulation_match_one_on_every_update(tmp_path, train_file):
    """tiny-mamba: its dt_proj LoRA gets no gradient, so DDP needs (and gets) find_unused_parameters. Every
    step's loss (before the update) and gradient norm (the update itself) must match, and the final weights."""
    common = dict(model="tiny-mamba", limit=8, max_steps=3, lr=1e-2)
    _, single = run(settings(tmp_path / "one", train_file, batch_size=4, **common))
    _, accumulated = run(settings(tmp_path / "accum", train_file, batch_size=2, grad_accum=2, **common))
    out = tmp_path / "two" / "ft"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "archbench", "finetune",
           "--model", "tiny-mamba", "--train", train_file, "--out", str(out), "--limit", "8", "--max-steps", "3",
           "--lr", "1e-2", "--batch-size", "2", "--lora-dropout", "0", "--warmup-steps", "0", "--max-length", "256",
           "--save-every", "0", "--seed", "0", "--device", "cpu", "--db", str(tmp_path / "two" / "db.sqlite")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((out / "finetune.json").read_text())
    assert two["world_size"] == 2 and two["no_grad_modules"] == single["no_grad_modules"] != []
    assert "find_unused_parameters=True" in proc.stdout + proc.stderr
    reference = read_log(single["adapter"])
    assert len(reference) == 3
    for other in (read_log(out), read_log(accumulated["adapter"])):
        assert [e["step"] for e in other] == [1, 2, 3]
        assert [e["loss"] for e in other] == pytest.approx([e["loss"] for e in reference], rel=1e-4)
        assert [e["grad_norm"] for e in other] == pytest.approx([e["grad_norm"] for e in reference], rel=1e-3)
    want = load_file(Path(single["adapter"]) / "adapter_model.safetensors")
    for where in (out, Path(accumulated["adapter"])):
        got = load_file(where / "adapter_model.safetensors")
        assert got.keys() == want.keys() and all(torch.allclose(got[k], want[k], atol=1e-5) for k in want)


def test_periodic_eval_store_and_merged_model(tmp_path, train_file):
    cfg = settings(tmp_path, train_file, model="tiny-llama", max_steps=2, eval_every=2, eval_data=train_file,
                   merge=True)
    _, result = run(cfg)
    saved = json.loads((Path(cfg.out) / "finetune.json").read_text())
    assert saved["settings"]["lora_r"] == 8 and len(saved["data_sha256"]) == 64 and saved["train_sha256"]
    assert saved["settings"]["target_modules"] is None and "resume" not in saved["settings"]
    assert {"eval_loss", "eval_em", "eval_f1"} <= set(saved["last_eval"])
    summary = json.loads((Path(cfg.out) / "evals" / "step-000002" / "summary.json").read_text())
    assert summary["results"][0]["adapter"].endswith("adapter")  # EM came from the adapted model
    assert summary["results"][0]["n"] == cfg.eval_limit
    assert saved["last_eval"]["eval_em"] == summary["results"][0]["em"]
    with Store(cfg.db) as store:
        assert [r["key"] for r in store.records(result["run_id"], "train_log")] == ["1", "2"]
    merged, adapted = loading.load(result["merged"]), loading.load("tiny-llama", adapter=result["adapter"])
    assert merged.family == "transformer" and merged.untrained  # the zoo marker was copied
    ids = adapted.tokenizer("Who wrote Hamlet?", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(merged.model(ids).logits, adapted.model(ids).logits)


def test_bad_target_modules_fail_with_the_reason(tmp_path, train_file):
    with pytest.raises(ValueError, match="peft refuses LoRA on out_proj and conv1d"):
        run(settings(tmp_path, train_file, model="tiny-mamba", target_modules=["in_proj,out_proj"]))
    with pytest.raises(ValueError, match="its linear layers: .*c_attn"):
        run(settings(tmp_path, train_file, target_modules=["q_proj"]))


@pytest.mark.parametrize("over, option", [
    (dict(lr=0.0), "--lr"), (dict(batch_size=0), "--batch-size"), (dict(grad_accum=0), "--grad-accum"),
    (dict(lora_r=0), "--lora-r"), (dict(lora_dropout=1.0), "--lora-dropout"), (dict(schedule="step"), "--schedule"),
    (dict(loss_on="prompt"), "--loss-on"), (dict(max_steps=0), "--max-steps"), (dict(limit=0), "--limit"),
    (dict(eval_every=5), "--eval-every"), (dict(device="tpu"), "--device"), (dict(warmup_steps=-1), "--warmup-steps"),
])
def test_bad_settings_are_refused_in_one_line_naming_the_option(over, option):
    with pytest.raises(ConfigError) as err:
        FinetuneConfig(model="m", train="t", out="o", **over)
    assert str(err.value).startswith(option + ":") and "\n" not in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_on_a_machine_without_it_is_one_line(tmp_path, train_file):
    with pytest.raises(ConfigError, match="--device: cuda"):
        run(settings(tmp_path, train_file, device="cuda"))


def test_config_targets_study_args_and_no_torch_import():
    assert FinetuneConfig("m", "t", "o", target_modules=["a,b", " c "]).target_modules == ("a", "b", "c")
    assert FinetuneConfig("m", "t", "o").target_modules == ()
    assert set(STUDY_ARGS) == {f.name for f in dataclasses.fields(FinetuneConfig)} - {
        "model", "train", "out", "device", "db"}
    code = ("import sys, archbench.finetune_config as c; assert 'torch' not in sys.modules, 'torch imported'; "
            "print(len(c.STUDY_ARGS))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == str(len(STUDY_ARGS)), proc.stderr[-2000:]
