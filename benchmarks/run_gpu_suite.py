"""The GPU suite, sized to finish within 10 minutes on one H100:

1. compute-only ViT-B/16 (batch 128): reference fp32 vs optimized fp32 / bf16 / bf16 + compile, with MFU;
2. compute-only ViT-L/16 (batch 64): reference vs optimized bf16, with MFU;
3. end-to-end ViT-B/16 from JPEG files: CPU decode (anymae's loader) and nvJPEG decode on the GPU;
4. the data pipeline alone (per-worker CPU decode rates and the GPU decoder's rate);
5. compute-only VideoMAE-B (16x224, tube 0.9) and AudioMAE-B (1024x128, 0.8, local decoder) in bf16, against anymae
   with every option off (the issues' GPU checks for video and audio);
6. the tests marked ``slow`` (torch.compile against eager), which the default test command leaves out.

    python -m benchmarks.run_gpu_suite --results benchmarks/RESULTS.md
    python -m benchmarks.run_gpu_suite --quick --results /tmp/r.md   # dry path: tiny sizes, runs on a CPU
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

from . import data, e2e, step


def slow_tests(argv: list[str]) -> int:
    """``pytest -m slow`` in a fresh process (the compile tests; ``argv`` is ignored: they write no results)."""
    root = Path(__file__).resolve().parents[1]
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "slow", str(root / "tests")], cwd=root
    ).returncode


def plan(quick: bool, memory: bool) -> list[tuple[str, object, list[str]]]:
    no_memory = [] if memory else ["--no-memory"]
    if quick:
        return [
            ("step tiny", step.main, ["--quick", "--variants", "reference,optimized,optimized+bf16", *no_memory]),
            ("e2e tiny", e2e.main, ["--quick"]),
            ("data tiny", data.main, ["--quick"]),
        ]
    common = ["--reps", "5", "--steps", "5", "--warmup", "2", *no_memory]
    return [
        (
            "step ViT-B/16",
            step.main,
            [
                "--arch",
                "vit_b16",
                "--batch",
                "128",
                "--variants",
                "reference,optimized,optimized+bf16,optimized+bf16+compile",
                *common,
            ],
        ),
        (
            "step ViT-L/16",
            step.main,
            [
                "--arch",
                "vit_l16",
                "--batch",
                "64",
                "--variants",
                "reference,optimized+bf16",
                *common,
            ],
        ),
        (
            "e2e ViT-B/16",
            e2e.main,
            [
                "--arch",
                "vit_b16",
                "--batch",
                "128",
                "--optimized",
                "optimized+bf16",
                "--workers",
                "12",
                "--prefetch",
                "4",
                "--files",
                "512",
                "--reps",
                "3",
                "--steps",
                "8",
            ],
        ),
        ("data", data.main, ["--files", "256"]),
        (
            "step VideoMAE-B",
            step.main,
            ["--arch", "videomae_b", "--batch", "32", "--variants", "anymae,optimized+bf16", *common],
        ),
        (
            "step AudioMAE-B",
            step.main,
            ["--arch", "audiomae_b", "--batch", "64", "--variants", "anymae,optimized+bf16", *common],
        ),
        ("slow tests", slow_tests, []),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run_gpu_suite", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks every script on any machine")
    p.add_argument("--results", help="RESULTS.md to update")
    p.add_argument("--no-memory", action="store_true", help="skip the per-variant peak-memory subprocesses")
    args = p.parse_args(argv)
    if not args.quick and not torch.cuda.is_available():
        print("not measured: no CUDA (use --quick for the dry path)")
        return 1
    results = ["--results", args.results] if args.results else []
    for title, run, part_args in plan(args.quick, memory=not args.no_memory):
        started = time.perf_counter()
        print(f"== {title}", flush=True)
        code = run([*part_args, *results])
        print(f"== {title}: {time.perf_counter() - started:.0f} s", flush=True)
        if code:
            return code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
