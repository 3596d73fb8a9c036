"""Devices for jobs: a distinct GPU per GPU job, bounded CPU concurrency for CPU jobs.

GPU pinning. Snakemake counts a `gpu` resource but never assigns devices
(snakemake issue #281). A GPU job takes the first free device from a pool of
file locks (one per visible device) and sets CUDA_VISIBLE_DEVICES to it before
CUDA is initialised; the kernel releases the lock when the job ends or dies, so a
crashed job never leaks its device.

CPU slots. Snakemake trusts `--cores`; a user passing `--cores 8` on a 2-core box
would run eight torch processes that thrash (on 2 cores generation fell from ~400
to ~9 completions/s). A CPU job of t threads holds t of `cpu_count` slots, all or none (same
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


def _try_lock(path: Path):
    """The open, exclusively locked file at `path`, or None if another process holds it."""
    fh = open(path, "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    return fh


@contextlib.contextmanager
def _hold(names: list[str], count: int, lock_dir: Path, poll_s: float, what: str) -> Iterator[list[str]]:
    """Block until `count` of `names` are locked at once (all or none: waiting holds nothing, so two jobs never
    deadlock on half each); yield them; unlock on exit (the kernel also unlocks when the process dies)."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    count = min(max(1, count), len(names))
    waited = False
    while True:
        held = []
        for name in names:
            fh = _try_lock(lock_dir / f"{name}.lock")
            if fh is not None:
                held.append((name, fh))
                if len(held) == count:
                    break
        if len(held) == count:
            break
        for _, fh in held:
            fh.close()
        if not waited:
            log.info("fewer than %d of %d %s slots free; waiting", count, len(names), what)
            waited = True
        time.sleep(poll_s)
    log.info("holding %s %s", what, "+".join(name for name, _ in held))
    try:
        yield [name for name, _ in held]
    finally:
        for _, fh in held:
            fh.close()


@contextlib.contextmanager
def cpu_slot(threads: int, lock_dir: Path = LOCK_DIR, poll_s: float = 0.5) -> Iterator[str]:
    """Hold `threads` of the machine's cpu_count CPU slots for the duration; sets torch's thread count."""
    import torch
    torch.set_num_threads(threads)
    names = [f"cpu{i}" for i in range(os.cpu_count() or 1)]
    with _hold(names, threads, lock_dir, poll_s, "CPU slot") as held:
        yield "+".join(held)


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
    with _hold([f"gpu{d}" for d in devices], 1, lock_dir, poll_s, "GPU") as (name,):
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
