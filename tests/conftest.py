"""Shared fixtures: a tiny random Qwen3 and its tokenizer, built offline."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from vhack.models import make_chat_tokenizer, save_random_qwen3

REPO = Path(__file__).resolve().parents[1]

CORPUS = [
    "def add_k(x):\n    return x + 3\n",
    "def run_tests():\n    assert add_k(1) == 4\n    print('all tests passed')\n",
    "class Solution:\n    def twoSum(self, nums, target):\n        return [0, 1]\n",
    "Write a function that returns the maximum of a list.",
    "The grader will call run_tests() and read result.txt for PASS.",
]


@pytest.fixture
def triton_device() -> str:
    """Where the Triton kernels run: CUDA, or CPU tensors under Triton's interpreter (TRITON_INTERPRET=1,
    as .ci/triton_test.sh runs them)."""
    if importlib.util.find_spec("triton") is None:
        if os.environ.get("TRITON_INTERPRET") == "1":
            pytest.fail("TRITON_INTERPRET=1 but Triton is not installed in this environment")
        pytest.skip("needs Triton")
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA, or TRITON_INTERPRET=1 to run Triton's interpreter on CPU")
    return "cpu"


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory) -> Path:
    """Directory of a random Qwen3ForCausalLM (~1M params, head_dim 32) with a BPE chat tokenizer."""
    tokenizer = make_chat_tokenizer(CORPUS * 20, vocab_size=300)
    return save_random_qwen3(tmp_path_factory.mktemp("models") / "tiny_qwen3", tokenizer)


def copy_tracked(dst: Path) -> Path:
    """Copy the repository's files (tracked and untracked-not-ignored, as in the worktree now) into `dst`."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout
    for rel in filter(None, listed.decode().split("\0")):
        if (REPO / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dst / rel)
    return dst


def make_hub_snapshot(cache_dir: Path, repo_id: str, src_dir: Path, commit: str) -> Path:
    """Lay out `src_dir` as huggingface_hub's cache would after downloading `repo_id` at `commit` (main)."""
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(src_dir, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot
