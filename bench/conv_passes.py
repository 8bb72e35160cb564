"""Where a DCGAN training step's time goes on the CPU: each of the four 4x4
stride-2 convolutions of the 64x64 DCGAN (batch 64, channels-last, fp32),
timed pass by pass: forward, gradient to the input, gradient to the weights.

Prints one JSON document (and writes it with ``--out``): per layer and pass,
the median milliseconds and the GFLOP/s reached, next to this CPU's measured
fp32 matrix-product rate (``bench/machine.py``).

Why it exists: ``bench/gan_train.py`` stops at 1.27x its baseline on the CPU,
short of issue 3's 1.5x, with the step already at about 78 % of the
matrix-product rate. This benchmark shows which pass holds it there (the
weight gradient; see docs/gan.md, "CPU expectations") and measures the two same-maths
ways of computing that gradient with other kernels:

- ``weight_grad_im2col``: the input unfolded (im2col, channels-last) in chunks
  of 4 images, then one matrix product per chunk with the output gradient;
- ``weight_grad_swapped``: the weight gradient as a *forward* convolution
  (input and output gradient with batch and channels swapped, dilation 2).

Each pass, including the layout copies these two need, is timed alone.

Run: ``python bench/conv_passes.py --out bench/results/conv_passes-cpu.json``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import cpu_name, cpu_sgemm_gflops, median_seconds, write_report  # noqa: E402

BATCH = 64
# (in channels, out channels, input side) of the DCGAN discriminator's strided
# convolutions; the generator's transposed convolutions are the same products.
LAYERS = [(64, 128, 64), (128, 256, 32), (256, 512, 16), (512, 512, 8)]


def weight_grad_im2col(x: torch.Tensor, grad: torch.Tensor, chunk: int = 4) -> torch.Tensor:
    """dL/dW of a 4x4 stride-2 padding-1 convolution as matrix products of the
    unfolded input (channels-last rows of 16 x C) and the output gradient."""
    n, c = x.shape[:2]
    out_c, out_h, out_w = grad.shape[1:]
    padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))  # N, H+2, W+2, C
    grad_rows = grad.permute(0, 2, 3, 1)  # N, h, w, out_c
    weight = torch.zeros(out_c, 16 * c)
    for start in range(0, n, chunk):
        part = padded[start : start + chunk]
        s_n, s_h, s_w, s_c = part.stride()
        columns = part.as_strided((len(part), out_h, out_w, 4, 4, c), (s_n, 2 * s_h, 2 * s_w, s_h, s_w, s_c))
        weight.addmm_(grad_rows[start : start + chunk].reshape(-1, out_c).t(), columns.reshape(-1, 16 * c))
    return weight.view(out_c, 4, 4, c).permute(0, 3, 1, 2)


def weight_grad_swapped(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """dL/dW as a forward convolution: the padded input read as C images of N
    channels, convolved with the output gradient read as out_c filters of N
    channels, dilated by the stride."""
    inputs = F.pad(x, (1, 1, 1, 1)).transpose(0, 1).contiguous(memory_format=torch.channels_last)
    filters = grad.transpose(0, 1).contiguous(memory_format=torch.channels_last)
    return F.conv2d(inputs, filters, dilation=2).transpose(0, 1)


def measure_layer(c_in: int, c_out: int, side: int, repeats: int) -> dict:
    torch.manual_seed(0)
    x = torch.randn(BATCH, c_in, side, side).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(c_out, c_in, 4, 4) * 0.02).contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(F.conv2d(x, w, stride=2, padding=1))
    gflop = 2 * grad.numel() * c_in * 16 / 1e9  # the same for each of the three passes

    def backward(mask: list[bool]) -> Callable[[], object]:
        return lambda: torch.ops.aten.convolution_backward(grad, x, w, None, [2, 2], [1, 1], [1, 1], False, [0, 0], 1, mask)

    reference = backward([False, True, False])()[1]
    passes = {
        "forward": lambda: F.conv2d(x, w, stride=2, padding=1),
        "input_grad": backward([True, False, False]),
        "weight_grad": backward([False, True, False]),
        "weight_grad_im2col": lambda: weight_grad_im2col(x, grad),
        "weight_grad_swapped": lambda: weight_grad_swapped(x, grad),
    }
    result: dict = {"layer": f"{c_in}->{c_out} at {side}x{side}", "gflop_per_pass": round(gflop, 2)}
    for name, fn in passes.items():
        if name.startswith("weight_grad_"):  # same maths: the same gradient to float rounding
            error = (fn() - reference).abs().max() / reference.abs().max()
            assert error < 1e-4, f"{name} differs from oneDNN's weight gradient by {error:.1e}"
        seconds = median_seconds(fn, repeats, warmup=1)
        result[name] = {"ms": round(seconds * 1e3, 1), "gflop_per_s": round(gflop / seconds, 1)}
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sgemm = cpu_sgemm_gflops()
    layers = [measure_layer(*layer, repeats=args.repeats) for layer in LAYERS]
    report = {
        "benchmark": "DCGAN 4x4 stride-2 convolutions, batch 64, channels-last fp32: forward, input and weight gradients",
        "device": "cpu",
        "device_name": cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "cpu_sgemm_gflops": round(sgemm, 1),
        "layers": layers,
    }
    for layer in layers:
        for name, data in layer.items():
            if isinstance(data, dict):
                data["fraction_of_cpu_sgemm"] = round(data["gflop_per_s"] / sgemm, 3)
    write_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
