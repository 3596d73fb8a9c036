#!/usr/bin/env bash
# The vLLM rollout tests, in their own venv (.ci/vllm_venv.sh), then `pytest -m vllm` (~30 s on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
.ci/vllm_venv.sh
echo "vllm venv ready in $((SECONDS - start)) s"
.venv-vllm/bin/python -m pytest -q -m vllm -p no:cacheprovider tests/test_rollout.py "$@"
echo "vllm tests done in $((SECONDS - start)) s"
