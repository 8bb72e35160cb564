"""Benchmark of the VQGAN+CLIP step: seconds per iteration and peak memory.

Uses the real architectures (taming's vqgan_imagenet_f16_16384 config, open_clip
ViT-B-32) at random initialisation: the arithmetic per step is the same as with
trained weights. In the same process it times a plain fp32 eager version of the
same loop (per-crop cutout loop, NCHW, no autocast, no compile, glibc malloc's
default thresholds) as the baseline,
and prints one JSON document (also written to --out).

    python bench/vqgan_clip.py                                  # all sizes/cutouts
    python bench/vqgan_clip.py --sizes 256 --cutouts 32 --out bench/results/vqgan_clip-cpu.json

On a GPU (and on the CPU with --flops) it also reports the FLOPs of one step
(torch.utils.flop_counter) and the achieved TFLOP/s, against the GPU's data-sheet
peak or the CPU's measured fp32 matrix-product rate (bench/machine.py). NNPACK's
fast convolutions (the CPU fast path's decoder) count as the direct convolutions
they compute, so a fast-path CPU rate can pass the matrix-product rate.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import count_flops, cpu_name, cpu_sgemm_gflops, write_report  # noqa: E402
from generators import host_memory  # noqa: E402
from generators.vqgan_clip.clip_model import load_clip  # noqa: E402
from generators.vqgan_clip.cutouts import CutoutSettings  # noqa: E402
from generators.vqgan_clip.optimise import RunSettings, optimise  # noqa: E402
from generators.vqgan_clip.plugin import estimate_memory  # noqa: E402
from generators.vqgan_clip.prompts import parse_prompts  # noqa: E402
from generators.vqgan_clip.vqgan import IMAGENET_F16_16384, VQGAN  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets.
GPU_PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0, "T4": 65.0}

MODES = {
    # name: RunSettings fields. "rewrites" "auto" means on for a CPU run, off on CUDA;
    # the last mode measures the CPU's same-maths rewrites on a GPU.
    "baseline": {"fast": False, "precision": "fp32", "compile": "off", "rewrites": "off"},
    "fast": {"fast": True, "precision": "auto", "compile": "off", "rewrites": "auto"},
    "fast+compile": {"fast": True, "precision": "auto", "compile": "on", "rewrites": "auto"},
    "fast+compile+rewrites": {"fast": True, "precision": "auto", "compile": "on", "rewrites": "on"},
}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({torch.get_num_threads()} threads)"


class PeakRSS:
    """Samples the process's resident memory while a run is going (CPU peak)."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    @staticmethod
    def rss() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def __enter__(self):
        self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def step_flops(vqgan, perceptor, prompts, settings, device) -> float:
    """FLOPs of one loop iteration: a 2-iteration run minus a 1-iteration run,
    so that the prompt embedding and the final decode and scoring, which every
    run does once, are not counted as part of a step."""

    def run(iterations: int) -> float:
        short = RunSettings(**{**settings.__dict__, "iterations": iterations, "compile": "off"})
        return count_flops(lambda: optimise(vqgan, perceptor, prompts, short, seed=0, device=device))

    return run(2) - run(1)


