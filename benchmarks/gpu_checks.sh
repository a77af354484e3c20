#!/bin/bash
# The GPU checks in one script, for a lent CUDA machine with CuPy (run from the repository
# root; results under $OUT, default out/gpu_checks):
#   1. tests/test_cupy_backend.py (the cupy backend in lockstep with NumPy);
#   2. benchmarks/step_cost.py --backend cupy at m = 1e5: cost per step of sliding, expgn2, GD;
#   3. if out/tstar holds a GD run (benchmarks/digits_tstar.py ... run gd 0.125, made on the
#      CPU first, with the window's reference), the 1,000-unit digits window on the GPU.
# Each part has its own time limit so that one slow part leaves the others their results.
set -o pipefail
OUT=${OUT:-out/gpu_checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} MPLBACKEND=Agg
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/env.txt"
$PY -c "import sys, cupy, numba, numpy, scipy; print(sys.version.split()[0], 'cupy', cupy.__version__,
'numba', numba.__version__, 'numpy', numpy.__version__, 'scipy', scipy.__version__)" | tee -a "$OUT/env.txt"
git log -1 --format=%h 2>/dev/null | tee -a "$OUT/env.txt"
timeout 200 $PY -m pytest -q -p no:cacheprovider tests/test_cupy_backend.py 2>&1 \
    | tee "$OUT/cupy_tests.log" | tail -n 15
timeout 90 $PY benchmarks/step_cost.py --backend cupy --width 100000 --methods sliding expgn2 gd \
    2>&1 | tee "$OUT/step_cost.log"
if ls out/tstar/gd_*.npz >/dev/null 2>&1; then
    timeout 130 $PY benchmarks/digits_tstar.py --out out/tstar window 1000 --backend cupy \
        gd:0.03125 expgn2:1e-7 2>&1 | tee "$OUT/window.log"
fi
