"""What the CPU under a benchmark can do at best, so that a result can say how
close to it the measured step runs.

The "peak" here is measured, not taken from a data sheet: the median rate of a
large fp32 matrix product (torch's BLAS) at the benchmark's thread count. It is
a practical ceiling, not a hard one (a single well-shaped convolution can come
within a few per cent of it or pass it slightly), so ``step FLOPs / this rate``
is roughly the shortest time a step of the same maths can take here.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch


def cpu_sgemm_gflops(n: int = 2048, repeats: int = 7) -> float:
    """Median GFLOP/s of an n×n×n fp32 matrix product on the CPU."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):  # warm up the BLAS threads and caches
        a @ b
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        rates.append(2 * n**3 / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


def median_seconds(fn: Callable[[], object], repeats: int, *, warmup: int = 0) -> float:
    """Median wall seconds of ``repeats`` calls of ``fn``, after ``warmup``
    untimed ones (oneDNN, for one, builds its kernels on the first call)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (e.g. "AMD EPYC"), for the
    device_name of CPU results; the platform's processor string elsewhere."""
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine() or "cpu"


def write_report(report: dict, out: Path | None) -> None:
    """Print a benchmark's JSON document and, with ``out``, write it there too
    (the form bench/results/ keeps)."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


def _nnpack_convolution_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """NNPACK's convolution counted as the direct convolution it computes:
    2 x outputs x (in channels x kernel taps). Its FFT and Winograd kernels do
    fewer multiplications than that, which is why they are used
    (generators/vqgan_clip/nnpack_conv.py), so a rate computed from this count
    is the same-maths rate and can pass the matrix-product "peak"."""
    batch, out_channels, out_h, out_w = out_shape
    return 2 * batch * out_channels * out_h * out_w * w_shape[1] * w_shape[2] * w_shape[3]


def count_flops(fn) -> float:
    """FLOPs of one call of ``fn`` (matrix products and convolutions, forward
    and backward, as torch.utils.flop_counter counts them, NNPACK's
    convolutions as the direct ones; elementwise ops are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

    nnpack = getattr(torch.ops.aten, "_nnpack_spatial_convolution", None)
    if nnpack is not None:
        try:
            register_flop_formula(nnpack)(_nnpack_convolution_flops)
        except RuntimeError:  # registered by an earlier call
            pass
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())
