"""Devices for jobs: a distinct GPU per GPU job, bounded CPU concurrency for CPU jobs.

GPU pinning. Snakemake counts a `gpu` resource but never assigns devices
(snakemake issue #281). A GPU job takes the first free device from a pool of
file locks (one per visible device) and sets CUDA_VISIBLE_DEVICES to it before
CUDA is initialised; the kernel releases the lock when the job ends or dies, so a
crashed job never leaks its device.

CPU slots. Snakemake trusts `--cores`; a user passing `--cores 8` on a 2-core box
would run eight torch processes that thrash (on 2 cores generation fell from ~400
to ~9 completions/s). A CPU job takes one of `cpu_count // threads` slots (same
file-lock pool, so it also holds across separate snakemake invocations).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)
LOCK_DIR = Path(os.environ.get("VHACK_LOCK_DIR", Path(tempfile.gettempdir()) / f"vhack-slots-{os.getuid()}"))


@contextlib.contextmanager
def _hold_one(names: list[str], lock_dir: Path, poll_s: float, what: str) -> Iterator[str]:
    """Block until one of `names` can be locked; yield it; unlock on exit (or process death)."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        for name in names:
            fh = open(lock_dir / f"{name}.lock", "w")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                continue
            try:
                log.info("holding %s %s", what, name)
                yield name
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
                fh.close()
            return
        if not waited:
            log.info("all %d %s slots busy; waiting", len(names), what)
            waited = True
        time.sleep(poll_s)


@contextlib.contextmanager
def cpu_slot(threads: int, lock_dir: Path = LOCK_DIR, poll_s: float = 0.5) -> Iterator[str]:
    """Hold one CPU slot for the duration; sets torch's thread count to `threads`."""
    import torch
    torch.set_num_threads(threads)
    slots = max(1, (os.cpu_count() or 1) // max(1, threads))
    with _hold_one([f"cpu{i}" for i in range(slots)], lock_dir, poll_s, "CPU slot") as name:
        yield name


def visible_gpus(env: dict | None = None) -> list[str]:
    """Device ids this process may use, found without initialising CUDA."""
    env = os.environ if env is None else env
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    return sorted((p.name[len("nvidia"):] for p in Path("/dev").glob("nvidia[0-9]*")), key=int)


@contextlib.contextmanager
def gpu_slot(devices: list[str], lock_dir: Path = LOCK_DIR, poll_s: float = 1.0) -> Iterator[str]:
    """Pin this process to one free device of `devices` (sets CUDA_VISIBLE_DEVICES)."""
    with _hold_one([f"gpu{d}" for d in devices], lock_dir, poll_s, "GPU") as name:
        device = name[len("gpu"):]
        previous = os.environ.get("CUDA_VISIBLE_DEVICES")
        os.environ["CUDA_VISIBLE_DEVICES"] = device
        try:
            yield device
        finally:
            if previous is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = previous


@contextlib.contextmanager
def compute_slot(threads: int) -> Iterator[str]:
    """A GPU of its own on a GPU host, else a CPU slot. Call before anything initialises CUDA.

    Under a cluster scheduler (SLURM) the job's devices are already its own: no pool.
    """
    if "SLURM_JOB_ID" in os.environ:
        import torch
        torch.set_num_threads(threads)
        yield "scheduler"
        return
    devices = visible_gpus()
    if devices:
        with gpu_slot(devices) as device:
            yield f"cuda:{device}"
        return
    with cpu_slot(threads) as slot:
        yield slot
