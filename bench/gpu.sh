#!/usr/bin/env bash
# Model benchmarks on a machine with an NVIDIA GPU: inference (batch 1) and training step
# (batch 2, R50, 512 px) with mixed precision off and on, plus the MirroredStrategy step when
# more than one GPU is visible. Prints one JSON object per line. XLA stays off (the model
# compiles with jit_compile=False). Usage: bash bench/gpu.sh [PYTHON]   (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
"$PY" -c "import tensorflow as tf; g = tf.config.list_physical_devices('GPU'); \
print({'tensorflow': tf.__version__, 'gpus': [d.name for d in g]}); assert g, 'no GPU visible'"
for mp in off on; do
  flag=$([ "$mp" = on ] && echo --mixed-precision || true)
  "$PY" bench/model.py --sizes 256 512 --repeats 10 $flag
  "$PY" bench/train_step.py --size 512 --batch 2 --steps 10 $flag
done
