"""Compute-only pre-training step benchmark: the eager reference against anymae's variants, side by side.

All variants live in one process and are timed in alternating repetitions (order rotated each time) on the
same in-memory batch; the table gives medians and the ratio to the reference. Peak memory is measured per
variant in a fresh subprocess (an RSS peak never goes down within a process).

    python -m benchmarks.step --arch vit_b16 --batch 8 --variants reference,optimized --results benchmarks/RESULTS.md
    python -m benchmarks.step --quick --results /tmp/results.md   # tiny model, seconds
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .common import (
    ARCHS,
    SHAPE_NAMES,
    VARIANTS,
    build_runner,
    device_name,
    has_reference,
    input_shape,
    machine_header,
    markdown_table,
    measure_memory,
    median,
    memory_probe,
    nominal_peak_flops,
    time_alternating,
    write_section,
)

DEFAULT_VARIANTS = "reference,anymae,optimized"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.arch, batch=args.batch, device=device, steps=args.steps)))
        return 0
    if args.quick:
        args.arch, args.batch, args.reps, args.steps, args.warmup = "tiny", 4, 3, 2, 1
    variants = args.variants.split(",")
    baseline = "reference" if has_reference(args.arch) else "anymae"  # video/audio: anymae, every option off
    variants = [baseline, *(v for v in variants if v not in ("reference", baseline))]
    mask_ratio = ARCHS[args.arch].get("mask_ratio", args.mask_ratio)
    torch.manual_seed(0)
    runners = [build_runner(name, args.arch, device=device, mask_ratio=mask_ratio) for name in variants]
    shape = input_shape(args.arch)

    def make_batch() -> torch.Tensor:
        return torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(0)).to(device)

    for bf16 in (False, True):
        nominal_peak_flops(device, bf16=bf16)  # CPU: a first GEMM measurement; the best one is used
    warmup_seconds: dict[str, float] = {}
    rates = time_alternating(
        runners, make_batch, device=device, reps=args.reps, steps=args.steps, warmup=args.warmup,
        warmup_seconds=warmup_seconds,
    )  # fmt: skip
    memory = {}
    if not args.no_memory:
        for r in runners:
            memory[r.name] = measure_memory(r.name, args.arch, batch=args.batch, device=args.device)

    rows, ref = [], median(rates[baseline])
    ref_mem = memory.get(baseline, {}).get("peak_rss_mib")
    for r in runners:
        rate = median(rates[r.name])
        bf16 = r.options.get("train.precision") == "bf16"
        peak, source = nominal_peak_flops(device, bf16=bf16)
        achieved = rate * r.flops_per_sample
        mem = memory.get(r.name, {})
        row = [
            f"{SHAPE_NAMES.get(args.arch, args.arch)}, batch {args.batch}, mask {mask_ratio}",
            r.name,
            f"{rate:.3f} ({min(rates[r.name]):.3f}-{max(rates[r.name]):.3f})",
            f"{rate / ref:.2f}x",
            f"{achieved / 1e9:.1f}",
            f"{100 * achieved / peak:.1f}% of {peak / 1e9:.0f} ({source})" if peak else "not measured",
            f"{mem['peak_rss_mib']:.0f}" if mem else "not measured",
            f"{mem['peak_rss_mib'] / ref_mem:.2f}x" if mem and ref_mem else "-",
            f"{warmup_seconds[r.name]:.0f}",
            _break_even(r, runners, rates, warmup_seconds, batch=args.batch, warmup=args.warmup),
        ]
        if "cuda_max_allocated_mib" in mem:
            row[6] += f" (CUDA {mem['cuda_max_allocated_mib']:.0f})"
        rows.append(row)
    header = [
        "config",
        "variant",
        "samples/s median (min-max)",
        f"vs {baseline}",
        "GFLOP/s",
        "MFU",
        "peak RSS MiB",
        f"memory vs {baseline}",
        f"{args.warmup} warm-up steps (s)",
        "steps to repay compile",
    ]
    table = markdown_table(header, rows)
    title = (
        f"### Compute-only step, {args.label} ({args.reps} alternating repetitions x {args.steps} steps, "
        f"{args.warmup} warm-up; {torch.get_num_threads()} threads)"
    )
    command = "python -m benchmarks.step " + " ".join(argv if argv is not None else sys.argv[1:])
    print(table)
    if args.results:
        machine = machine_header(device) + f"; {torch.get_num_threads()} torch threads"
        body = f"{title}\n\n{machine}\n\n`{command}`\n\n{table}\n"
        write_section(
            Path(args.results), machine=device_name(device), script=f"step-{args.arch}-{args.label}", markdown=body
        )
    return 0


def _break_even(
    runner, runners, rates: dict[str, list[float]], warmup_seconds: dict[str, float], *, batch: int, warmup: int
) -> str:
    """For a compiled variant, the steps after which its build time is repaid by its faster steps, against the
    same variant without ``+compile``; "-" otherwise, "never" when the compiled steps are not faster."""
    if not runner.name.endswith("+compile"):
        return "-"
    eager = runner.name.removesuffix("+compile")
    if eager not in warmup_seconds:
        return "-"
    step_compiled, step_eager = batch / median(rates[runner.name]), batch / median(rates[eager])
    build = (warmup_seconds[runner.name] - warmup * step_compiled) - (warmup_seconds[eager] - warmup * step_eager)
    saving = step_eager - step_compiled
    return f"{max(build, 0.0) / saving:.0f}" if saving > 0 else "never"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.step", description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="vit_b16", choices=sorted(ARCHS))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated, from: {', '.join(VARIANTS)}")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--reps", type=int, default=5, help="alternating repetitions (medians over these)")
    p.add_argument("--steps", type=int, default=2, help="steps per repetition")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-variant memory subprocesses")
    p.add_argument("--results", help="RESULTS.md to update (this machine's block of this arch and label is replaced)")
    p.add_argument("--label", default="main", help="names the RESULTS.md block, so that several runs coexist")
    p.add_argument("--quick", action="store_true", help="tiny model, 3 x 2 steps: checks the harness in seconds")
    p.add_argument("--memory-probe", metavar="VARIANT", help=argparse.SUPPRESS)
    return p


if __name__ == "__main__":
    raise SystemExit(main())
