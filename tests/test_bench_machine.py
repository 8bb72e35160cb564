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


def test_count_flops_counts_nnpack_convolutions_as_the_direct_ones() -> None:
    """The CPU fast path's decoder runs NNPACK; uncounted, its FLOPs would vanish from the bench."""
    from generators.vqgan_clip import nnpack_conv

    if not nnpack_conv.available():
        import pytest

        pytest.skip("this torch build has no NNPACK")
    x, weight = torch.randn(1, 16, 64, 64), torch.randn(8, 16, 3, 3)
    direct = count_flops(lambda: torch.nn.functional.conv2d(x, weight, padding=1))
    assert count_flops(lambda: nnpack_conv.conv3x3(x, weight, None)) == direct == 2 * 8 * 64 * 64 * 16 * 9


def test_store_growth_fills_a_store_a_daemon_would_leave(tmp_path) -> None:
    from bench.store_growth import fill
    from bot.daemon import RUNS_KEPT
    from bot.store import Store

    store = Store(tmp_path / "state")
    counts = fill(store, days=3, per_day=2)
    posts = store.posts()
    assert counts["posts"] == len(posts) == 6 and counts["runs"] == len(store.rows("runs")) == RUNS_KEPT
    assert all(post["status"] == "published" and post["engagement"] for post in posts)
    assert counts["snapshots"] == sum(len(post["engagement"]) for post in posts)


def test_cpu_name_reads_the_model_name(tmp_path, monkeypatch) -> None:
    import builtins

    from bench import machine

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t: fpu\n")
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: real_open(cpuinfo if path == "/proc/cpuinfo" else path, *a, **k))
    assert machine.cpu_name() == "Test CPU 9000"


def test_the_other_weight_gradients_of_conv_passes_are_the_same_maths() -> None:
    """bench/conv_passes.py compares oneDNN's weight gradient with two other
    ways to compute it; they must be the same gradient, at any shape."""
    import torch.nn.functional as F

    from bench.conv_passes import weight_grad_im2col, weight_grad_swapped

    torch.manual_seed(0)
    x = torch.randn(6, 5, 12, 12).contiguous(memory_format=torch.channels_last)
    w = torch.randn(7, 5, 4, 4, requires_grad=True)
    out = F.conv2d(x, w, stride=2, padding=1)
    grad = torch.randn_like(out)
    (expected,) = torch.autograd.grad(out, w, grad)
    for compute in (lambda: weight_grad_im2col(x, grad, chunk=4), lambda: weight_grad_swapped(x, grad)):
        assert torch.allclose(compute(), expected, atol=1e-4, rtol=1e-4)
