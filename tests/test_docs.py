"""Every `snakemake` command in README.md, docs/ and the presets' headers dry-runs as written, and every
`python -m vhack.cost` command (itself a dry run) runs.

The commands run in a copy of the tracked files with stand-ins for what a user provides (the
LeetCode JSONL, the teacher's LoRA directory), so a doc that stops matching the workflow fails here.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import copy_tracked

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PRESET_FILES = sorted((ROOT / "config" / "presets").glob("*.yaml"))
COMMAND = re.compile(r"^(?:\S*/)?(?:snakemake|python -m vhack\.cost)(?:\s|$)")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")


def strip_comment(line: str) -> str:
    return re.split(r"\s+#\s", line, maxsplit=1)[0].strip()


def doc_commands(path: Path) -> list[str]:
    """Snakemake command lines: fenced-block lines, inline code spans, preset `#   snakemake ...` comments."""
    text = path.read_text()
    if path.suffix == ".yaml":
        lines = [m.group(1) for m in re.finditer(r"^#\s+(snakemake .*)$", text, re.M)]
    else:
        lines = [l for block in FENCE.findall(text) for l in block.splitlines()]
        prose = FENCE.sub("", text)
        # inline spans elide with … or name placeholders in <>: those are not runnable as written
        lines += [s for s in INLINE.findall(prose) if "…" not in s and "<" not in s]
    return [strip_comment(l) for l in lines if COMMAND.match(l.strip())]


ALL = sorted({(p.relative_to(ROOT).as_posix(), c) for p in DOC_FILES + PRESET_FILES for c in doc_commands(p)})


def test_extraction_finds_the_gpu_and_slurm_commands():
    commands = [c for _, c in ALL]
    assert any("config/presets/fast.yaml" in c and "gpu=1" in c for c in commands)
    assert any("profiles/slurm" in c for c in commands)
    assert any(c.startswith("python -m vhack.cost") for c in commands)
    assert doc_commands(ROOT / "README.md"), "no snakemake command found in README.md"


def dry_run_argv(command: str) -> list[str]:
    """The command as a dry run: `-n` right after the program (before any `--` that ends the options)."""
    words = shlex.split(command)
    if words[1:3] == ["-m", "vhack.cost"]:
        return [sys.executable, *words[1:]]
    return [sys.executable, "-m", "snakemake", "-n", *words[1:]]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """The tracked files (as in the worktree now) plus stand-ins for user-provided data."""
    root = copy_tracked(tmp_path_factory.mktemp("checkout"))
    (root / "data/leetcode").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "tests/fixtures/leetcode_sample.jsonl", root / "data/leetcode/train.jsonl")
    lora = root / "data/teachers/qwen3-4b-rewardhack-lora"
    lora.mkdir(parents=True, exist_ok=True)
    (lora / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (lora / "adapter_model.safetensors").write_bytes(b"stand-in")
    return root


@pytest.mark.parametrize("where,command", ALL, ids=[f"{w}:{c}" for w, c in ALL])
def test_doc_command_dry_runs(checkout, where, command):
    env = {**os.environ, "PYTHONPATH": str(checkout / "src"), "HF_HOME": str(checkout / ".hf_home"),
           "HF_HUB_OFFLINE": "1"}  # planning never downloads
    proc = subprocess.run(dry_run_argv(command), cwd=checkout, env=env, capture_output=True, text=True,
                          timeout=300)
    out = proc.stdout + proc.stderr
    if "--report" in command:
        # a report is made after the runs: here the workflow must parse and ask for the report's inputs
        assert "marked for report but does not exist" in out, f"{where}: {command}\n{out[-3000:]}"
        return
    assert proc.returncode == 0, f"{where}: {command}\n{out[-3000:]}"
    done = re.search(r"^gpu_jobs=\d+ gpu_hours=[\d.]+$", out, re.M) if "vhack.cost" in command else \
        "This was a dry-run" in out or "Nothing to be done" in out or "your workflow is in a good condition" in out
    assert done, out[-3000:]
