"""Free-form questions to several models, answers side by side (the seed study's first notebook).

Greedy, up to 256 new tokens, stopped only by end-of-text; zero-shot or with the seed's three free-form
shots (prompts/freeform.yaml); `chat=True` uses the tokenizer's chat template instead.
"""
from __future__ import annotations

import time

from archbench import families, loading, prompts
from archbench.generation import DEFAULT_ENGINE, GenSettings, generate
from archbench.store import Store
from archbench.trackers import environment


def build_prompt(lm, question: str, shots: int, chat: bool) -> str:
    if chat:
        if not getattr(lm.tokenizer, "chat_template", None):
            raise ValueError(f"--chat: model {lm.name!r} has no chat template")
        return lm.tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                                add_generation_prompt=True)
    return prompts.render_question(question, shots, families.get(lm.family).seed_style)


def ask(*, models: list[str], question: str, shots: int = 0, chat: bool = False, max_new_tokens: int = 256,
        device: str = "cpu", dtype: str = "float32", engine: str = DEFAULT_ENGINE, db: str = "runs/archbench.sqlite",
        run_id: str | None = None) -> list[dict]:
    """Ask every model `question`; store and return one answer record per model."""
    run_id = run_id or f"ask-{time.strftime('%Y%m%d-%H%M%S')}"
    settings = GenSettings(max_new_tokens=max_new_tokens, stop=(), batch_size=1)
    answers = []
    with Store(db) as store:
        store.ensure_run(run_id, "ask", {"models": models, "question": question, "shots": shots, "chat": chat,
                                         "max_new_tokens": max_new_tokens, "engine": engine}, environment(device))
        for name in models:
            lm = loading.load(name, device=device, dtype=dtype)
            store.add_model(run_id, lm)
            prompt = build_prompt(lm, question, shots, chat)
            (batch,) = list(generate(lm, [prompt], settings, engine))
            c = batch.completions[0]
            record = {"model": lm.name, "family": lm.family, "untrained": lm.untrained, "question": question,
                      "shots": shots, "chat": chat, "prompt": prompt, "answer": c.raw.strip(),
                      "new_tokens": c.new_tokens, "seconds": batch.prefill_s + batch.decode_s}
            store.put(run_id, "answer", f"{lm.name}|{shots}|{chat}|{question}", record)
            answers.append(record)
    return answers
