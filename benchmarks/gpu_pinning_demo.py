"""Two GPU jobs at once through vhack.resources.compute_slot: each logs the device it got and when.

On an N-GPU host the jobs run side by side on distinct devices; on a 1-GPU host the second waits
for the first (no two jobs ever share a device). Usage: python benchmarks/gpu_pinning_demo.py [jobs] [seconds]
"""

import os
import subprocess
import sys
import time

JOB = """
import os, sys, time, torch
from vhack.resources import compute_slot
t0 = time.time()
with compute_slot(4) as slot:
    got = time.time()
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    while time.time() - got < float(sys.argv[2]):
        x = (x @ x).clamp_(-1, 1)
    torch.cuda.synchronize()
    print(f"job {sys.argv[1]}: slot {slot} CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']} "
          f"{torch.cuda.get_device_name()} waited {got - t0:.1f}s ran {time.time() - got:.1f}s "
          f"start {got:.1f} end {time.time():.1f}", flush=True)
"""


def main() -> None:
    jobs, seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 2, sys.argv[2] if len(sys.argv) > 2 else "10"
    t0 = time.time()
    procs = [subprocess.Popen([sys.executable, "-c", JOB, str(i), seconds]) for i in range(jobs)]
    for p in procs:
        p.wait()
    print(f"{jobs} jobs of {seconds}s on {os.environ.get('CUDA_VISIBLE_DEVICES', 'all')} devices: "
          f"wall {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
