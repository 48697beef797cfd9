"""The LoRA fine-tuning recipe, one readable file in the style of torchtune's: setup, train loop, checkpoint, resume.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") via Hugging Face `peft`; devices,
data parallelism and mixed precision (bf16/fp16 autocast on GPU, fp32 on CPU) via `accelerate`. The same
command runs on CPU, one GPU, and under `torchrun` / `accelerate launch` across GPUs or machines:
`torchrun --nproc_per_node N -m archbench finetune ...` takes the options of `archbench finetune`. Several CPU
processes need torchrun (gloo); a plain `accelerate launch --cpu --num_processes N` runs one process.
Settings: `FinetuneConfig` (finetune_config.py, torch-free, every default written once).

Data (finetune_data.py): a row is the zero-shot eval prompt then " answer" and EOS, the loss on the answer
and EOS only unless `loss_on="all"`; a row over `max_length` gets its context cut, never its answer.

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
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers.pytorch_utils import Conv1D

from archbench import families, identity, loading, prompts, zoo
from archbench.config import EvalConfig, GenConfig, RuntimeConfig, check_device
from archbench.data import load_examples, load_pool
from archbench.evaluate import evaluate
from archbench.finetune_checkpoint import latest_checkpoint, save_checkpoint, set_rng_state
from archbench.finetune_config import RESUME_KEYS, FinetuneConfig, settings_record
from archbench.finetune_data import Sample, build_samples, collate, loss_sum, step_rows, targets
from archbench.store import Store
from archbench.trackers import Timer, environment


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


def train_step(accelerator, model, optimizer, rows: list[Sample], cfg: FinetuneConfig,
               pad_id: int) -> tuple[float, float | None]:
    """One optimizer step on a global batch: this process's micro-batches, gradients accumulated (synced on
    the last), clipped, applied. Returns the global batch's mean token loss and the gradient norm."""
    world, rank, size = accelerator.num_processes, accelerator.process_index, cfg.batch_size
    n_targets = sum(targets(s) for s in rows)
    loss = torch.zeros((), device=accelerator.device)
    for a in range(cfg.grad_accum):
        first = (a * world + rank) * size
        batch = {k: v.to(accelerator.device) for k, v in collate(rows[first:first + size], pad_id).items()}
        with nullcontext() if a == cfg.grad_accum - 1 else accelerator.no_sync(model):
            part = loss_sum(model, batch)
            accelerator.backward(part * world / n_targets)  # DDP averages gradients over processes
        loss += part.detach()
    grad_norm = (float(accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm))
                 if cfg.max_grad_norm > 0 else None)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return accelerator.reduce(loss, "sum").item() / n_targets, grad_norm


# ---------------------------------------------------------------------------------------------- checkpoints
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


def eval_em(cfg: FinetuneConfig, model, step: int, out: Path, device) -> dict:
    """Exact match / F1 of the current adapter through the eval recipe (zero-shot SQuAD, merged weights)."""
    where = out / "evals" / f"step-{step:06d}"
    model.save_pretrained(str(where / "adapter"))
    options = {"data": cfg.eval_data, "limit": cfg.eval_limit, "prompt_style": cfg.prompt_style}
    summary = evaluate(EvalConfig(models=(cfg.model,), task="squad", task_options=options, shots=(0,),
                                  gen=GenConfig(batch_size=cfg.batch_size), runtime=RuntimeConfig(device=str(device)),
                                  adapter=str(where / "adapter"), run_dir=str(where), db=cfg.db))
    model.train()
    result = summary["results"][0]
    return {"eval_em": result["em"], "eval_f1": result["f1"]}


# ---------------------------------------------------------------------------------------------- the recipe
@dataclass
class _Data:
    samples: list[Sample]  # training rows, in file order
    held_out: list[Sample]  # rows of --eval-data for the periodic eval loss ([] without --eval-every)
    pad_id: int
    per_step: int  # rows per optimizer step: batch_size x processes x grad_accum
    per_epoch: int  # optimizer steps per epoch
    total: int  # optimizer steps of the whole run


