"""generators/host_memory.py: malloc keeps large freed blocks for reuse (glibc only)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from generators import host_memory

pytestmark = pytest.mark.skipif(host_memory._glibc() is None, reason="mallopt thresholds are glibc's")

REPO = Path(__file__).resolve().parent.parent

# Run in a fresh interpreter: the allocator's state is process-wide, and what
# earlier tests left in this process's heap changes how many pages get faulted.
PROBE = """
import json, resource, torch
from generators import host_memory

def faults(count):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(count):
        block = torch.ones(16 * 2**20)  # 64 MiB, above glibc's 32 MiB adaptive mmap ceiling
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

assert host_memory.set_malloc_thresholds(*host_memory.GLIBC_STEADY_STATE)
default = faults(8)
assert host_memory.reuse_freed_memory()
faults(12)  # the heap grows to its working size first (a few cycles)
print(json.dumps({"default": default, "reused": faults(8)}))
"""


def test_reused_blocks_take_no_page_faults_unlike_glibc_defaults() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout)
    # 8 x 64 MiB of fresh 4 KiB pages is ~130,000 faults; reused blocks take few or none
    assert counts["default"] > 100_000
    assert counts["reused"] < counts["default"] / 3, counts
