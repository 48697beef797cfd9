#!/usr/bin/env bash
# The engine's GPU check, for a CUDA machine (CI has none): the parity tests on CUDA, then the engine-vs-hf
# benchmark on CUDA without and with a compiled decode step. Each model prints one line per engine: generated
# tokens/s, achieved prefill FLOP/s and decode bytes/s as fractions of the card's measured matmul rate and
# copy bandwidth. Usage: bash benchmarks/gpu_check.sh [--dtype bfloat16]
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 ARCHBENCH_DATA="${ARCHBENCH_DATA:-../shared/data/squad}"
PY="${PYTHON:-.venv/bin/python}"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'gpu_check.sh needs a CUDA device'; print(torch.cuda.get_device_name())"
"$PY" -c "import archbench.trackers as t, json; print(json.dumps(t.environment('cuda')))"
ARCHBENCH_TEST_DEVICE=cuda "$PY" -m pytest -q -s tests/test_engine_parity.py
for flag in "" "--compile"; do
  "$PY" benchmarks/engine_vs_hf.py --device cuda --data "$ARCHBENCH_DATA" $flag "$@"
done
