"""The `archbench` command line: each subcommand parses options and calls one library function.

Errors a user can fix (bad file, unknown model, offline hub id, bad option) print one line and exit 2.
"""
from __future__ import annotations

import sys
from typing import List, Optional

import typer
from rich.columns import Columns
from rich.console import Console
from rich.panel import Panel

from archbench.bench_config import BenchConfig
from archbench.config import AskConfig, ConfigError, EvalConfig, GenConfig, RuntimeConfig, defaults

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Compare Transformer, Mamba, Mamba-2 and RWKV language models on quality and speed.")
console = Console(width=None if sys.stdout.isatty() else 160)


def _call(fn, **kwargs):
    """Run a library function (or a closure building its config); turn the errors a user can fix into one
    line on stderr."""
    from archbench.data import DataError
    from archbench.loading import ModelError

    try:
        return fn(**kwargs)
    except (DataError, ModelError, ValueError, FileNotFoundError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        Console(stderr=True).print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted: finished batches are stored; rerun the same command to resume")
        raise typer.Exit(130) from None


def _numbers(text: str, option: str, kind=int) -> list:
    """Comma-separated numbers of an option, or one line naming the option."""
    try:
        values = [kind(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        values = []
    if not values:
        raise ConfigError(f"{option}: takes comma-separated {kind.__name__}s, got {text!r}")
    return values


@app.command()
def models():
    """List the built-in zoo and the known architecture families."""
    from archbench import families, zoo

    for m in zoo.describe():
        console.print(f"{m['name']:15s} {m['family']:12s} {m['model_type']:12s} {m['layers']:24s} {m['note']}",
                      highlight=False)
    for fam in families.all_families():
        console.print(f"family {fam.name:12s} model types: {', '.join(sorted(fam.model_types))}", highlight=False)


_E, _G, _R, _A = defaults(EvalConfig), defaults(GenConfig), defaults(RuntimeConfig), defaults(AskConfig)
_B = defaults(BenchConfig)


_REMOTE = typer.Option(_R["trust_remote_code"], "--trust-remote-code",
                       help="run the Python code a hub repo ships (its own model classes; needs --engine hf)")


def _runtime(device: str, dtype: str, engine: str, trust_remote_code: bool) -> RuntimeConfig:
    return RuntimeConfig(device=device, dtype=dtype, engine=engine, trust_remote_code=trust_remote_code)


@app.command()
def ask(model: List[str] = typer.Option(..., "--model", help="zoo alias, local dir, .gguf file or hub id"),
        question: str = typer.Option(..., "--question"),
        shots: int = typer.Option(_A["shots"], "--shots", help="0 or 3 (the seed study's free-form shots)"),
        chat: bool = typer.Option(_A["chat"], "--chat", help="use the tokenizer's chat template"),
        max_new_tokens: int = typer.Option(_A["max_new_tokens"], "--max-new-tokens"),
        device: str = _R["device"], dtype: str = _R["dtype"], engine: str = _R["engine"],
        trust_remote_code: bool = _REMOTE, db: str = typer.Option(_A["db"], "--db")):
    """Ask every model the same free-form question and show the answers side by side."""
    from archbench.ask import ask as run_ask

    answers = _call(lambda: run_ask(AskConfig(models=tuple(model), question=question, shots=shots, chat=chat,
                                              max_new_tokens=max_new_tokens,
                                              runtime=_runtime(device, dtype, engine, trust_remote_code), db=db)))
    panels = [Panel(a["answer"] or "[dim](empty answer)[/dim]",
                    title=a["model"] + (" (untrained)" if a["untrained"] else ""),
                    subtitle=f"{a['family']} · {a['new_tokens']} tok · {a['seconds']:.2f}s") for a in answers]
    console.print(Columns(panels, equal=True, expand=True))


def _task_options(**given) -> dict:
    """The task options the user set (None = the task's own default); comma lists become tuples."""
    lists = {"lengths": int, "depths": float, "entries": int}
    out = {}
    for key, value in given.items():
        if value is None:
            continue
        out[key] = tuple(_numbers(value, f"--{key}", lists[key])) if key in lists else value
    return out


@app.command("eval")
def eval_(model: List[str] = typer.Option(..., "--model", help="zoo alias, local dir, .gguf file or hub id"),
          task: str = typer.Option(_E["task"], "--task", help="what to evaluate: squad, squad-recall, phonebook"),
          data: Optional[str] = typer.Option(None, "--data", help="SQuAD file (seed/official JSON/JSONL) or 'squad'"),
          gold: Optional[str] = typer.Option(None, "--gold", help="official dev file giving all gold answers"),
          shots: str = typer.Option(",".join(map(str, _E["shots"])), "--shots", help="shot counts, e.g. 0,3"),
          shots_from: Optional[str] = typer.Option(None, "--shots-from", help="few-shot pool file, or 'seed'"),
          trials: int = typer.Option(_E["trials"], "--trials", help="shot sets drawn per few-shot setting"),
          limit: Optional[int] = typer.Option(None, "--limit", help="evaluate the first N questions"),
          prompt_style: Optional[str] = typer.Option(None, "--prompt-style", help="a style of prompts/*.yaml"),
          lengths: Optional[str] = typer.Option(None, "--lengths", help="recall tasks: target prompt tokens"),
          depths: Optional[str] = typer.Option(None, "--depths", help="squad-recall: gold paragraph depths 0..1"),
          entries: Optional[str] = typer.Option(None, "--entries", help="phonebook: entries per prompt"),
          jrt: Optional[bool] = typer.Option(None, "--jrt/--no-jrt", help="recall tasks: state the context twice"),
          batch_size: str = typer.Option(str(_G["batch_size"]), "--batch-size", help="rows per batch, or auto"),
          max_new_tokens: int = typer.Option(_G["max_new_tokens"], "--max-new-tokens"),
          stop: List[str] = typer.Option([s.encode("unicode_escape").decode() for s in _G["stop"]], "--stop",
                                         help="stop string(s); escapes like \\n allowed"),
          run_dir: str = typer.Option(_E["run_dir"], "--run-dir"), db: str = typer.Option(_E["db"], "--db"),
          new_run: bool = typer.Option(_E["new_run"], "--new-run", help="a new run even if run-dir holds one"),
          device: str = _R["device"], dtype: str = _R["dtype"],
          engine: str = typer.Option(_R["engine"], "--engine", help="archbench (own engine) or hf (model.generate)"),
          trust_remote_code: bool = _REMOTE,
          adapter: Optional[str] = typer.Option(None, "--adapter", help="LoRA adapter directory"),
          seed: Optional[int] = typer.Option(None, "--seed", help="shot draws and generated data (task default)"),
          compile: bool = typer.Option(_G["compile"], "--compile", help="torch.compile the decode step (CUDA)"),
          device_map: Optional[str] = typer.Option(None, "--device-map", help="auto: one model over this node's GPUs"),
          rank_timeout: float = typer.Option(_E["rank_timeout"], "--rank-timeout",
                                             help="seconds a process waits for the others under torchrun")):
    """Evaluate models on a task (zero/few-shot), timed; writes summary.json, predictions.jsonl and the store."""
    from archbench.evaluate import evaluate
    from archbench.tables import rich_table

    stops = tuple(s.encode().decode("unicode_escape") for s in stop if s)

    def run() -> dict:
        options = _task_options(data=data, gold=gold, shots_from=shots_from, limit=limit, prompt_style=prompt_style,
                                lengths=lengths, depths=depths, entries=entries, jrt=jrt, seed=seed)
        gen = GenConfig(max_new_tokens=max_new_tokens, stop=stops, compile=compile,
                        batch_size=0 if batch_size == "auto" else _numbers(batch_size, "--batch-size", int)[0])
        return evaluate(EvalConfig(models=tuple(model), task=task, task_options=options,
                                   shots=tuple(_numbers(shots, "--shots", int)), trials=trials, gen=gen,
                                   runtime=_runtime(device, dtype, engine, trust_remote_code), adapter=adapter,
                                   run_dir=run_dir, db=db, new_run=new_run, device_map=device_map,
                                   rank_timeout=rank_timeout))

    summary = _call(run)
    from archbench import distributed

    if not distributed.is_main():  # under torchrun every rank returns the summary; rank 0 prints it
        return
    console.print(rich_table(summary))
    if summary.get("skipped"):
        console.print(f"{summary['skipped']} items skipped (longer than a model's window; reasons in the store)")
    console.print(f"wrote {run_dir}/summary.json and {run_dir}/predictions.jsonl")


@app.command()
def finetune(model: str = typer.Option(..., "--model", help="zoo alias, local dir or hub id"),
             train: str = typer.Option(..., "--train", help="SQuAD train file or 'squad' (hub)"),
             out: str = typer.Option(..., "--out", help="output directory (adapter, finetune.json, train_log.jsonl)"),
             prompt_style: Optional[str] = typer.Option(None, "--prompt-style", help="a style of prompts/*.yaml"),
             lora_r: Optional[int] = typer.Option(None, "--lora-r"),
             lora_alpha: Optional[int] = typer.Option(None, "--lora-alpha"),
             lora_dropout: Optional[float] = typer.Option(None, "--lora-dropout"),
             target_modules: Optional[List[str]] = typer.Option(None, "--target-modules",
                                                                help="override the family's default LoRA targets"),
             epochs: Optional[float] = typer.Option(None, "--epochs"),
             max_steps: Optional[int] = typer.Option(None, "--max-steps", help="optimizer steps (overrides --epochs)"),
             lr: Optional[float] = typer.Option(None, "--lr"),
             batch_size: Optional[int] = typer.Option(None, "--batch-size", help="rows per micro-batch per process"),
             grad_accum: Optional[int] = typer.Option(None, "--grad-accum"),
             max_length: Optional[int] = typer.Option(None, "--max-length"),
             schedule: Optional[str] = typer.Option(None, "--schedule", help="cosine or linear"),
             warmup_steps: Optional[int] = typer.Option(None, "--warmup-steps"),
             max_grad_norm: Optional[float] = typer.Option(None, "--max-grad-norm", help="0 = no clipping"),
             loss_on: Optional[str] = typer.Option(None, "--loss-on", help="answer or all"),
             limit: Optional[int] = typer.Option(None, "--limit", help="use the first N training rows"),
             eval_every: Optional[int] = typer.Option(None, "--eval-every", help="steps between held-out evals"),
             eval_data: Optional[str] = typer.Option(None, "--eval-data", help="held-out SQuAD file"),
             eval_limit: Optional[int] = typer.Option(None, "--eval-limit"),
             save_every: Optional[int] = typer.Option(None, "--save-every", help="steps between checkpoints"),
             resume: bool = typer.Option(False, "--resume", help="continue the checkpoint in --out"),
             merge: bool = typer.Option(False, "--merge", help="also write base + adapter merged to OUT/merged"),
             seed: Optional[int] = typer.Option(None, "--seed"),
             device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda if available)"),
             db: Optional[str] = typer.Option(None, "--db")):
    """LoRA fine-tuning (answer-only loss, EOS appended) with accelerate; checkpoints and exact resume. An option
    left unset takes FinetuneConfig's default (finetune_config.py)."""
    given = {k: v for k, v in locals().items() if v is not None}  # the options set (all of them: no other locals)
    from archbench.finetune import finetune as run_finetune
    from archbench.finetune_config import FinetuneConfig

    result = _call(lambda: run_finetune(FinetuneConfig(**{**defaults(FinetuneConfig), **given})))
    console.print(f"adapter: {out} · loss {result['first_loss']:.3f} -> {result['final_loss']:.3f} "
                  f"· {result['wall_s']:.0f}s")


@app.command()
def bench(model: List[str] = typer.Option(..., "--model"),
          context: str = typer.Option(",".join(map(str, _B["contexts"])), "--context", help="prompt lengths in tokens"),
          batch: str = typer.Option(",".join(map(str, _B["batches"])), "--batch", help="batch sizes"),
          new_tokens: int = typer.Option(_B["new_tokens"], "--new-tokens"),
          engine: str = typer.Option(_R["engine"], "--engine"), device: str = _R["device"], dtype: str = _R["dtype"],
          trust_remote_code: bool = _REMOTE,
          prompt_source: str = typer.Option(_B["prompt_source"], "--prompt-source", help="random tokens or text"),
          min_runs: int = typer.Option(_B["min_runs"], "--min-runs"),
          min_seconds: float = typer.Option(_B["min_seconds"], "--min-seconds"),
          rounds: int = typer.Option(_B["rounds"], "--rounds", help="round-robin sweeps, samples pooled"),
          out: str = typer.Option(_B["out"], "--out"), db: str = typer.Option(_B["db"], "--db")):
    """Efficiency sweep: prefill, decode, memory and state size vs context length and batch size."""
    from archbench.bench import bench as run_bench

    _call(lambda: run_bench(BenchConfig.from_options(
        models=model, contexts=_numbers(context, "--context"), batches=_numbers(batch, "--batch"),
        new_tokens=new_tokens, engine=engine, device=device, dtype=dtype, trust_remote_code=trust_remote_code,
        prompt_source=prompt_source,
        min_runs=min_runs, min_seconds=min_seconds, rounds=rounds, out=out, db=db)))


@app.command()
def train(out: str = typer.Option(..., "--out", help="run directory; becomes the trained model's directory"),
          arch: Optional[str] = typer.Option(None, "--arch",
                                             help="gpt2, llama, mamba, mamba2, rwkv, rwkv7, bamba (hybrid)"),
          data: Optional[str] = typer.Option(None, "--data", help="text (character level) or mqar"),
          text: Optional[str] = typer.Option(None, "--text", help="the text file for --data text"),
          width: Optional[int] = None, depth: Optional[int] = None,
          params: Optional[int] = typer.Option(None, "--params", help="match this many non-embedding parameters"),
          context: Optional[int] = None, batch_size: Optional[int] = None, iters: Optional[int] = None,
          lr: Optional[float] = None, warmup: Optional[int] = None, seed: Optional[int] = None,
          mqar_vocab: Optional[int] = None, mqar_train: Optional[str] = None, mqar_test: Optional[str] = None,
          mqar_examples: Optional[int] = None, mqar_fill: Optional[str] = None, eval_every: Optional[int] = None,
          save_every: Optional[int] = None, threads: Optional[int] = None,
          resume: bool = typer.Option(False, "--resume"), fast: bool = typer.Option(True, "--fast/--reference"),
          db: Optional[str] = None):
    """Train a model of any family from scratch (the lab): same data, tokens and budget for every family."""
    from archbench.lab.train import TrainConfig
    from archbench.lab.train import train as run_train

    given = {k: v for k, v in dict(out=out, arch=arch, data=data, text=text, width=width, depth=depth, params=params,
                                   context=context, batch_size=batch_size, iters=iters, lr=lr, warmup=warmup,
                                   seed=seed, mqar_vocab=mqar_vocab, mqar_train=mqar_train, mqar_test=mqar_test,
                                   mqar_examples=mqar_examples, mqar_fill=mqar_fill, eval_every=eval_every,
                                   save_every=save_every, threads=threads, resume=resume, fast=fast,
                                   db=db).items() if v is not None}
    result = _call(lambda: run_train(TrainConfig(**given)))
    score = (f"val loss {result['val_loss']:.3f}" if "val_loss" in result else
             f"MQAR accuracy {result['mqar_mean_accuracy']:.3f}" if "mqar_mean_accuracy" in result else "unfinished")
    console.print(f"{result['arch']} {result['shape']} · {result['steps']} steps · {score} · {result['wall_s']:.0f}s "
                  f"-> {out}", highlight=False)


@app.command()
def run(study: str = typer.Argument(..., help="study YAML file, or the name of a shipped study (demo, seed)"),
        dry_run: bool = typer.Option(False, "--dry-run", help="print the plan and what is already done"),
        only: Optional[List[str]] = typer.Option(None, "--only", help="run only these parts of the study")):
    """Run a study (models x shots x fine-tuning x bench) from one YAML config, then write its report."""
    from archbench.study import run_study

    _call(run_study, study=study, dry_run=dry_run, only=only)


@app.command()
def report(sources: List[str] = typer.Argument(..., help="eval/bench/finetune run directories or study YAMLs"),
           out: str = typer.Option("runs/report", "--out"), db: str = typer.Option("runs/archbench.sqlite", "--db")):
    """Render report.md and a self-contained report.html from stored results only."""
    from archbench.sources import render_report

    written = _call(render_report, sources=sources, out=out, db=db)
    console.print("wrote " + ", ".join(str(p) for p in written))


@app.command()
def demo(out: str = typer.Option("runs/demo", "--out"),
         data_dir: Optional[str] = typer.Option(None, "--data-dir", envvar="ARCHBENCH_DATA",
                                                help="folder with the SQuAD files (seed_eval_100.jsonl, ...)")):
    """The offline demo study: zoo models + SmolLM2-135M, free-form questions, SQuAD 0/3-shot, report."""
    from archbench.demo import run_demo

    report = _call(run_demo, out=out, data_dir=data_dir)
    console.print(f"report: {report}")


def main():  # pragma: no cover - console entry point
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
