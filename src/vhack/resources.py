"""Keep concurrent CPU torch jobs from oversubscribing the machine.

Snakemake trusts `--cores`; a user passing `--cores 8` on a 2-core box would run
eight torch processes that thrash (on 2 cores generation fell from ~400 to ~9
completions/s). A job takes one of `cpu_count // threads` slots (file locks, so
it also holds across separate snakemake invocations) before heavy work.
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
LOCK_DIR = Path(os.environ.get("VHACK_LOCK_DIR", Path(tempfile.gettempdir()) / "vhack-cpu-slots"))


@contextlib.contextmanager
def cpu_slot(threads: int, lock_dir: Path = LOCK_DIR, poll_s: float = 0.5) -> Iterator[int]:
    """Hold one CPU slot for the duration; sets torch's thread count to `threads`."""
    import torch
    torch.set_num_threads(threads)
    slots = max(1, (os.cpu_count() or 1) // max(1, threads))
    lock_dir.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        for i in range(slots):
            fh = open(lock_dir / f"slot{i}.lock", "w")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                continue
            try:
                if waited:
                    log.info("got CPU slot %d of %d", i, slots)
                yield i
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
                fh.close()
            return
        if not waited:
            log.info("all %d CPU slots busy; waiting", slots)
            waited = True
        time.sleep(poll_s)


@contextlib.contextmanager
def compute_slot(threads: int) -> Iterator[None]:
    """A CPU slot when running on CPU; on a GPU host the device is the resource Snakemake counts."""
    import torch
    if torch.cuda.is_available():
        yield
        return
    with cpu_slot(threads):
        yield
