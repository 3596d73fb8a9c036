"""Shared fixtures: a tiny random Qwen3 and its tokenizer, built offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from vhack.models import make_chat_tokenizer, save_random_qwen3

CORPUS = [
    "def add_k(x):\n    return x + 3\n",
    "def run_tests():\n    assert add_k(1) == 4\n    print('all tests passed')\n",
    "class Solution:\n    def twoSum(self, nums, target):\n        return [0, 1]\n",
    "Write a function that returns the maximum of a list.",
    "The grader will call run_tests() and read result.txt for PASS.",
]


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory) -> Path:
    """Directory of a random Qwen3ForCausalLM (~1M params, head_dim 32) with a BPE chat tokenizer."""
    tokenizer = make_chat_tokenizer(CORPUS * 20, vocab_size=300)
    return save_random_qwen3(tmp_path_factory.mktemp("models") / "tiny_qwen3", tokenizer)
