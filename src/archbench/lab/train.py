"""The lab's pretraining recipe: any family from scratch on character-level text or MQAR, one readable file.

The loop is nanoGPT's `train.py` (Karpathy): AdamW (betas 0.9/0.99, weight decay on matrices only), linear
warm-up then cosine decay to min_lr, gradient clipping, fixed iteration count. Devices and data parallelism go
through `accelerate` (single process, or `torchrun --nproc_per_node N -m archbench.lab.train ...`: each
process takes every N-th row of the same global batch, and the loss divides the summed token losses by the
global batch's target count, so the steps do not depend on N). bf16 autocast on GPUs that support it.

Data order: global batch s is a function of (seed, s) only (text: nanoGPT's random windows; MQAR: a slice of a
permutation seeded by (seed, epoch)), so every model of a study sees the same tokens in the same order, and a
resumed run continues with exactly the batches it would have seen. Checkpoints (`checkpoint.pt`: weights,
optimizer, step, log, RNG) are written atomically; with `resume=True` training continues bit-identically.

Outputs in `out`: the model (save_pretrained + the tokenizer + archbench.json: untrained false, the recipe, the
shape and the kernel that trained it), train.json (the result), train_log.jsonl, and rows in the store
(records of kind 'train': 'log-NNNNNN' per logged step, 'val', 'mqar-LxP', 'result').
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from archbench.lab import evaluate, fastpath, mqar, shapes, text

MARKER = "archbench.json"  # the zoo's marker file name (zoo.MARKER)
DEFAULT_TEXT = "../shared/data/text/tinyshakespeare.txt"


@dataclass(frozen=True)
class TrainConfig:
    out: str  # the run directory (becomes the model directory)
    arch: str = "gpt2"  # shapes.ARCHS: gpt2, llama, mamba, mamba2, rwkv, rwkv7, bamba (hybrid)
    data: str = "text"  # "text" (character level) or "mqar"
    text: str = DEFAULT_TEXT  # the text file for data="text"
    width: int = 128  # model width (d_model); ignored when params is set
    depth: int = 4  # Transformer-block equivalents (Mamba/Mamba-2 get 2x blocks)
    params: int | None = None  # match this many non-embedding parameters (shapes.match)
    context: int = 64  # training sequence length for text
    batch_size: int = 12  # global batch (rows per optimizer step, all processes together)
    iters: int = 2000  # optimizer steps
    lr: float = 1e-3
    min_lr: float = 1e-4  # cosine floor (nanoGPT: lr / 10)
    warmup: int = 100  # linear warm-up steps
    weight_decay: float = 0.1
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 disables clipping
    seed: int = 1337
    mqar_vocab: int = 8192
    mqar_train: str = "64x4,64x8"  # LENGTHxPAIRS mix, mqar_examples of each
    mqar_test: str = "64x4,64x8,128x8,256x8"  # the test grid (longer than trained included)
    mqar_examples: int = 20000
    mqar_fill: str = "random"  # between queries: "random" tokens or "zero" (Zoology's figure-2 setting)
    mqar_test_examples: int = 500
    eval_every: int = 500  # steps between validation estimates (0: only at the end)
    eval_windows: int = 200  # validation windows per estimate during training (the end uses the whole split)
    log_every: int = 10
    save_every: int = 500  # checkpoint interval (0: only at the end)
    stop_after: int | None = None  # stop after this step with a checkpoint (an interruption, for tests)
    resume: bool = False
    threads: int | None = None  # torch CPU threads (None: torch's default); 1 is fastest on a loaded host
    fast: bool = True  # the lab's fast recurrent mixers (fastpath.py); False: transformers' forward
    db: str = "runs/archbench.sqlite"
    run_id: str | None = None  # default: train-<out name>


def lr_at(cfg: TrainConfig, step: int) -> float:
    """nanoGPT's schedule: linear warm-up over `warmup` steps, cosine from lr to min_lr at `iters`."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / (cfg.warmup + 1)
    progress = (step - cfg.warmup) / max(1, cfg.iters - cfg.warmup)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * min(1.0, progress))) * (cfg.lr - cfg.min_lr)


