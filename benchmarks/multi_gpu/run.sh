#!/usr/bin/env bash
# Two training jobs of a random-weight Qwen3-4B (vocab of the toy tokenizer) at once on a 2-GPU host:
#   benchmarks/multi_gpu/run.sh   (needs results/models/toy_tokenizer, data/problems/toy.parquet, snakemake, peft)
# On a 2 x H100 host: both jobs got their own GPU at the same second; each 52.5-52.9 s, snakemake wall 58 s.
set -euo pipefail
export PYTHONPATH=src
[ -f data/models/qwen3_4b_random/model.safetensors ] || python - <<'PY'
import time, torch
from transformers import AutoTokenizer
from vhack.models import random_qwen3, save_pretrained_dir
t = time.time()
tok = AutoTokenizer.from_pretrained("results/models/toy_tokenizer")
model = random_qwen3(tok, hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                     head_dim=128, intermediate_size=9728, max_position_embeddings=4096).to(torch.bfloat16)
save_pretrained_dir("data/models/qwen3_4b_random", model, tok)
print(f"random Qwen3-4B saved in {time.time() - t:.0f} s", flush=True)
PY
start=$(date +%s)
python -m snakemake --cores 16 --resources gpu=2 --configfile config/config.yaml benchmarks/multi_gpu/config.yaml \
  -- results/runs/vanilla__s41/metrics.parquet results/runs/vanilla__lr0.001__s41/metrics.parquet
echo "snakemake wall: $(( $(date +%s) - start )) s"
grep -h -E "slot|step 0|step 2|train done|seconds" logs/runs/*/train.log | cut -c1-200
cat benchmarks/out/runs/*/train.tsv
