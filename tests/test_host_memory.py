"""generators/host_memory.py: malloc keeps large freed blocks for reuse (glibc only)."""

from __future__ import annotations

import resource

import pytest
import torch

from generators import host_memory

pytestmark = pytest.mark.skipif(host_memory._glibc() is None, reason="mallopt thresholds are glibc's")


def _page_faults_for_allocations(count: int) -> int:
    """Minor page faults taken by ``count`` cycles of allocating, filling and freeing 64 MiB."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(count):
        block = torch.ones(16 * 2**20)  # 64 MiB, above glibc's 32 MiB adaptive mmap ceiling
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_reused_blocks_take_no_page_faults_unlike_glibc_defaults() -> None:
    try:
        assert host_memory.set_malloc_thresholds(*host_memory.GLIBC_STEADY_STATE)
        default = _page_faults_for_allocations(8)
        assert host_memory.reuse_freed_memory()
        _page_faults_for_allocations(12)  # the heap grows to its working size first (a few cycles)
        reused = _page_faults_for_allocations(8)
        # 8 x 64 MiB of fresh 4 KiB pages is ~130,000 faults; reused blocks take few or none
        assert default > 100_000
        assert reused < default / 3
    finally:
        host_memory.reuse_freed_memory()
