"""Where a result came from: git state, package versions, host, device, invocation; and job logging."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import logging
import os
import platform
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Sequence

INVOCATION_ENV = "VHACK_SNAKEMAKE_INVOCATION"   # set by rules/common.smk in the snakemake process, read by jobs
CORES_FLAGS = ("--cores", "-c", "--jobs", "-j")
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


def export_invocation(argv: Sequence[str], configfiles: Sequence[str | os.PathLike],
                      config_args: Sequence[str]) -> None:
    """Record the snakemake command line for the jobs it starts (first value wins: a cluster job's
    own re-invocation of snakemake keeps the user's command)."""
    cwd = Path.cwd()
    files = [str(Path(f).relative_to(cwd)) if Path(f).is_relative_to(cwd) else str(f) for f in configfiles]
    os.environ.setdefault(INVOCATION_ENV, json.dumps({"argv": list(argv), "configfiles": files,
                                                      "config_args": list(config_args)}))


def snakemake_command(argv: Sequence[str]) -> list[str]:
    """argv with `python -m snakemake`'s __main__.py path spelled as the `snakemake` command."""
    return ["snakemake", *argv[1:]] if argv and Path(argv[0]).name in ("__main__.py", "snakemake") else list(argv)


def rebuild_command(outer: dict, targets: Sequence[str]) -> str:
    """The command that reruns just the job making `targets`, with the same config files and overrides."""
    argv = outer["argv"]
    cores = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a in CORES_FLAGS), "1")
    cmd = ["snakemake", "--cores", cores]
    if outer["configfiles"]:
        cmd += ["--configfile", *outer["configfiles"]]
    if outer["config_args"]:
        cmd += ["--config", *outer["config_args"]]
    return shlex.join([*cmd, "--force", "--", *targets])


def invocation(snakemake_job: str | None = None, targets: Sequence[str] = ()) -> dict:
    """This process's argv; under snakemake also the user's command line and a command rebuilding `targets`."""
    out = {"argv": list(sys.argv), "snakemake": snakemake_job}
    outer = json.loads(os.environ.get(INVOCATION_ENV) or "null")
    if outer is not None:
        out.update(command=shlex.join(snakemake_command(outer["argv"])), configfiles=outer["configfiles"],
                   config_args=outer["config_args"], rebuild=rebuild_command(outer, targets) if targets else "")
    return out


def provenance(snakemake_job: str | None = None, targets: Sequence[str] = ()) -> dict:
    return {
        "git": git_state(),
        "versions": versions(),
        "host": socket.gethostname(),
        "device": device_info(),
        "invocation": invocation(snakemake_job, targets),
    }


class ConsoleFilter(logging.Filter):
    """What reaches the terminal: warnings and errors, and records logged with extra={"console": True}."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or getattr(record, "console", False)


def setup_logging(log_path: str | Path | None, level: int = logging.INFO) -> logging.Logger:
    """Send library logging (and warnings) to the job's log file; the terminal (stderr) gets only
    warnings and the lines marked for it, so per-step metrics stay in the log.

    Without a log file everything goes to stderr."""
    console = logging.StreamHandler(sys.stderr)
    handlers: list[logging.Handler] = [console]
    if log_path:
        console.addFilter(ConsoleFilter())
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(level=level, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
    return logging.getLogger("vhack")
