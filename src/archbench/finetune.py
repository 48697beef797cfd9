"""The LoRA fine-tuning recipe, one readable file in the style of torchtune's: setup, train loop, checkpoint, resume.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") via Hugging Face `peft`; devices,
data parallelism and mixed precision (bf16/fp16 autocast on GPU, fp32 on CPU) via `accelerate`. The same
command runs on CPU, one GPU, and under `torchrun` / `accelerate launch` across GPUs or machines: `python -m
archbench.finetune` takes the options of `archbench finetune`. Several CPU processes need `torchrun
--nproc_per_node N` (gloo); a plain `accelerate launch --cpu --num_processes N` runs one process.

Data: a row is the zero-shot eval prompt (`prompts.render`, the style `archbench eval` uses), then " answer"
and EOS, so the model learns to stop. Prompt and answer are tokenised apart and their ids concatenated: the
loss (answer + EOS by default, `--loss-on all` for every token) starts exactly at the boundary. A row over
`--max-length` gets its context cut by evaluation's rule (`prompts.fit_prompt`); the answer is never cut.

Batches: optimizer step s uses global batch s (batch_size x processes x grad_accum rows) of a permutation
seeded by (seed, epoch), so data order depends only on (seed, s): resume skips consumed batches exactly, and
any process count sees the same global batches. The loss divides summed token losses by the global batch's
target count, so 1 process x batch 4 and 2 processes x batch 2 take the same steps.

LoRA layers that get no gradient (transformers' Mamba reads `dt_proj.weight` directly; its fused CUDA training
kernel also `x_proj`) are found by a probe forward/backward, printed, listed in finetune.json, and only then
is DDP given `find_unused_parameters=True`. peft refuses `out_proj` and `conv1d` on Mamba-family models.

Outputs in --out: the adapter (peft format); finetune.json (settings, data hash, trainable parameters,
losses, wall time); train_log.jsonl (also the store's "train_log" records); checkpoint-NNNNNN/ (LoRA weights,
optimizer, scheduler, step, log, per-process RNG); with --merge, merged/ (loads with `--model DIR/merged`).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers.pytorch_utils import Conv1D

from archbench import families, loading, prompts, zoo
from archbench.data import load_examples, load_pool
from archbench.store import Store
from archbench.trackers import Timer, environment

IGNORE = -100  # label of a token that carries no loss
# every setting but model, train and out, with `archbench finetune`'s defaults (studies override some)
DEFAULTS = {"prompt_style": "default", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.1, "target_modules": None,
            "epochs": 1.0, "max_steps": None, "lr": 2e-4, "batch_size": 8, "grad_accum": 1, "max_length": 1024,
            "schedule": "cosine", "warmup_steps": 10, "max_grad_norm": 1.0, "loss_on": "answer", "limit": None,
            "eval_every": 0, "eval_data": None, "eval_limit": 20, "save_every": 20, "resume": False,
            "merge": False, "seed": 1234, "device": None, "db": "runs/archbench.sqlite"}
# settings a resumed run must share with its checkpoint (the others only change logging and outputs)
_RESUME_KEYS = ("model", "train", "prompt_style", "lora_r", "lora_alpha", "lora_dropout", "target_modules",
                "epochs", "max_steps", "lr", "batch_size", "grad_accum", "max_length", "schedule", "warmup_steps",
                "max_grad_norm", "loss_on", "limit", "seed", "world_size")


@dataclass(frozen=True)
class Sample:
    ids: list[int]  # prompt ids + answer ids + EOS
    labels: list[int]  # IGNORE on every token without loss
    text: str  # the rendered row (hashed into finetune.json)


# ---------------------------------------------------------------------------------------------- data
def build_samples(examples, style, tokenizer, max_length: int, loss_on: str = "answer") -> list[Sample]:
    """Render and tokenise training rows: prompt ids + ids of " answer" + EOS, the prompt masked out."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no end-of-text token to end the answers with")
    texts = [prompts.render(style, e, [], tokenizer) for e in examples]
    answers = [" " + e.answers[0] for e in examples]
    prompt_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    answer_ids = [a + [tokenizer.eos_token_id] for a in tokenizer(answers, add_special_tokens=False)["input_ids"]]
    samples = []
    for ex, text, answer, p, a in zip(examples, texts, answers, prompt_ids, answer_ids):
        if len(p) + len(a) > max_length:  # shorten the context, never the answer
            text = prompts.fit_prompt(style, ex, [], tokenizer, max_length, reserve=len(a)).text
            p = tokenizer(text, add_special_tokens=False)["input_ids"]
        labels = list(p) + a if loss_on == "all" else [IGNORE] * len(p) + a
        samples.append(Sample(ids=list(p) + a, labels=labels, text=text + answer))
    return samples


