"""Where a result came from: git state, package versions, host, device, invocation; and job logging."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import logging
import platform
import socket
import subprocess
import sys
from pathlib import Path

PACKAGES = ("vhack", "torch", "transformers", "peft", "tokenizers", "snakemake", "pandas", "pyarrow", "vllm")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def git_state(repo: str | Path = ".") -> dict:
    def git(*args):
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10)
    try:
        commit = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if commit.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def device_info() -> dict:
    import torch
    if torch.cuda.is_available():
        return {"device": "cuda", "name": torch.cuda.get_device_name(), "count": torch.cuda.device_count()}
    return {"device": "cpu", "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}


def provenance(snakemake_job: str | None = None) -> dict:
    return {
        "git": git_state(),
        "versions": versions(),
        "host": socket.gethostname(),
        "device": device_info(),
        "invocation": {"argv": list(sys.argv), "snakemake": snakemake_job},
    }


def setup_logging(log_path: str | Path | None, level: int = logging.INFO) -> logging.Logger:
    """Send library logging (and warnings) to the job's log file and stderr."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(level=level, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
    return logging.getLogger("vhack")
