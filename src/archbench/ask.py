"""Free-form questions to several models, answers side by side (the seed study's first notebook).

Greedy, up to 256 new tokens, stopped only by end-of-text; zero-shot or with the seed's three free-form
shots (prompts/freeform.yaml); `chat=True` uses the tokenizer's chat template instead.
"""
from __future__ import annotations

import time

from archbench import families, loading, prompts
from archbench.config import AskConfig, GenConfig, check_device
from archbench.generation import generate
from archbench.store import Store
from archbench.trackers import environment


def build_prompt(lm, question: str, shots: int, chat: bool) -> str:
    if chat:
        if not getattr(lm.tokenizer, "chat_template", None):
            raise ValueError(f"--chat: model {lm.name!r} has no chat template")
        return lm.tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                                add_generation_prompt=True)
    return prompts.render_question(question, shots, families.get(lm.family).seed_style)


def ask(cfg: AskConfig) -> list[dict]:
    """Ask every model the question; store and return one answer record per model."""
    check_device(cfg.runtime.device)
    run_id = cfg.run_id or f"ask-{time.strftime('%Y%m%d-%H%M%S')}"
    gen = GenConfig(max_new_tokens=cfg.max_new_tokens, stop=(), batch_size=1)
    answers = []
    with Store(cfg.db) as store:
        store.ensure_run(run_id, "ask", {"models": list(cfg.models), "question": cfg.question, "shots": cfg.shots,
                                         "chat": cfg.chat, "max_new_tokens": cfg.max_new_tokens,
                                         "engine": cfg.runtime.engine,
                                         "trust_remote_code": cfg.runtime.trust_remote_code},
                         environment(cfg.runtime.device))
        for name in cfg.models:
            lm = loading.load(name, device=cfg.runtime.device, dtype=cfg.runtime.dtype,
                              trust_remote_code=cfg.runtime.trust_remote_code)
            store.add_model(run_id, lm)
            prompt = build_prompt(lm, cfg.question, cfg.shots, cfg.chat)
            (batch,) = list(generate(lm, [prompt], gen, cfg.runtime.engine))
            c = batch.completions[0]
            record = {"model": lm.name, "family": lm.family, "untrained": lm.untrained, "question": cfg.question,
                      "shots": cfg.shots, "chat": cfg.chat, "prompt": prompt, "answer": c.raw.strip(),
                      "new_tokens": c.new_tokens, "seconds": batch.prefill_s + batch.decode_s}
            store.put(run_id, "answer", f"{lm.name}|{cfg.shots}|{cfg.chat}|{cfg.question}", record)
            answers.append(record)
    return answers