def collate(samples: list[Sample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch to its longest row (padding carries no loss)."""
    width = max(len(s.ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id)
    labels = torch.full((len(samples), width), IGNORE)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for i, s in enumerate(samples):
        ids[i, :len(s.ids)], labels[i, :len(s.ids)], mask[i, :len(s.ids)] = (
            torch.tensor(s.ids), torch.tensor(s.labels), 1)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def targets(sample: Sample) -> int:
    """Tokens predicted with loss: every labelled token but the first (nothing predicts it)."""
    return sum(1 for t in sample.labels[1:] if t != IGNORE)


def step_rows(step: int, n: int, per_step: int, seed: int) -> list[int]:
    """Row indices of optimizer step `step`: a slice of the permutation seeded by (seed, epoch)."""
    per_epoch = n // per_step
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    return perm[pos * per_step:(pos + 1) * per_step].tolist()


# ---------------------------------------------------------------------------------------------- model
def default_targets(family: str, model_type: str) -> list[str]:
    table = families.get(family).lora_targets
    return list(table.get(model_type, table["*"]))


def check_targets(model, names: list[str], family: str) -> None:
    """Fail early, in one line, on a target module the model lacks or that peft refuses."""
    refused = sorted(families.get(family).lora_refused & set(names))
    if refused:
        raise ValueError(f"--target-modules {', '.join(refused)}: peft refuses LoRA on out_proj and conv1d of "
                         "Mamba-family models, because the fused CUDA path reads those weights directly and would "
                         "silently skip an adapter there (the seed study's out_proj target ran on an older peft); "
                         f"use {', '.join(default_targets(family, model.config.model_type))} (and embeddings)")
    modules = [name for name, _ in model.named_modules()]
    for target in names:
        if not any(m == target or m.endswith("." + target) for m in modules):
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                             if isinstance(m, (torch.nn.Linear, Conv1D))})
            raise ValueError(f"--target-modules {target!r}: {model.config.model_type} has no such module; "
                             f"its linear layers: {', '.join(linear)}")


def loss_sum(model, batch: dict) -> torch.Tensor:
    """Summed cross-entropy of the labelled tokens; logits are computed only where a target follows."""
    keep = F.pad(batch["labels"][:, 1:] != IGNORE, (0, 1), value=False)  # (B, T): next token has a label
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   logits_to_keep=keep).logits  # (N, V), N = labelled tokens in the batch
    return F.cross_entropy(logits.float(), batch["labels"][:, 1:][keep[:, :-1]], reduction="sum")


def layers_without_grad(model, batch: dict) -> list[str]:
    """LoRA layers that one forward/backward leaves without a gradient (their weights are read directly);
    raises when that is every LoRA layer (nothing would train)."""
    model.train()
    loss_sum(model, batch).backward()
    layers: dict[str, bool] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            layer = name.split(".lora_")[0].removeprefix("base_model.model.")
            layers[layer] = layers.get(layer, False) or p.grad is not None
    model.zero_grad(set_to_none=True)
    if not any(layers.values()):
        raise ValueError("no LoRA layer gets a gradient in this model's forward; choose other --target-modules")
    return sorted(layer for layer, has_grad in layers.items() if not has_grad)


def train_step(accelerator, model, optimizer, rows: list[Sample], cfg: dict, pad_id: int) -> tuple[float, float | None]:
    """One optimizer step on a global batch: this process's micro-batches, gradients accumulated (synced on
    the last), clipped, applied. Returns the global batch's mean token loss and the gradient norm."""
    world, rank, size = accelerator.num_processes, accelerator.process_index, cfg["batch_size"]
    n_targets = sum(targets(s) for s in rows)
    loss = torch.zeros((), device=accelerator.device)
    for a in range(cfg["grad_accum"]):
        first = (a * world + rank) * size
        batch = {k: v.to(accelerator.device) for k, v in collate(rows[first:first + size], pad_id).items()}
        with nullcontext() if a == cfg["grad_accum"] - 1 else accelerator.no_sync(model):
            part = loss_sum(model, batch)
            accelerator.backward(part * world / n_targets)  # DDP averages gradients over processes
        loss += part.detach()
    grad_norm = (float(accelerator.clip_grad_norm_(model.parameters(), cfg["max_grad_norm"]))
                 if cfg["max_grad_norm"] > 0 else None)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return accelerator.reduce(loss, "sum").item() / n_targets, grad_norm


# ---------------------------------------------------------------------------------------------- checkpoints
def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(out: Path) -> Path | None:
    done = sorted(p for p in out.glob("checkpoint-*") if (p / "state.pt").exists())
    return done[-1] if done else None


def save_checkpoint(accelerator, out: Path, step: int, state: dict) -> None:
    """Every process writes its RNG state, then the main one the shared state (state.pt marks completion)."""
    path = out / f"checkpoint-{step:06d}"
    path.mkdir(parents=True, exist_ok=True)
    torch.save(_rng_state(), path / f"rng-{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        torch.save(state, path / "state.pt")
        for old in out.glob("checkpoint-*"):
            if old != path:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()


# ---------------------------------------------------------------------------------------------- evaluation
def eval_loss(model, samples: list[Sample], batch_size: int, pad_id: int, device) -> float:
    """Mean token loss on held-out rows (teacher forcing, dropout off)."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(samples), batch_size):
            batch = {k: v.to(device) for k, v in collate(samples[i:i + batch_size], pad_id).items()}
            total += loss_sum(model, batch).item()
    model.train()
    return total / sum(targets(s) for s in samples)


def eval_em(cfg: dict, model, step: int, out: Path, device) -> dict:
    """Exact match / F1 of the current adapter through `archbench eval` (merged weights, any engine)."""
    from archbench.evaluate import evaluate

    where = out / "evals" / f"step-{step:06d}"
    model.save_pretrained(str(where / "adapter"))
    summary = evaluate(models=[cfg["model"]], data=cfg["eval_data"], limit=cfg["eval_limit"], shots=[0],
                       prompt_style=cfg["prompt_style"], batch_size=cfg["batch_size"], run_dir=str(where),
                       db=cfg["db"], device=str(device), adapter=str(where / "adapter"))
    model.train()
    return {"eval_em": summary["results"][0]["em"], "eval_f1": summary["results"][0]["f1"]}


# ---------------------------------------------------------------------------------------------- the recipe
def _check_settings(cfg: dict) -> None:
    if cfg["loss_on"] not in ("answer", "all"):
        raise ValueError(f"--loss-on {cfg['loss_on']!r}: choose answer or all")
    if cfg["schedule"] not in ("cosine", "linear"):
        raise ValueError(f"--schedule {cfg['schedule']!r}: choose cosine or linear")
    if cfg["device"] not in (None, "cpu", "cuda"):
        raise ValueError(f"--device {cfg['device']!r}: cpu or cuda (pick GPUs with CUDA_VISIBLE_DEVICES)")
    if cfg["eval_every"] and not cfg["eval_data"]:
        raise ValueError("--eval-every needs --eval-data: a held-out SQuAD file, e.g. squad_val_1k.jsonl")
    if min(cfg["batch_size"], cfg["grad_accum"], cfg["lora_r"]) < 1:
        raise ValueError("--batch-size, --grad-accum and --lora-r must be at least 1")


def run(**cfg) -> tuple[torch.nn.Module, dict]:
    """Fine-tune; returns (the trained PeftModel, the result written to finetune.json)."""
    from accelerate import Accelerator, DistributedDataParallelKwargs, PartialState
    from accelerate.utils import set_seed
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    t_start = time.perf_counter()
    cfg = {**DEFAULTS, **cfg}
    _check_settings(cfg)
    out = Path(cfg["out"])
    cpu = cfg["device"] == "cpu" or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    world, rank = state.num_processes, state.process_index
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if world != launched:
        raise RuntimeError(f"WORLD_SIZE={launched} but accelerate runs {world} process(es)")
    names = [t.strip() for item in cfg["target_modules"] or [] for t in item.split(",") if t.strip()]
    cfg = {**cfg, "target_modules": names or None, "world_size": world}  # "a,b" or repeated options
    checkpoint = latest_checkpoint(out) if cfg["resume"] else None
    if not cfg["resume"] and latest_checkpoint(out):
        raise ValueError(f"{out} holds a checkpoint of an earlier run: pass --resume to continue it, or a new --out")

    # setup: model + LoRA, data
    set_seed(cfg["seed"])
    lm = loading.load(cfg["model"])
    if getattr(lm.model.config, "rescale_every", 0):  # RWKV halves weights in place in eval mode (an fp16
        lm.model.config.rescale_every = 0  # guard), missing unmerged LoRA deltas: in-memory evals run unscaled
    target_list = cfg["target_modules"] or default_targets(lm.family, lm.model_type)
    check_targets(lm.model, target_list, lm.family)
    conv1d = any(isinstance(m, Conv1D) and n.rsplit(".", 1)[-1] in target_list for n, m in lm.model.named_modules())
    model = get_peft_model(lm.model, LoraConfig(r=cfg["lora_r"], lora_alpha=cfg["lora_alpha"], task_type="CAUSAL_LM",
                                                lora_dropout=cfg["lora_dropout"], target_modules=target_list,
                                                fan_in_fan_out=conv1d))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    style, tok = prompts.load_style(cfg["prompt_style"]), lm.tokenizer
    examples = load_pool(cfg["train"])[:cfg["limit"]]
    samples = build_samples(examples, style, tok, cfg["max_length"], cfg["loss_on"])
    held_out = (build_samples(load_examples(cfg["eval_data"], limit=cfg["eval_limit"]), style, tok,
                              cfg["max_length"]) if cfg["eval_every"] else [])
    per_step = cfg["batch_size"] * world * cfg["grad_accum"]
    if len(samples) < per_step:
        raise ValueError(f"{len(samples)} training rows are fewer than one global batch "
                         f"(batch {cfg['batch_size']} x {world} processes x grad-accum {cfg['grad_accum']})")
    per_epoch = len(samples) // per_step
    total = cfg["max_steps"] or max(1, int(cfg["epochs"] * per_epoch))

    # probe for LoRA layers without gradient, then accelerate (DDP told about them only when they exist)
    model.to(state.device)
    probe = {k: v.to(state.device) for k, v in collate(samples[:1], tok.pad_token_id).items()}
    no_grad = layers_without_grad(model, probe)
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if no_grad and world > 1 else []
    precision = "no" if cpu else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    accelerator = Accelerator(cpu=cpu, mixed_precision=precision, kwargs_handlers=handlers)
    if no_grad:
        accelerator.print(f"note: {len(no_grad)} LoRA layers get no gradient, the model reads their weights "
                          f"directly ({', '.join(sorted({n.rsplit('.', 1)[-1] for n in no_grad}))}); they stay at "
                          "zero" + (" and DDP runs with find_unused_parameters=True" if handlers else ""))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg["lr"])
    scheduler = get_scheduler(cfg["schedule"], optimizer, num_warmup_steps=cfg["warmup_steps"],
                              num_training_steps=total)
    model, optimizer = accelerator.prepare(model, optimizer)
    peft_model = accelerator.unwrap_model(model)

    # resume, or start fresh
    run_id, log, start, wall_before = f"finetune-{out.name}-{time.strftime('%Y%m%d-%H%M%S')}", [], 0, 0.0
    if checkpoint is not None:
        saved = torch.load(checkpoint / "state.pt", weights_only=False)
        changed = [k for k in _RESUME_KEYS if saved["settings"].get(k) != cfg[k]]
        if changed:
            raise ValueError(f"{checkpoint}: made with other settings ({', '.join(changed)}); use a new --out")
        set_peft_model_state_dict(peft_model, saved["adapter"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        _set_rng_state(torch.load(checkpoint / f"rng-{rank}.pt", weights_only=False))
        run_id, log, start, wall_before = saved["run_id"], saved["log"], saved["step"], saved["wall_s"]
    else:
        set_seed(cfg["seed"] + rank)  # dropout differs per process; the probe's draws are forgotten
    main = accelerator.is_main_process
    store = Store(cfg["db"]) if main else None
    if main:
        out.mkdir(parents=True, exist_ok=True)
        store.ensure_run(run_id, "finetune", {k: v for k, v in cfg.items() if k != "resume"},
                         environment(accelerator.device))
        (out / "train_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))

    # the train loop
    model.train()
    bar = tqdm(total=total, initial=start, disable=not main, desc=f"finetune {cfg['model']}", dynamic_ncols=True)
    for step in range(start, total):
        with Timer(accelerator.device) as timer:
            rows = step_rows(step, len(samples), per_step, cfg["seed"])
            lr = scheduler.get_last_lr()[0]
            loss, grad_norm = train_step(accelerator, model, optimizer, [samples[i] for i in rows], cfg,
                                         tok.pad_token_id)
            scheduler.step()
        seconds, tokens = timer.result.seconds, sum(len(samples[i].ids) for i in rows)
        entry = {"step": step + 1, "epoch": round((step + 1) / per_epoch, 4), "loss": loss, "lr": lr,
                 "grad_norm": grad_norm, "tokens": tokens, "tok_s": tokens / seconds}
        if cfg["eval_every"] and (step + 1) % cfg["eval_every"] == 0:
            if main:
                entry["eval_loss"] = eval_loss(peft_model, held_out, cfg["batch_size"], tok.pad_token_id,
                                               accelerator.device)
                entry.update(eval_em(cfg, peft_model, step + 1, out, accelerator.device))
            accelerator.wait_for_everyone()
        log.append(entry)
        if main:
            store.put(run_id, "train_log", f"{step + 1}", entry)
            with open(out / "train_log.jsonl", "a") as f:
                f.write(json.dumps(entry) + "\n")
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens / seconds:.0f}")
        bar.update(1)
        if cfg["save_every"] and ((step + 1) % cfg["save_every"] == 0 or step + 1 == total):
            save_checkpoint(accelerator, out, step + 1, {
                "step": step + 1, "run_id": run_id, "log": log, "settings": cfg,
                "adapter": {k: v.cpu() for k, v in get_peft_model_state_dict(peft_model).items()},
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "wall_s": wall_before + time.perf_counter() - t_start})
    bar.close()

    # outputs: adapter, finetune.json, merged model
    losses = [e["loss"] for e in log]
    result = {"settings": {k: v for k, v in cfg.items() if k != "resume"}, "base": lm.source,
              "family": lm.family, "model_type": lm.model_type, "target_modules": target_list,
              "no_grad_modules": no_grad, "trainable_params": trainable, "base_params": lm.params,
              "train_sha256": hashlib.sha256(Path(cfg["train"]).read_bytes()).hexdigest()
              if Path(cfg["train"]).is_file() else None,
              "data_sha256": hashlib.sha256("\x00".join(s.text for s in samples).encode()).hexdigest(),
              "rows": len(samples), "steps": total, "steps_per_epoch": per_epoch, "world_size": world,
              "precision": precision, "first_loss": losses[0], "final_loss": losses[-1],
              "first10_loss": float(np.mean(losses[:10])), "last10_loss": float(np.mean(losses[-10:])),
              "last_eval": next((e for e in reversed(log) if "eval_loss" in e), None), "run_id": run_id,
              "wall_s": wall_before + time.perf_counter() - t_start, "adapter": str(out)}
    if main:
        peft_model.save_pretrained(str(out))
        if cfg["merge"]:
            result["merged"] = str(write_merged(cfg["model"], out))
        (out / "finetune.json").write_text(json.dumps(result, indent=1))
        store.put(run_id, "finetune", "result", result)
        store.close()
    accelerator.wait_for_everyone()
    return peft_model, result


def write_merged(model: str, adapter: Path) -> Path:
    """Save base + adapter merged (merge_and_unload) with its tokenizer and zoo marker to adapter/merged."""
    lm = loading.load(model, adapter=str(adapter))
    where = adapter / "merged"
    lm.model.save_pretrained(str(where))
    lm.tokenizer.save_pretrained(str(where))
    marker = Path(lm.source) / zoo.MARKER
    if marker.exists():
        shutil.copy(marker, where / zoo.MARKER)
    return where


def finetune(**kwargs) -> dict:
    """`archbench finetune`: the recipe's result (first_loss, final_loss, wall_s, ...), also in finetune.json."""
    return run(**kwargs)[1]


if __name__ == "__main__":  # torchrun --nproc_per_node 2 -m archbench.finetune --model M --train F --out D ...
    from archbench.cli import app

    app(["finetune", *sys.argv[1:]])
