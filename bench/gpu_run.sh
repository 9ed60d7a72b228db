#!/usr/bin/env bash
# The GPU benchmark of issue 13 as one prepared script: s/step, tokens/s, MFU and peak memory of
# one chain (Pythia-410M/1.4B/2.8B shapes, batch 8 × 512, bf16 autocast, fp32 weights and w*;
# the "foreach" and torch.compile'd SGLD updates; devinterp fp32/TF32 beside them where it is
# installed), then aggregate chain-steps/s of 1-64 batched Pythia-14M chains. JSON under $OUT.
#
#   bench/gpu_run.sh            # on the GPU machine (torch + transformers; no Ray/DeepSpeed needed)
#   bench/gpu_run.sh --cpu      # the same steps reduced, on a CPU machine (a smoke test)
#
# The engine needs torch and numpy; its diagnostics need arviz-stats (+ scipy). Where they are
# missing, wheels carried in bench/wheels (pip download arviz-stats -d bench/wheels; the run
# tool's `carry`) are installed without an index. Budget: about 8 minutes on an H100/H200.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-gpu}
PY=${PYTHON:-python3}
if [ "$MODE" = "--cpu" ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
if ! "$PY" -c "import arviz_stats, scipy" 2>/dev/null; then
  if [ -d bench/wheels ]; then
    "$PY" -m pip install -q --no-index --find-links bench/wheels arviz-stats || true
  fi
fi
"$PY" - <<'PYEOF'
import importlib, shutil, torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "-")
for name in ("transformers", "numpy", "arviz_stats", "scipy", "triton", "devinterp"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", "?"))
    except Exception as exc:
        print(name, "missing:", type(exc).__name__)
print("c++", shutil.which("g++") or shutil.which("c++"))
PYEOF
export TQDM_DISABLE=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ "$MODE" = "--cpu" ]; then
  exec "$PY" bench/throughput.py --quick --models mlp --updates fused --out "$OUT"
fi
# one chain on big shapes (compiled update beside the reference), then many small chains
exec "$PY" bench/throughput.py --gpu --updates compiled --reps 2 --gpu-steps 10 \
  --shapes pythia-410m pythia-1.4b pythia-2.8b --chains-list 1 4 16 64 --out "$OUT"
