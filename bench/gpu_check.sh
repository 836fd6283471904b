#!/usr/bin/env bash
# On a machine with a GPU: the `gpu` tests, then each benchmark on CUDA (about 10 minutes in all).
# Usage: bash bench/gpu_check.sh   (builds .venv through `make install` when missing)
set -uo pipefail
cd "$(dirname "$0")/.."
make install >/dev/null
PY=.venv/bin/python
$PY -m pip install -q -e '.[dev,bench]'
mkdir -p "${OUT:-bench/results}"
dest="${OUT:-bench/results}"
status=0
timeout 150 .venv/bin/pytest -q -m gpu tests || status=1
for b in augment interpret invariance transfer; do
  [ -f bench/$b.py ] || continue
  timeout 150 $PY bench/$b.py --quick --device cuda --out "$dest/${b}_cuda.md" || status=1
done
# DDP's find_unused_parameters=True vs False (2 ranks: nccl on 2 GPUs; on one GPU both share it over gloo)
timeout 240 $PY bench/distributed.py --quick --device cuda --out "$dest/distributed_cuda.md" || status=1
exit $status