@dataclass
class _Job:
    """One fine-tuning run in progress: what the stages after set-up share."""

    cfg: FinetuneConfig
    settings: dict  # the run's settings as stored (finetune_config.settings_record)
    accelerator: object
    model: torch.nn.Module  # as accelerate prepared it (DDP-wrapped under several processes)
    peft_model: torch.nn.Module  # the PeftModel itself
    optimizer: torch.optim.Optimizer
    scheduler: object
    data: _Data
    no_grad: list[str]  # LoRA layers the forward leaves without gradient
    precision: str
    t_start: float
    run_id: str = ""
    log: list[dict] = field(default_factory=list)  # one entry per optimizer step
    start: int = 0  # steps already done (resume)
    wall_before: float = 0.0  # wall time of the interrupted runs
    store: Store | None = None  # main process only

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    def wall_s(self) -> float:
        return self.wall_before + time.perf_counter() - self.t_start


def _on_cpu(cfg: FinetuneConfig) -> bool:
    return cfg.device == "cpu" or not torch.cuda.is_available()


def _launch(cfg: FinetuneConfig):
    """The process group (this process, or torchrun's) and the checkpoint to resume from (None: start fresh)."""
    from accelerate import PartialState

    if cfg.device:
        check_device(cfg.device)
    state = PartialState(cpu=_on_cpu(cfg))
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if state.num_processes != launched:
        raise RuntimeError(f"WORLD_SIZE={launched} but accelerate runs {state.num_processes} process(es)")
    found = latest_checkpoint(Path(cfg.out))
    if found and not cfg.resume:
        raise ValueError(f"{cfg.out} holds a checkpoint of an earlier run: pass --resume to continue it, "
                         "or a new --out")
    return state, found if cfg.resume else None


def _lora_model(cfg: FinetuneConfig):
    """The base model (seeded) with LoRA on the chosen targets; returns (LM, PeftModel, target names)."""
    from accelerate.utils import set_seed
    from peft import LoraConfig, get_peft_model

    set_seed(cfg.seed)
    lm = loading.load(cfg.model)
    if getattr(lm.model.config, "rescale_every", 0):  # RWKV halves weights in place in eval mode (an fp16
        lm.model.config.rescale_every = 0  # guard), missing unmerged LoRA deltas: in-memory evals run unscaled
    names = list(cfg.target_modules) or default_targets(lm.family, lm.model_type)
    check_targets(lm.model, names, lm.family)
    conv1d = any(isinstance(m, Conv1D) and n.rsplit(".", 1)[-1] in names for n, m in lm.model.named_modules())
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, task_type="CAUSAL_LM", lora_dropout=cfg.lora_dropout,
                      target_modules=names, fan_in_fan_out=conv1d)
    return lm, get_peft_model(lm.model, lora), names


def _training_data(cfg: FinetuneConfig, tokenizer, world: int) -> _Data:
    """Tokenised training (and held-out) rows and the run's step counts."""
    style = prompts.load_style(cfg.prompt_style)
    samples = build_samples(load_pool(cfg.train)[:cfg.limit], style, tokenizer, cfg.max_length, cfg.loss_on)
    held_out = (build_samples(load_examples(cfg.eval_data, limit=cfg.eval_limit), style, tokenizer, cfg.max_length)
                if cfg.eval_every else [])
    per_step = cfg.batch_size * world * cfg.grad_accum
    if len(samples) < per_step:
        raise ValueError(f"{len(samples)} training rows are fewer than one global batch "
                         f"(batch {cfg.batch_size} x {world} processes x grad-accum {cfg.grad_accum})")
    per_epoch = len(samples) // per_step
    total = cfg.max_steps or max(1, int(cfg.epochs * per_epoch))
    return _Data(samples, held_out, tokenizer.pad_token_id, per_step, per_epoch, total)