def run_one(vqgan, perceptor, prompts, size, cutouts, mode, warmup, timed, device) -> dict:
    fast = MODES[mode]["fast"]
    settings = RunSettings(width=size, height=size, iterations=warmup + timed, stop=None,
                           cutouts=CutoutSettings(count=cutouts), **MODES[mode])
    stamps: list[float] = []

    def progress(step, total, info):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if not fast:
        # The fast path makes malloc keep freed blocks (process-wide, see generators/host_memory.py);
        # the baseline runs with glibc's own steady-state thresholds, even after a fast run.
        host_memory.set_malloc_thresholds(*host_memory.GLIBC_STEADY_STATE)
    start = time.perf_counter()
    with PeakRSS() as rss:
        optimise(vqgan, perceptor, prompts, settings, seed=0, device=device, progress=progress)
    steps = [b - a for a, b in zip([start] + stamps[:-1], stamps)]
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss.peak
    return {
        "size": size, "cutouts": cutouts, "mode": mode,
        "median_s_per_iteration": statistics.median(steps[warmup:]),
        "first_iteration_s": steps[0],
        "timed_iterations": len(steps[warmup:]),
        "steps_s": [round(s, 3) for s in steps[warmup:]],
        "peak_memory_bytes": int(peak),
        "peak_memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process RSS (includes weights)",
        "estimated_memory_bytes": estimate_memory(settings, device),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 480])
    parser.add_argument("--cutouts", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--modes", nargs="+", default=None, choices=sorted(MODES),
                        help="default: baseline fast (+ fast+compile, fast+compile+rewrites on CUDA)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--timed", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=1, help="alternate the modes this many rounds")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--flops", action="store_true", help="count FLOPs per step (default on CUDA)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    modes = args.modes or (["baseline", "fast", "fast+compile", "fast+compile+rewrites"] if device.type == "cuda" else ["baseline", "fast"])
    torch.manual_seed(0)
    vqgan = VQGAN(IMAGENET_F16_16384).eval().requires_grad_(False)
    perceptor = load_clip("ViT-B-32", None, device)
    prompts = parse_prompts("coral reef:1 | blurry:-0.5")
    sgemm = cpu_sgemm_gflops() if device.type == "cpu" else None
    results = []
    for size in args.sizes:
        for cutouts in args.cutouts:
            rows: dict[str, dict] = {}
            # Modes alternate for --repeat rounds so that a busy shared machine
            # slows them alike; the median is over all timed steps of a mode.
            for _ in range(args.repeat):
                for mode in modes:
                    row = run_one(vqgan, perceptor, prompts, size, cutouts, mode, args.warmup, args.timed, device)
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    if mode in rows:
                        rows[mode]["steps_s"] += row["steps_s"]
                        rows[mode]["peak_memory_bytes"] = max(rows[mode]["peak_memory_bytes"], row["peak_memory_bytes"])
                    else:
                        rows[mode] = row
            for row in rows.values():
                row["median_s_per_iteration"] = statistics.median(row["steps_s"])
                row["timed_iterations"] = len(row["steps_s"])
                results.append(row)
            base = rows.get("baseline")
            for mode, row in rows.items():
                if base and mode != "baseline":
                    row["speedup_vs_baseline"] = base["median_s_per_iteration"] / row["median_s_per_iteration"]
            if args.flops or device.type == "cuda":
                for mode, row in rows.items():
                    # per mode: on a CPU the fast path's folded upsampling does fewer multiply-adds
                    settings = RunSettings(width=size, height=size, stop=None, cutouts=CutoutSettings(count=cutouts),
                                           fast=MODES[mode]["fast"], rewrites=MODES[mode]["rewrites"])
                    flops = step_flops(vqgan, perceptor, prompts, settings, device)
                    row["flops_per_iteration"] = flops
                    row["achieved_tflops"] = flops / row["median_s_per_iteration"] / 1e12
                    peak = next((v for k, v in GPU_PEAK_BF16_TFLOPS.items() if k in device_name(device)), None)
                    if peak:
                        row["peak_bf16_tflops"] = peak
                        row["fraction_of_peak"] = row["achieved_tflops"] / peak
                    if sgemm:
                        row["fraction_of_cpu_sgemm"] = row["achieved_tflops"] * 1e3 / sgemm
    report = {
        "benchmark": "vqgan_clip step (decode + cutouts + CLIP + backward + Adam)",
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_sgemm_gflops": sgemm,
        "vqgan_config": "vqgan_imagenet_f16_16384 (random init)",
        "clip": "ViT-B-32 (random init)",
        "warmup": args.warmup,
        "repeat": args.repeat,
        "modes": {m: MODES[m] for m in modes},
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "results": results,
    }
    write_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
