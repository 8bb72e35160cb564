"""The helpers the benchmarks use to put a measured rate next to the machine's best."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import count_flops, cpu_sgemm_gflops  # noqa: E402


def test_count_flops_counts_forward_and_backward_products() -> None:
    a = torch.randn(8, 16, requires_grad=True)
    b = torch.randn(16, 4)
    assert count_flops(lambda: a @ b) == 2 * 8 * 16 * 4
    # backward adds the product for a's gradient only (b needs none)
    assert count_flops(lambda: (a @ b).sum().backward()) == 2 * (2 * 8 * 16 * 4)
    conv = torch.nn.Conv2d(3, 5, 3, bias=False)
    x = torch.randn(2, 3, 10, 10)
    assert count_flops(lambda: conv(x)) == 2 * 2 * 5 * 8 * 8 * 3 * 9


def test_cpu_sgemm_rate_is_a_positive_rate() -> None:
    rate = cpu_sgemm_gflops(n=128, repeats=3)
    assert 0.1 < rate < 1e5
