"""Does an MAE start beat random init for ``anymae segment`` from a few labels? A study through the project's own
commands: an MAE pre-trained without labels on a large pool of generated images, then the same segmentation recipe
(``demo_image_segment``) from a few dozen labelled images, from the MAE and from random init, the same number of
steps each, scored on the 100 held-out images of the set (backgrounds from photographs no training image uses).

Two sets from :mod:`anymae.modalities.image.segment_demo`, each with 400 labelled training images, 100 held-out
ones and an unlabelled pool drawn from the training photographs: ``shapes`` (the demo set: the class is the outline)
and ``textures`` (the class is the fill pattern, whatever the outline)::

    python -m benchmarks.transfer_study data transfer_study               # both sets, 10,000 unlabelled images each
    anymae pretrain demo_image preset=segment_pool                         # the MAE, on both pools: ~40 min
    python -m benchmarks.transfer_study segment transfer_study --variant shapes --labels 50 --steps 800 \\
        --start random --start runs/demo_image_segment_pool/checkpoint-0005.pt
    python -m benchmarks.transfer_study report transfer_study --results benchmarks/RESULTS.md

``segment`` runs ``anymae segment demo_image_segment`` once per ``--start`` (``random``, or a pre-training
checkpoint) with the first ``--labels`` training images (a list file), ``--steps`` optimizer steps (whole epochs:
the step count is rounded up to them) and a held-out check at every tenth of the run; ``--set key=value``
(repeatable) overrides the recipe (``--set segment.head=upernet --set segment.channels=64``). Each run appends a line
to ``ROOT/results.jsonl``: the last check (steps fixed in advance) and the best one (what the held-out curve would
pick, for both starts alike). ``report`` turns those lines into the table of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from anymae.modalities.image.segment_demo import VARIANTS, write_demo_segment

from .common import add_transfer_study_arguments, device_name, machine_header, markdown_table, write_section

BATCH = 8  # demo_image_segment's train.batch_size; the loader drops the last partial batch


def make_data(root: Path, *, unlabelled: int) -> None:
    """Both variants under ``root``, the labelled list files of :func:`labelled_list` and ``unlabelled.txt``."""
    pool = []
    for variant in VARIANTS:
        write_demo_segment(root / variant, variant=variant, num_unlabelled=unlabelled)
        pool += sorted(
            f"{variant}/images/unlabelled/{f.name}" for f in (root / variant / "images/unlabelled").iterdir()
        )
    (root / "unlabelled.txt").write_text("\n".join(pool) + "\n")
    print(f"wrote {', '.join(VARIANTS)} under {root}: 400 + 100 labelled and {unlabelled} unlabelled images each")


def labelled_list(root: Path, variant: str, labels: int) -> Path:
    """A list file of the first ``labels`` training pairs of ``variant`` (written next to the set)."""
    images = sorted((root / variant / "images/training").iterdir())[:labels]
    if len(images) < labels:
        raise SystemExit(f"{root / variant} has {len(images)} training images, fewer than --labels {labels}")
    path = root / variant / f"labelled-{labels}.txt"
    if path.exists():  # runs in parallel read it; the same arguments always list the same pairs
        return path
    path.write_text("".join(f"images/training/{f.name} annotations/training/{f.name}\n" for f in images))
    return path


def run_segment(
    root: Path, *, variant: str, labels: int, steps: int, start: str, overrides: list[str], tag: str
) -> dict[str, Any]:
    """One ``anymae segment`` run; its last and best held-out checks as a results line."""
    steps_per_epoch = labels // BATCH
    epochs = math.ceil(steps / steps_per_epoch)
    every = max(1, epochs // 10)
    origin = "random" if start == "random" else f"{Path(start).parent.name}-{Path(start).stem}"
    name = f"{variant}-{labels}-{tag}-{steps}-{origin}"
    out = root / "runs"
    if (out / name).exists():  # the trainer would write beside it, and its old metrics would be read
        raise SystemExit(f"{out / name} exists: remove it, or give this regime another --tag")
    command = [
        sys.executable, "-m", "anymae.core.cli", "segment", "demo_image_segment",
        f"data.root={root / variant}", f"data.train_list={labelled_list(root, variant, labels).name}",
        f"data.classes=[{','.join(VARIANTS[variant])}]", f"segment.checkpoint={'' if start == 'random' else start}",
        f"train.epochs={epochs}", f"train.eval_every_epochs={every}", f"optim.warmup_epochs={max(1, epochs // 20)}",
        f"train.batch_size={BATCH}", f"train.output_dir={out}", f"train.run_name={name}",
        *overrides,
    ]  # fmt: skip
    print(" ".join(command[2:]), flush=True)
    began = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    minutes = (time.perf_counter() - began) / 60
    checks = [r for r in map(json.loads, (out / name / "metrics.jsonl").read_text().splitlines()) if "eval_miou" in r]
    last, best = checks[-1], max(checks, key=lambda r: r["eval_miou"])
    line = {
        "variant": variant, "labels": labels, "start": start, "tag": tag, "overrides": overrides,
        "steps": last["step"], "miou": last["eval_miou"], "pixel_accuracy": last["eval_pixel_accuracy"],
        "best_miou": best["eval_miou"], "best_step": best["step"],
        "iou": [last[f"eval_iou_{c}"] for c in VARIANTS[variant]], "minutes": round(minutes, 1), "run": name,
    }  # fmt: skip
    with (root / "results.jsonl").open("a") as f:
        f.write(json.dumps(line) + "\n")
    print(f"{name}: mIoU {line['miou']:.2f} (pixel acc. {line['pixel_accuracy']:.2f}), best {line['best_miou']:.2f}")
    return line


def report(root: Path, *, results: Path | None) -> str:
    """The table of every line of ``ROOT/results.jsonl``, in the order run."""
    lines = [json.loads(x) for x in (root / "results.jsonl").read_text().splitlines() if x.strip()]
    rows = []
    for r in lines:
        epoch = Path(r["start"]).stem.removeprefix("checkpoint-")
        start = "random" if r["start"] == "random" else f"MAE ({int(epoch)} ep.)" if epoch.isdigit() else "MAE"
        rows.append([
            r["variant"], str(r["labels"]), f"{start}", r["tag"], " ".join(r["overrides"]) or "-", str(r["steps"]),
            f"{r['miou']:.2f}", f"{r['pixel_accuracy']:.2f}", f"{r['best_miou']:.2f} ({r['best_step']})",
            ", ".join(f"{x:.0f}" for x in r["iou"]),
        ])  # fmt: skip
    header = ["set", "labels", "start", "regime", "overrides", "steps", "mIoU", "pixel acc.", "best mIoU (step)",
              "per-class IoU"]  # fmt: skip
    cpu = torch.device("cpu")
    body = (
        f"`python -m benchmarks.transfer_study` ({machine_header(cpu)}): `demo_image_segment`, batch {BATCH}, "
        "the held-out mIoU at the last step and the best of the run's ten checks\n\n" + markdown_table(header, rows)
    )
    print(body)
    if results is not None:
        write_section(results, machine=device_name(cpu), script="transfer_study", markdown=body)
    return body


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="write both demo sets with their unlabelled pools")
    data.add_argument("root", type=Path)
    data.add_argument("--unlabelled", type=int, default=10_000, help="unlabelled images per set")
    seg = sub.add_parser("segment", help="anymae segment from each --start, the same steps each")
    seg.add_argument("root", type=Path)
    seg.add_argument("--variant", choices=sorted(VARIANTS), default="shapes")
    seg.add_argument("--labels", type=int, default=50, help="the first N labelled training images")
    seg.add_argument("--steps", type=int, default=800, help="optimizer steps (rounded up to whole epochs)")
    add_transfer_study_arguments(seg, sub, tag="linear", example="segment.head=upernet")
    args = parser.parse_args(argv)
    if args.command == "data":
        make_data(args.root, unlabelled=args.unlabelled)
    elif args.command == "segment":
        for start in args.start:
            run_segment(
                args.root.resolve(), variant=args.variant, labels=args.labels, steps=args.steps, start=start,
                overrides=args.overrides, tag=args.tag,
            )  # fmt: skip
    else:
        report(args.root, results=args.results)


if __name__ == "__main__":
    main()
