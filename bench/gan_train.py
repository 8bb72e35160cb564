"""Training throughput of DCGAN 64x64, batch 64: a plain fp32 eager loop (the
baseline) against faster settings of the same maths, measured in one process.

Prints one JSON document (and writes it with ``--out``): device, torch version,
threads, images/s and peak memory per variant, and the speedup over the baseline.

Variants (each keeps the maths of a DCGAN step: same networks, losses, Adam;
each adds one change to the one before it):
- ``baseline``: NCHW tensors, generator forward for the D step recorded by
  autograd and then detached (the common ``G(z).detach()`` idiom), default Adam,
  glibc's malloc at its steady-state thresholds (set explicitly, because the
  variants share one process and the allocator setting is process-wide).
- ``no_grad_fake``: the D step's generator forward under ``torch.no_grad()``
  (identical values, no graph kept).
- ``reuse_memory``: malloc keeps freed blocks for the next step instead of
  unmapping them (``generators/host_memory.py``): no page faults per step.
- ``frozen_d``: D's parameters do not require grad during the G step, so its
  backward skips D's weight gradients, which the G step never uses.
- ``channels_last``: + NHWC memory layout for weights and activations, which
  oneDNN's convolutions prefer on x86.
- ``fused_adam``: + ``Adam(fused=True)`` (one kernel per parameter group).
- ``compiled``: + ``torch.compile`` (Inductor fuses batch norm, activations and
  the losses into C++ loops). Compile time is reported in ``warmup_s``.

On a GPU (when one is present) the same variants plus, building on
``fused_adam``: ``bf16`` (bf16 autocast), ``bf16_compiled`` (+ ``torch.compile``)
and ``bf16_graphs`` (+ CUDA graphs, ``torch.compile(mode="reduce-overhead")``:
a step of small kernels is bound by launch overhead, which graph replay removes).
``bf16_step_graph`` builds on ``bf16`` instead (eager kernels, channels-last)
and captures the *whole* step, both backward passes and both Adam updates
included, as one ``torch.cuda.CUDAGraph``: one launch a step. Adam runs with
``capturable=True`` (its step counts live on the GPU) and autocast with its
weight-cast cache off, as graph capture requires; the noise is drawn inside
the graph from the default generator, which replays advance.

On the CPU each variant also reports the FLOPs of its step (convolutions and
matrix products, ``torch.utils.flop_counter``) and the rate it reached, against
the CPU's measured fp32 matrix-product rate (``bench/machine.py``): roughly how
far a variant is from the fastest that same-maths step could run here.

Run: ``python bench/gan_train.py --steps 6 --out bench/results/gan_train-cpu.json``
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import count_flops, cpu_name, cpu_sgemm_gflops, write_report  # noqa: E402
from generators import host_memory  # noqa: E402
from generators.gan.models import ModelSpec, build_discriminator, build_generator  # noqa: E402

SPEC = ModelSpec(arch="dcgan", img_size=64, z_dim=100, width=64, max_width=512)
BATCH = 64


ORDER = ["baseline", "no_grad_fake", "reuse_memory", "frozen_d", "channels_last", "fused_adam", "compiled"]


GPU_ORDER = ["bf16", "bf16_compiled", "bf16_graphs", "bf16_step_graph"]  # see features()


def features(variant: str) -> set[str]:
    """The changes a variant makes: its own and those of every variant before it
    in ``ORDER`` (or, for the GPU-only ones, in ``GPU_ORDER`` after ``fused_adam``;
    ``bf16_step_graph`` builds on ``bf16`` alone)."""
    if variant == "bf16_step_graph":  # eager bf16 kernels in one whole-step graph, not the compiled path
        return features("bf16") | {"step_graph"}
    if variant in GPU_ORDER:
        extra = {"bf16_compiled": "compiled", "bf16_graphs": "graphs"}
        on = set(ORDER[1 : ORDER.index("fused_adam") + 1]) | {"bf16"} | {extra[v] for v in GPU_ORDER[1 : GPU_ORDER.index(variant) + 1]}
        # Inductor chooses its own layouts, and channels-last weights trip a stride
        # check in its convolution backward (torch 2.11, H100): compiled GPU steps are NCHW
        return on - {"channels_last"} if "compiled" in on else on
    return set(ORDER[1 : ORDER.index(variant) + 1])


def make_step(variant: str, device: str):
    """Build networks and optimisers for ``variant``; return a function doing one DCGAN step."""
    on = features(variant)
    torch.manual_seed(0)
    G, D = build_generator(SPEC).to(device), build_discriminator(SPEC).to(device)
    if "channels_last" in on:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    fused = "fused_adam" in on or None
    capturable = "step_graph" in on
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999), fused=fused, capturable=capturable)
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999), fused=fused, capturable=capturable)
    g_fwd, d_fwd = G, D
    if "compiled" in on or "graphs" in on:
        mode = "reduce-overhead" if "graphs" in on else None
        g_fwd, d_fwd = torch.compile(G, mode=mode), torch.compile(D, mode=mode)
    real = torch.rand(BATCH, 3, 64, 64, device=device) * 2 - 1
    if "channels_last" in on:
        real = real.contiguous(memory_format=torch.channels_last)
    ones, zeros = torch.ones(BATCH, device=device), torch.zeros(BATCH, device=device)
    # Graph capture needs autocast's cache of cast weights off: a cached cast would be replayed stale.
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled="bf16" in on, cache_enabled=not capturable)
    thresholds = host_memory.REUSE if "reuse_memory" in on else host_memory.GLIBC_STEADY_STATE

    def step() -> None:
        host_memory.set_malloc_thresholds(*thresholds)
        if "graphs" in on:
            torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are no longer used
        z = torch.randn(BATCH, SPEC.z_dim, device=device)
        with autocast:
            if "no_grad_fake" in on:
                with torch.no_grad():
                    fake = g_fwd(z)
            else:
                fake = g_fwd(z).detach()
            loss_d = (F.binary_cross_entropy_with_logits(d_fwd(real).float(), ones) + F.binary_cross_entropy_with_logits(d_fwd(fake).float(), zeros)) / 2
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        D.requires_grad_("frozen_d" not in on)
        with autocast:
            loss_g = F.binary_cross_entropy_with_logits(d_fwd(g_fwd(torch.randn(BATCH, SPEC.z_dim, device=device))).float(), ones)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        D.requires_grad_(True)

    return capture_whole_step(step) if "step_graph" in on else step


def capture_whole_step(step):
    """Record ``step`` once as a CUDA graph and return a function that replays it.
    Warm-up runs on a side stream first, as torch.cuda.graphs asks, so that
    cuDNN and the allocator have settled before the capture."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(variants: list[str], device: str, steps: int, rounds: int, args_warmup: int = 1) -> dict:
    """Warm each variant up, then time ``steps`` steps per variant, interleaving
    the variants over ``rounds`` rounds so that load from other processes on a
    shared machine hits all of them alike; report the median round."""
    results: dict[str, dict] = {}
    steppers = {}
    for variant in variants:
        before = time.perf_counter()
        try:
            steppers[variant] = make_step(variant, device)
            for _ in range(args_warmup):  # warm-up (and compilation)
                steppers[variant]()
            sync(device)
            results[variant] = {"warmup_s": round(time.perf_counter() - before, 2), "rates": []}
            if not features(variant) & {"compiled", "graphs", "step_graph"}:  # the counter sees eager ops only
                results[variant]["gflop_per_step"] = round(count_flops(steppers[variant]) / 1e9, 1)
        except Exception as exc:  # e.g. no C++ compiler for torch.compile
            results[variant] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            steppers.pop(variant, None)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(rounds):
        for variant, step in steppers.items():
            sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                step()
            sync(device)
            results[variant]["rates"].append(steps * BATCH / (time.perf_counter() - start))
            results[variant]["peak_rss_mb_after"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    for variant in steppers:
        rates = results[variant].pop("rates")
        results[variant]["images_per_s"] = round(statistics.median(rates), 2)
        results[variant]["images_per_s_rounds"] = [round(r, 2) for r in rates]
        if "gflop_per_step" in results[variant]:
            results[variant]["gflop_per_s"] = round(results[variant]["gflop_per_step"] * results[variant]["images_per_s"] / BATCH, 1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="steps per variant per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", default=",".join(ORDER[:-1]), help=f"comma-separated, from {ORDER} (compiled needs a C++ compiler and minutes); on a GPU {GPU_ORDER} are added")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    if args.device == "cuda":
        variants += [v for v in GPU_ORDER if v not in variants]
    sgemm = cpu_sgemm_gflops() if args.device == "cpu" else None
    results = measure(variants, args.device, args.steps, args.rounds, args.warmup)
    if sgemm:
        for data in results.values():
            if "gflop_per_s" in data:
                data["fraction_of_cpu_sgemm"] = round(data["gflop_per_s"] / sgemm, 3)
    base = results["baseline"]["images_per_s"]
    for variant, data in results.items():
        if "images_per_s" in data:
            data["speedup"] = round(data["images_per_s"] / base, 3)
    best = max((v for v in results if "images_per_s" in results[v]), key=lambda v: results[v]["images_per_s"])
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else cpu_name()
    report = {
        "benchmark": "DCGAN 64x64 training step (D step + G step), batch 64, fp32",
        "device": args.device,
        "device_name": device_name,
        "cpu_count": torch.get_num_threads() if args.device == "cpu" else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "steps_per_round": args.steps,
        "warmup_steps": args.warmup,
        "rounds": args.rounds,
        "cpu_sgemm_gflops": round(sgemm, 1) if sgemm else None,
        "baseline_images_per_s": base,
        "best_variant": best,
        "best_images_per_s": results[best]["images_per_s"],
        "speedup": results[best]["speedup"],
        "peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if args.device == "cuda" else round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "variants": results,
    }
    write_report(report, args.out)


if __name__ == "__main__":
    main()
