"""GPU pinning and CPU slots: distinct devices for concurrent jobs, released when a job ends or dies."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from vhack.resources import gpu_slot, visible_gpus

HOLDER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from vhack.resources import gpu_slot
    lock_dir, hold, out = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    with gpu_slot(["0", "1"], lock_dir=lock_dir, poll_s=0.05) as device:
        start = time.time()
        seen = os.environ["CUDA_VISIBLE_DEVICES"]
        time.sleep(hold)
        Path(out).write_text(json.dumps({"device": device, "env": seen, "start": start, "end": time.time()}))
""")


def spawn(tmp_path, name, hold):
    out = tmp_path / f"{name}.json"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "locks"), str(hold), str(out)])
    return proc, out


def test_visible_gpus_from_env():
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []


def test_concurrent_jobs_get_distinct_devices(tmp_path):
    jobs = [spawn(tmp_path, f"job{i}", 0.6) for i in range(4)]
    for proc, _ in jobs:
        assert proc.wait(timeout=30) == 0
    records = [json.loads(out.read_text()) for _, out in jobs]
    assert all(r["env"] == r["device"] for r in records)
    assert {r["device"] for r in records} == {"0", "1"}
    for i, a in enumerate(records):           # no two jobs hold the same device at the same time
        for b in records[i + 1:]:
            if a["device"] == b["device"]:
                assert a["end"] <= b["start"] or b["end"] <= a["start"]
    starts = sorted(r["start"] for r in records)
    assert starts[2] - starts[0] >= 0.5        # the third job waited for a device


def test_device_released_when_job_dies(tmp_path):
    holders = [spawn(tmp_path, f"holder{i}", 30) for i in range(2)]
    time.sleep(1.5)                             # both devices taken
    holders[0][0].send_signal(signal.SIGKILL)
    holders[0][0].wait()
    waiter, out = spawn(tmp_path, "waiter", 0.1)
    assert waiter.wait(timeout=20) == 0
    assert json.loads(out.read_text())["device"] in {"0", "1"}
    holders[1][0].kill()
    holders[1][0].wait()


def test_env_restored_after_slot(tmp_path):
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    with gpu_slot(["7"], lock_dir=tmp_path) as device:
        assert device == "7" and os.environ["CUDA_VISIBLE_DEVICES"] == "7"
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == before


def test_cpu_slots_count_threads_and_wait_holding_none(tmp_path, monkeypatch):
    import threading

    from vhack import resources
    monkeypatch.setattr(resources.os, "cpu_count", lambda: 2)

    def free(name):
        fh = resources._try_lock(tmp_path / f"{name}.lock")
        if fh is not None:
            fh.close()
        return fh is not None
    with resources.cpu_slot(1, lock_dir=tmp_path) as one:
        with resources.cpu_slot(1, lock_dir=tmp_path) as other:
            assert {one, other} == {"cpu0", "cpu1"}
    with resources.cpu_slot(2, lock_dir=tmp_path) as both:
        assert both == "cpu0+cpu1" and not free("cpu0") and not free("cpu1")
    blocker = resources._try_lock(tmp_path / "cpu1.lock")
    got, release = [], threading.Event()

    def two_thread_job():
        with resources.cpu_slot(2, lock_dir=tmp_path, poll_s=0.02) as slot:
            got.append(slot)
            release.wait(5)
    waiter = threading.Thread(target=two_thread_job)
    waiter.start()
    time.sleep(0.3)
    assert not got and free("cpu0")          # waiting for cpu1, the 2-thread job holds no slot meanwhile
    blocker.close()
    for _ in range(250):
        if got:
            break
        time.sleep(0.02)
    assert got == ["cpu0+cpu1"] and not free("cpu0")
    release.set()
    waiter.join(timeout=5)
    assert free("cpu0") and free("cpu1")