def _prepare(cfg: FinetuneConfig, state, model, data: _Data, t_start: float) -> _Job:
    """Probe for LoRA layers without gradient, then accelerate (DDP told about them only when they exist),
    the optimizer and the schedule."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from transformers import get_scheduler

    model.to(state.device)
    probe = {k: v.to(state.device) for k, v in collate(data.samples[:1], data.pad_id).items()}
    no_grad = layers_without_grad(model, probe)
    world = state.num_processes
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if no_grad and world > 1 else []
    cpu = _on_cpu(cfg)
    precision = "no" if cpu else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    accelerator = Accelerator(cpu=cpu, mixed_precision=precision, kwargs_handlers=handlers)
    if no_grad:
        accelerator.print(f"note: {len(no_grad)} LoRA layers get no gradient, the model reads their weights "
                          f"directly ({', '.join(sorted({n.rsplit('.', 1)[-1] for n in no_grad}))}); they stay at "
                          "zero" + (" and DDP runs with find_unused_parameters=True" if handlers else ""))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    scheduler = get_scheduler(cfg.schedule, optimizer, num_warmup_steps=cfg.warmup_steps,
                              num_training_steps=data.total)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    return _Job(cfg, settings_record(cfg, world), accelerator, prepared, accelerator.unwrap_model(prepared),
                optimizer, scheduler, data, no_grad, precision, t_start)


def _restore(job: _Job, checkpoint: Path | None) -> None:
    """Continue from a checkpoint (adapter, optimizer, schedule, log, this process's RNG) or start fresh."""
    from accelerate.utils import set_seed
    from peft import set_peft_model_state_dict

    rank = job.accelerator.process_index
    if checkpoint is None:
        job.run_id = f"finetune-{job.out.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        set_seed(job.cfg.seed + rank)  # dropout differs per process; the probe's draws are forgotten
        return
    saved = torch.load(checkpoint / "state.pt", weights_only=False)
    changed = [k for k in RESUME_KEYS if saved["settings"].get(k) != job.settings[k]]
    before = saved["settings"].get("identity", {})
    changed += [what for key, what in (("rows", "training rows"), ("base", "base model weights"))
                if key in before and before[key] != job.settings["identity"][key]]
    if changed:
        raise ValueError(f"{checkpoint}: made with other settings ({', '.join(changed)}); use a new --out")
    set_peft_model_state_dict(job.peft_model, saved["adapter"])
    job.optimizer.load_state_dict(saved["optimizer"])
    job.scheduler.load_state_dict(saved["scheduler"])
    set_rng_state(torch.load(checkpoint / f"rng-{rank}.pt", weights_only=False))
    job.run_id, job.log, job.start, job.wall_before = saved["run_id"], saved["log"], saved["step"], saved["wall_s"]


def _stored_settings(job: _Job) -> dict:
    return {k: v for k, v in job.settings.items() if k != "resume"}


def _open_outputs(job: _Job) -> None:
    """Main process: the store's run record and train_log.jsonl rewritten from the (resumed) log."""
    if not job.accelerator.is_main_process:
        return
    job.store = Store(job.cfg.db)
    job.out.mkdir(parents=True, exist_ok=True)
    job.store.ensure_run(job.run_id, "finetune", _stored_settings(job), environment(job.accelerator.device))
    (job.out / "train_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in job.log))


def _step(job: _Job, step: int) -> dict:
    """Optimizer step `step` (0-based) on its global batch; returns its log entry."""
    data, accelerator = job.data, job.accelerator
    with Timer(accelerator.device) as timer:
        rows = step_rows(step, len(data.samples), data.per_step, job.cfg.seed)
        lr = job.scheduler.get_last_lr()[0]
        loss, grad_norm = train_step(accelerator, job.model, job.optimizer, [data.samples[i] for i in rows],
                                     job.cfg, data.pad_id)
        job.scheduler.step()
    seconds, tokens = timer.result.seconds, sum(len(data.samples[i].ids) for i in rows)
    return {"step": step + 1, "epoch": round((step + 1) / data.per_epoch, 4), "loss": loss, "lr": lr,
            "grad_norm": grad_norm, "tokens": tokens, "tok_s": tokens / seconds}


def _periodic_eval(job: _Job, entry: dict) -> None:
    """Main process: held-out loss and EM/F1 of the adapter after this step, added to its log entry."""
    accelerator = job.accelerator
    if accelerator.is_main_process:
        entry["eval_loss"] = eval_loss(job.peft_model, job.data.held_out, job.cfg.batch_size, job.data.pad_id,
                                       accelerator.device)
        entry.update(eval_em(job.cfg, job.peft_model, entry["step"], job.out, accelerator.device))
    accelerator.wait_for_everyone()


def _record(job: _Job, entry: dict) -> None:
    job.log.append(entry)
    if job.store is not None:
        job.store.put(job.run_id, "train_log", f"{entry['step']}", entry)
        with open(job.out / "train_log.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")


def _checkpoint(job: _Job, step: int) -> None:
    from peft import get_peft_model_state_dict

    save_checkpoint(job.accelerator, job.out, step, {
        "step": step, "run_id": job.run_id, "log": job.log, "settings": job.settings,
        "adapter": {k: v.cpu() for k, v in get_peft_model_state_dict(job.peft_model).items()},
        "optimizer": job.optimizer.state_dict(), "scheduler": job.scheduler.state_dict(), "wall_s": job.wall_s()})


def _train(job: _Job) -> None:
    """The train loop: step, periodic eval, log, checkpoint, from the first step not yet done."""
    from tqdm.auto import tqdm

    cfg, total = job.cfg, job.data.total
    job.model.train()
    bar = tqdm(total=total, initial=job.start, disable=not job.accelerator.is_main_process,
               desc=f"finetune {cfg.model}", dynamic_ncols=True)
    for step in range(job.start, total):
        entry = _step(job, step)
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0:
            _periodic_eval(job, entry)
        _record(job, entry)
        bar.set_postfix(loss=f"{entry['loss']:.3f}", lr=f"{entry['lr']:.2e}", tok_s=f"{entry['tok_s']:.0f}")
        bar.update(1)
        if cfg.save_every and ((step + 1) % cfg.save_every == 0 or step + 1 == total):
            _checkpoint(job, step + 1)
    bar.close()


def _result(job: _Job, lm, target_list: list[str]) -> dict:
    """What finetune.json and the store's "finetune" record hold."""
    cfg, data, losses = job.cfg, job.data, [e["loss"] for e in job.log]
    train = Path(cfg.train)
    return {"settings": _stored_settings(job), "base": lm.source, "family": lm.family, "model_type": lm.model_type,
            "target_modules": target_list, "no_grad_modules": job.no_grad,
            "trainable_params": sum(p.numel() for p in job.peft_model.parameters() if p.requires_grad),
            "base_params": lm.params,
            "train_sha256": hashlib.sha256(train.read_bytes()).hexdigest() if train.is_file() else None,
            "data_sha256": hashlib.sha256("\x00".join(s.text for s in data.samples).encode()).hexdigest(),
            "rows": len(data.samples), "steps": data.total, "steps_per_epoch": data.per_epoch,
            "world_size": job.accelerator.num_processes, "precision": job.precision,
            "first_loss": losses[0], "final_loss": losses[-1],
            "first10_loss": float(np.mean(losses[:10])), "last10_loss": float(np.mean(losses[-10:])),
            "last_eval": next((e for e in reversed(job.log) if "eval_loss" in e), None), "run_id": job.run_id,
            "wall_s": job.wall_s(), "adapter": str(job.out)}


def _write_outputs(job: _Job, result: dict) -> None:
    """Main process: the adapter, the merged model (--merge), finetune.json and the store's record."""
    if job.store is not None:
        job.peft_model.save_pretrained(str(job.out))
        if job.cfg.merge:
            result["merged"] = str(write_merged(job.cfg.model, job.out))
        (job.out / "finetune.json").write_text(json.dumps(result, indent=1))
        job.store.put(job.run_id, "finetune", "result", result)
        job.store.close()
    job.accelerator.wait_for_everyone()


def run(cfg: FinetuneConfig) -> tuple[torch.nn.Module, dict]:
    """Fine-tune; returns (the trained PeftModel, the result written to finetune.json)."""
    t_start = time.perf_counter()
    state, checkpoint = _launch(cfg)
    lm, model, target_list = _lora_model(cfg)
    data = _training_data(cfg, lm.tokenizer, state.num_processes)
    job = _prepare(cfg, state, model, data, t_start)
    # what the run is, by content (identity.py): its training rows as rendered, and the base model's weights
    job.settings["identity"] = {"rows": identity.digest([s.text for s in data.samples]),
                                "base": identity.model(lm)["weights"]}
    _restore(job, checkpoint)
    _open_outputs(job)
    _train(job)
    result = _result(job, lm, target_list)
    _write_outputs(job, result)
    return job.peft_model, result


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


def finetune(cfg: FinetuneConfig) -> dict:
    """`archbench finetune`: the recipe's result (first_loss, final_loss, wall_s, ...), also in finetune.json."""
    return run(cfg)[1]