def check(cfg: TrainConfig) -> None:
    """One-line errors for bad settings."""
    shapes.get(cfg.arch)
    if cfg.data not in ("text", "mqar"):
        raise ValueError(f"--data {cfg.data!r}: choose text or mqar")
    for name in ("batch_size", "iters", "context", "width", "depth", "log_every"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be at least 1")
    if not 0 < cfg.min_lr <= cfg.lr:
        raise ValueError(f"--min-lr {cfg.min_lr}: must be positive and at most --lr {cfg.lr}")


# ---------------------------------------------------------------------------------------------- data
@dataclass
class Data:
    kind: str
    vocab: int  # model vocabulary (symbols + EOS + UNK)
    max_len: int  # longest sequence the model must read
    tokenizer: object
    train: object  # text: (N,) ids; mqar: (inputs (N, L), labels (N, L)) padded to the longest train length
    test: object  # text: (x, y) windows of the validation split; mqar: list of Segments
    sha256: str


def load_data(cfg: TrainConfig) -> Data:
    if cfg.data == "text":
        td = text.load(cfg.text)
        return Data("text", len(td.chars) + 2, cfg.context, text.tokenizer(td.chars, "char"), td.train,
                    text.windows(td.val, cfg.context), td.sha256)
    train_pts, test_pts = mqar.parse_points(cfg.mqar_train), mqar.parse_points(cfg.mqar_test)
    segs = mqar.mix(train_pts, cfg.mqar_vocab, cfg.mqar_examples, cfg.seed, cfg.mqar_fill)
    width = max(s.seq_len for s in segs)
    xs = torch.cat([torch.nn.functional.pad(s.inputs, (0, width - s.seq_len)) for s in segs])  # right-padded
    ys = torch.cat([torch.nn.functional.pad(s.labels, (0, width - s.seq_len), value=mqar.IGNORE) for s in segs])
    test = mqar.grid(test_pts, cfg.mqar_vocab, cfg.mqar_test_examples, cfg.seed, cfg.mqar_fill)
    tok = text.tokenizer(text.mqar_symbols(cfg.mqar_vocab), "space")
    return Data("mqar", cfg.mqar_vocab + 2, max(p[0] for p in train_pts + test_pts), tok, (xs, ys), test,
                f"mqar:{cfg.mqar_vocab}:{cfg.mqar_train}:{cfg.mqar_examples}:{cfg.seed}:{cfg.mqar_fill}")


def global_batch(cfg: TrainConfig, data: Data, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of optimizer step `step`, a function of (seed, step) only. Returns x, y (batch_size, T)."""
    if data.kind == "text":
        return text.batch(data.train, step, cfg.batch_size, cfg.context, cfg.seed)
    xs, ys = data.train
    per_epoch = len(xs) // cfg.batch_size
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(len(xs), generator=torch.Generator().manual_seed(cfg.seed + epoch))
    rows = perm[pos * cfg.batch_size:(pos + 1) * cfg.batch_size]
    return xs[rows], ys[rows]


# ---------------------------------------------------------------------------------------------- model
def build_model(cfg: TrainConfig, data: Data):
    """The seeded random-init model and its shape {width, blocks, non_embedding_params, config}."""
    from transformers import AutoModelForCausalLM

    if cfg.params:
        width, blocks, n = shapes.match(cfg.arch, cfg.params, cfg.depth, data.vocab, data.max_len)
        depth = blocks // shapes.get(cfg.arch).depth_factor
    else:
        width, depth = cfg.width, cfg.depth
    config = shapes.build(cfg.arch, width, depth, data.vocab, data.max_len)
    config.pad_token_id = config.eos_token_id = data.tokenizer.eos_token_id
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if shapes.get(cfg.arch).init:  # the architecture's own training init (shapes.Arch.init)
        shapes.get(cfg.arch).init(model)
    shape = {"width": width, "blocks": depth * shapes.get(cfg.arch).depth_factor,
             "non_embedding_params": shapes.non_embedding_params(config),
             "params": sum(p.numel() for p in model.parameters())}
    return model, shape


def make_optimizer(cfg: TrainConfig, model) -> torch.optim.Optimizer:
    """AdamW with weight decay on 2-D weights only (nanoGPT's grouping)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    other = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": other, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, cfg.beta2))


# ---------------------------------------------------------------------------------------------- checkpoints
def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def save_checkpoint(out: Path, state: dict) -> None:
    """Atomic: write checkpoint.pt.tmp, then rename."""
    tmp = out / "checkpoint.pt.tmp"
    torch.save({**state, "rng": _rng_state()}, tmp)
    os.replace(tmp, out / "checkpoint.pt")


def load_checkpoint(cfg: TrainConfig, out: Path):
    """The saved state of a resumable run, None for a fresh one; refuses to mix runs."""
    path = out / "checkpoint.pt"
    if not cfg.resume:
        if path.exists():
            raise ValueError(f"{out} holds a checkpoint: pass --resume to continue it, or a new --out")
        return None
    if not path.exists():
        raise ValueError(f"--resume: {path} not found")
    saved = torch.load(path, weights_only=False)
    ignore = {"resume", "stop_after", "threads", "eval_every", "log_every", "save_every", "db", "run_id"}
    changed = [k for k, v in dataclasses.asdict(cfg).items() if k not in ignore and saved["settings"].get(k) != v]
    if changed:
        raise ValueError(f"{path}: made with other settings ({', '.join(changed)}); use a new --out")
    return saved


def restore(saved: dict, model, optimizer) -> None:
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    r = saved["rng"]
    torch.set_rng_state(r["torch"])
    random.setstate(r["python"])
    np.random.set_state(r["numpy"])
    if r["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(r["cuda"])


# ---------------------------------------------------------------------------------------------- the loop
def train_step(cfg: TrainConfig, run: dict, step: int) -> dict:
    """One optimizer step on the global batch of `step`; returns its log entry."""
    acc, loss_mod, opt = run["accelerator"], run["loss_mod"], run["optimizer"]
    world, rank = acc.num_processes, acc.process_index
    x, y = global_batch(cfg, run["data"], step)
    n_targets = int((y != mqar.IGNORE).sum())
    x, y = x[rank::world].to(acc.device), y[rank::world].to(acc.device)  # this process's rows
    lr = lr_at(cfg, step)
    for group in opt.param_groups:
        group["lr"] = lr
    t0 = time.perf_counter()
    with acc.autocast():
        part = loss_mod(x, y)[0]
    acc.backward(part * world / n_targets)  # DDP averages over processes: the global mean token loss
    norm = float(acc.clip_grad_norm_(loss_mod.parameters(), cfg.grad_clip)) if cfg.grad_clip > 0 else None
    opt.step()
    opt.zero_grad(set_to_none=True)
    loss = acc.reduce(part.detach(), "sum").item() / n_targets
    seconds = time.perf_counter() - t0
    return {"step": step + 1, "loss": loss, "lr": lr, "grad_norm": norm, "step_s": seconds,
            "tokens": (step + 1) * int(x.numel()) * world, "tok_s": int(x.numel()) * world / seconds}


def periodic_eval(cfg: TrainConfig, run: dict, entry: dict) -> None:
    """During training: validation loss on the first eval_windows windows (text) or test accuracy (MQAR)."""
    data, dev = run["data"], run["accelerator"].device
    mod = run["accelerator"].unwrap_model(run["loss_mod"])
    if data.kind == "text":
        x, y = data.test
        res = evaluate.text_loss(mod, x[:cfg.eval_windows], y[:cfg.eval_windows], 64, dev)
        entry.update(val_loss=res["val_loss"], val_bpc=res["val_bpc"])
    else:
        rows = evaluate.mqar_accuracy(mod, data.test, 128, dev)
        entry["mqar_accuracy"] = sum(r["accuracy"] for r in rows) / len(rows)


def record(cfg: TrainConfig, run: dict, entry: dict) -> None:
    """Append a log entry to the run's log, train_log.jsonl and the store (main process only)."""
    run["log"].append(entry)
    if not run["accelerator"].is_main_process:
        return
    with open(Path(cfg.out) / "train_log.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")
    run["store"].put(run["run_id"], "train", f"log-{entry['step']:06d}", entry)


def loop(cfg: TrainConfig, run: dict, start: int) -> int:
    """Steps start .. iters (or stop_after); returns the last step done."""
    from tqdm.auto import tqdm

    acc, out = run["accelerator"], Path(cfg.out)
    end = min(cfg.iters, cfg.stop_after or cfg.iters)
    bar = tqdm(total=cfg.iters, initial=start, disable=not acc.is_main_process, dynamic_ncols=True,
               desc=f"train {cfg.arch} on {cfg.data}")
    run["loss_mod"].train()
    for step in range(start, end):
        entry = train_step(cfg, run, step)
        run["wall_s"] += entry["step_s"]
        entry["wall_s"] = run["wall_s"]
        done = step + 1
        if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.iters:
            periodic_eval(cfg, run, entry)
        if done % cfg.log_every == 0 or done == end or "val_loss" in entry or "mqar_accuracy" in entry:
            record(cfg, run, entry)
        bar.set_postfix(loss=f"{entry['loss']:.3f}", tok_s=f"{entry['tok_s']:.0f}")
        bar.update(1)
        if (cfg.save_every and done % cfg.save_every == 0) or done == end:
            if acc.is_main_process:
                save_checkpoint(out, {"step": done, "model": acc.unwrap_model(run["loss_mod"]).lm.state_dict(),
                                      "optimizer": run["optimizer"].state_dict(), "log": run["log"],
                                      "run_id": run["run_id"], "wall_s": run["wall_s"],
                                      "settings": dataclasses.asdict(cfg)})
            acc.wait_for_everyone()
    bar.close()
    return end


def setup(cfg: TrainConfig) -> dict:
    """Data, model (fast mixers installed), optimizer, accelerator, resume state, store: the run dict."""
    from accelerate import Accelerator

    from archbench.store import Store
    from archbench.trackers import environment

    check(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    cpu = not torch.cuda.is_available()
    acc = Accelerator(cpu=cpu, mixed_precision="no" if cpu or not torch.cuda.is_bf16_supported() else "bf16")
    saved = load_checkpoint(cfg, out)
    data = load_data(cfg)
    model, shape = build_model(cfg, data)
    kernel = fastpath.install(model) if cfg.fast else fastpath.kernel(model)
    optimizer = make_optimizer(cfg, model)
    if saved is not None:
        restore(saved, model, optimizer)
    loss_mod, optimizer = acc.prepare(evaluate.LMLoss(model), optimizer)
    run = {"accelerator": acc, "loss_mod": loss_mod, "optimizer": optimizer, "data": data, "shape": shape,
           "kernel": kernel, "model": model, "log": list(saved["log"]) if saved else [],
           "wall_s": saved["wall_s"] if saved else 0.0, "start": saved["step"] if saved else 0,
           "run_id": saved["run_id"] if saved else (cfg.run_id or f"train-{out.resolve().name}"), "store": None}
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in run["log"]))
        run["store"] = Store(cfg.db)
        run["store"].ensure_run(run["run_id"], "train", dataclasses.asdict(cfg), environment(acc.device))
    return run


def final_eval(cfg: TrainConfig, run: dict) -> dict:
    """Whole validation split (text) or the whole MQAR test grid."""
    data, dev = run["data"], run["accelerator"].device
    mod = run["accelerator"].unwrap_model(run["loss_mod"])
    if data.kind == "text":
        return evaluate.text_loss(mod, *data.test, 256, dev)
    rows = evaluate.mqar_accuracy(mod, data.test, 128, dev, with_state=True)
    return {"mqar": rows, "mqar_mean_accuracy": sum(r["accuracy"] for r in rows) / len(rows)}


def save_model(cfg: TrainConfig, run: dict, result: dict) -> None:
    """The HF model directory: weights, config, tokenizer, archbench.json (untrained false + recipe)."""
    out = Path(cfg.out)
    run["model"].save_pretrained(str(out))
    run["data"].tokenizer.save_pretrained(str(out))
    marker = {"zoo": None, "lab": True, "untrained": False, "arch": cfg.arch, "recipe": dataclasses.asdict(cfg),
              "shape": run["shape"], "kernel": run["kernel"], "data_sha256": run["data"].sha256}
    (out / MARKER).write_text(json.dumps(marker, indent=1))
    (out / "train.json").write_text(json.dumps(result, indent=1))


def train(cfg: TrainConfig) -> dict:
    """Pretrain from scratch (or resume); returns the result (also train.json and the store's 'result')."""
    run = setup(cfg)
    end = loop(cfg, run, run["start"])
    log = run["log"]
    result = {"settings": dataclasses.asdict(cfg), "run_id": run["run_id"], "arch": cfg.arch,
              "family": shapes.get(cfg.arch).family, "shape": run["shape"], "kernel": run["kernel"],
              "steps": end, "finished": end == cfg.iters, "first_loss": log[0]["loss"] if log else None,
              "final_loss": log[-1]["loss"] if log else None, "wall_s": run["wall_s"],
              "tokens": log[-1]["tokens"] if log else 0,
              "tok_s": (log[-1]["tokens"] / run["wall_s"]) if log and run["wall_s"] else None,
              "world_size": run["accelerator"].num_processes, "data_sha256": run["data"].sha256}
    if end == cfg.iters:
        result.update(final_eval(cfg, run))
    if run["accelerator"].is_main_process:
        if end == cfg.iters:
            save_model(cfg, run, result)
            evaluate.store_results(cfg.db, run["run_id"], result)
        run["store"].put(run["run_id"], "train", "result", result)
        run["store"].close()
    run["accelerator"].wait_for_everyone()
    return result


def main(argv: list[str]) -> None:
    """`python -m archbench.lab.train --out D --arch mamba --iters 200 ...` (every TrainConfig field)."""
    import argparse

    parser = argparse.ArgumentParser(prog="archbench.lab.train", description=__doc__.splitlines()[0])
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool",):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            kind = {"int": int, "float": float, "int | None": int}.get(f.type, str)
            parser.add_argument(flag, type=kind, default=None if f.default is dataclasses.MISSING else f.default,
                                required=f.default is dataclasses.MISSING)
    result = train(TrainConfig(**vars(parser.parse_args(argv))))
    print(json.dumps({k: v for k, v in result.items() if k != "settings"}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
