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

from archbench.generation import DEFAULT_ENGINE

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Compare Transformer, Mamba, Mamba-2 and RWKV language models on quality and speed.")
console = Console(width=None if sys.stdout.isatty() else 160)


def _call(fn, **kwargs):
    """Run a library function; turn the errors a user can fix into one line on stderr."""
    from archbench.data import DataError
    from archbench.loading import ModelError

    try:
        return fn(**kwargs)
    except (DataError, ModelError, ValueError, FileNotFoundError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        Console(stderr=True).print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted: finished batches are stored; rerun the same command to resume")
        raise typer.Exit(130)


def _ints(text: str, option: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{option} takes comma-separated integers, got {text!r}")


@app.command()
def models():
    """List the built-in zoo and the known architecture families."""
    from archbench import families, zoo

    for m in zoo.describe():
        console.print(f"{m['name']:15s} {m['family']:12s} {m['model_type']:12s} {m['layers']:24s} {m['note']}",
                      highlight=False)
    for fam in families.all_families():
        console.print(f"family {fam.name:12s} model types: {', '.join(sorted(fam.model_types))}", highlight=False)


@app.command()
def ask(model: List[str] = typer.Option(..., "--model", help="zoo alias, local dir, .gguf file or hub id"),
        question: str = typer.Option(..., "--question"),
        shots: int = typer.Option(0, "--shots", help="0 or 3 (the seed study's free-form shots)"),
        chat: bool = typer.Option(False, "--chat", help="use the tokenizer's chat template"),
        max_new_tokens: int = typer.Option(256, "--max-new-tokens"),
        device: str = "cpu", dtype: str = "float32", engine: str = DEFAULT_ENGINE,
        db: str = typer.Option("runs/archbench.sqlite", "--db")):
    """Ask every model the same free-form question and show the answers side by side."""
    from archbench.ask import ask as run_ask

    answers = _call(run_ask, models=model, question=question, shots=shots, chat=chat,
                    max_new_tokens=max_new_tokens, device=device, dtype=dtype, engine=engine, db=db)
    panels = [Panel(a["answer"] or "[dim](empty answer)[/dim]",
                    title=a["model"] + (" (untrained)" if a["untrained"] else ""),
                    subtitle=f"{a['family']} · {a['new_tokens']} tok · {a['seconds']:.2f}s") for a in answers]
    console.print(Columns(panels, equal=True, expand=True))


@app.command("eval")
def eval_(model: List[str] = typer.Option(..., "--model", help="zoo alias, local dir, .gguf file or hub id"),
          data: str = typer.Option(..., "--data", help="SQuAD file (seed/official JSON/JSONL) or 'squad' (hub)"),
          gold: Optional[str] = typer.Option(None, "--gold", help="official dev file giving all gold answers"),
          shots: str = typer.Option("0", "--shots", help="comma-separated shot counts, e.g. 0,3"),
          shots_from: Optional[str] = typer.Option(None, "--shots-from", help="few-shot pool file, or 'seed'"),
          trials: int = typer.Option(1, "--trials", help="shot sets drawn per few-shot setting"),
          limit: Optional[int] = typer.Option(None, "--limit"),
          prompt_style: str = typer.Option("default", "--prompt-style"),
          batch_size: str = typer.Option("8", "--batch-size", help="rows per batch, or auto (largest that fits)"),
          max_new_tokens: int = typer.Option(32, "--max-new-tokens"),
          stop: List[str] = typer.Option(["\\n"], "--stop", help="stop string(s); escapes like \\n allowed"),
          run_dir: str = typer.Option("runs/eval", "--run-dir"),
          db: str = typer.Option("runs/archbench.sqlite", "--db"),
          device: str = "cpu", dtype: str = "float32",
          engine: str = typer.Option(DEFAULT_ENGINE, "--engine", help="archbench (own engine) or hf (model.generate)"),
          adapter: Optional[str] = typer.Option(None, "--adapter", help="LoRA adapter directory"),
          seed: int = 1234,
          compile: bool = typer.Option(False, "--compile", help="torch.compile the decode step (CUDA)")):
    """Evaluate models on SQuAD (zero/few-shot), timed; writes summary.json, predictions.jsonl and the store."""
    from archbench.evaluate import evaluate
    from archbench.tables import rich_table

    stops = tuple(s.encode().decode("unicode_escape") for s in stop if s)
    summary = _call(evaluate, models=model, data=data, gold=gold, shots=_ints(shots, "--shots"),
                    shots_from=shots_from, trials=trials, limit=limit, prompt_style=prompt_style,
                    batch_size=0 if batch_size == "auto" else _ints(batch_size, "--batch-size")[0],
                    max_new_tokens=max_new_tokens, stop=stops, run_dir=run_dir, db=db,
                    device=device, dtype=dtype, engine=engine, adapter=adapter, seed=seed, compile=compile)
    console.print(rich_table(summary, title=f"SQuAD ({summary['results'][0]['n']} questions)"))
    console.print(f"wrote {run_dir}/summary.json and {run_dir}/predictions.jsonl")


@app.command()
def finetune(model: str = typer.Option(..., "--model"),
             train: str = typer.Option(..., "--train", help="SQuAD train file or 'squad' (hub)"),
             out: str = typer.Option(..., "--out", help="output directory (adapter, finetune.json, train_log.jsonl)"),
             prompt_style: str = typer.Option("default", "--prompt-style"),
             lora_r: int = typer.Option(8, "--lora-r"), lora_alpha: int = typer.Option(16, "--lora-alpha"),
             lora_dropout: float = typer.Option(0.1, "--lora-dropout"),
             target_modules: Optional[List[str]] = typer.Option(None, "--target-modules",
                                                                help="override the family's default LoRA targets"),
             epochs: float = typer.Option(1.0, "--epochs"), max_steps: Optional[int] = typer.Option(None, "--max-steps"),
             lr: float = typer.Option(2e-4, "--lr"), batch_size: int = typer.Option(8, "--batch-size"),
             grad_accum: int = typer.Option(1, "--grad-accum"), max_length: int = typer.Option(1024, "--max-length"),
             schedule: str = typer.Option("cosine", "--schedule", help="cosine or linear"),
             warmup_steps: int = typer.Option(10, "--warmup-steps"), max_grad_norm: float = 1.0,
             loss_on: str = typer.Option("answer", "--loss-on", help="answer (default) or all"),
             limit: Optional[int] = typer.Option(None, "--limit", help="use the first N training rows"),
             eval_every: int = typer.Option(0, "--eval-every"), eval_data: Optional[str] = typer.Option(None, "--eval-data"),
             eval_limit: int = typer.Option(20, "--eval-limit"), save_every: int = typer.Option(20, "--save-every"),
             resume: bool = typer.Option(False, "--resume"), merge: bool = typer.Option(False, "--merge"),
             seed: int = 1234, device: Optional[str] = typer.Option(None, "--device"),
             db: str = typer.Option("runs/archbench.sqlite", "--db")):
    """LoRA fine-tuning (answer-only loss, EOS appended) with accelerate; checkpoints and exact resume."""
    from archbench.finetune import finetune as run_finetune

    result = _call(run_finetune, model=model, train=train, out=out, prompt_style=prompt_style, lora_r=lora_r,
                   lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=target_modules, epochs=epochs,
                   max_steps=max_steps, lr=lr, batch_size=batch_size, grad_accum=grad_accum, max_length=max_length,
                   schedule=schedule, warmup_steps=warmup_steps, max_grad_norm=max_grad_norm, loss_on=loss_on,
                   limit=limit, eval_every=eval_every, eval_data=eval_data, eval_limit=eval_limit,
                   save_every=save_every, resume=resume, merge=merge, seed=seed, device=device, db=db)
    console.print(f"adapter: {out} · loss {result['first_loss']:.3f} -> {result['final_loss']:.3f} "
                  f"· {result['wall_s']:.0f}s")


@app.command()
def bench(model: List[str] = typer.Option(..., "--model"),
          context: str = typer.Option("128,512,2048,8192", "--context", help="prompt lengths in tokens"),
          batch: str = typer.Option("1,8,32", "--batch", help="batch sizes"),
          new_tokens: int = typer.Option(64, "--new-tokens"),
          engine: str = typer.Option("archbench", "--engine"), device: str = "cpu", dtype: str = "float32",
          prompt_source: str = typer.Option("random", "--prompt-source", help="random tokens or text"),
          min_runs: int = typer.Option(3, "--min-runs"), min_seconds: float = typer.Option(1.0, "--min-seconds"),
          rounds: int = typer.Option(3, "--rounds", help="sweeps round-robin over the points, samples pooled"),
          out: str = typer.Option("runs/bench", "--out"), db: str = typer.Option("runs/archbench.sqlite", "--db")):
    """Efficiency sweep: prefill, decode, memory and state size vs context length and batch size."""
    from archbench.bench import bench as run_bench

    _call(run_bench, models=model, contexts=_ints(context, "--context"), batches=_ints(batch, "--batch"),
          new_tokens=new_tokens, engine=engine, device=device, dtype=dtype, prompt_source=prompt_source,
          min_runs=min_runs, min_seconds=min_seconds, rounds=rounds, out=out, db=db)


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
    from archbench.report import render_report

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
