#!/usr/bin/env bash
# The GPU check, for a CUDA machine (CI has none), in one run:
#  1. the engine's parity tests on CUDA (greedy tokens and logits against transformers, every tiny family);
#  2. the lab's training-step table on CUDA (archbench.lab.steptime: the fast mixers or mamba-ssm's kernels,
#     bf16 autocast through accelerate), every architecture against GPT-2 at matched size;
#  3. `archbench bench` of $BENCH_MODELS (default smollm2-135m) at context 128 and 2048, batch 1 and 8, in
#     $DTYPE (default bfloat16), with the engine and with transformers' generate: the table's "BW %" is decode
#     bytes/s as a fraction of the card's copy bandwidth measured in the same run;
#  4. the engine-vs-hf SQuAD workload on CUDA without and with a compiled decode step (needs $ARCHBENCH_DATA).
# Usage: bash benchmarks/gpu_check.sh   (PYTHON=python3 BENCH_MODELS=/path/to/model DTYPE=float32 to change)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 ARCHBENCH_DATA="${ARCHBENCH_DATA:-../shared/data/squad}"
PY="${PYTHON:-.venv/bin/python}"
DTYPE="${DTYPE:-bfloat16}"
OUTDIR="${OUTDIR:-runs/gpu-check}"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'gpu_check.sh needs a CUDA device'; print(torch.cuda.get_device_name())"
"$PY" -c "import archbench.trackers as t, json; print(json.dumps(t.environment('cuda')))"
echo "== 1. parity on CUDA"
ARCHBENCH_TEST_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider tests/test_engine_parity.py || echo "PARITY FAILED"
echo "== 2. training step on CUDA"
"$PY" -m archbench.lab.steptime --arch gpt2,llama,mamba,mamba2,rwkv,rwkv7,bamba --steps 20 --rounds 3 \
  || echo "STEPTIME FAILED"
echo "== 3. bench ($DTYPE)"
for engine in archbench hf; do
  "$PY" -m archbench bench --model ${BENCH_MODELS:-smollm2-135m} --context 128,2048 --batch 1,8 --device cuda \
    --dtype "$DTYPE" --engine "$engine" --out "$OUTDIR/bench-$engine" --db "$OUTDIR/gpu.sqlite" --rounds 2 \
    || echo "BENCH $engine FAILED"
done
echo "== 4. engine vs hf on SQuAD"
if [ -e "$ARCHBENCH_DATA" ]; then
  for flag in "" "--compile"; do
    "$PY" benchmarks/engine_vs_hf.py --device cuda --data "$ARCHBENCH_DATA" --models tiny-gpt2 tiny-mamba tiny-rwkv \
      --repeats 2 $flag || echo "ENGINE_VS_HF $flag FAILED"
  done
fi
