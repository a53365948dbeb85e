"""Does an MAE start beat random init for ``anymae detect`` from a few labels? A study through the project's own
commands: an MAE pre-trained without labels on a large pool of generated images, then the same detection recipe
(``demo_image_detect``) from a few dozen labelled images and from all 300, from the MAE and from random init, the same
number of steps each, scored on the 100 held-out images of ``builtin:demo_detect`` (backgrounds from photographs no
training image uses).

The pool is drawn by the demo's own generator (:func:`anymae.modalities.image.detect_demo.make_demo_image`: 1-4
shapes on a 96x96 crop) on the training photographs only, from seeds no demo image uses, so pre-training sees no
held-out background and no image of the labelled set::

    python -m benchmarks.detect_study data detect_study --unlabelled 10000     # detect_study/train/*.png
    anymae pretrain demo_image preset=detect_pool                              # the MAE on the pool: ~21 min
    python -m benchmarks.detect_study detect detect_study --labels 50 --steps 1000 \\
        --start random --start runs/demo_image_detect_pool/checkpoint-0020.pt
    python -m benchmarks.detect_study report detect_study --results benchmarks/RESULTS.md

``detect`` runs ``anymae detect demo_image_detect`` once per ``--start`` (``random``, or a pre-training checkpoint,
loaded with ``model=null`` so the checkpoint's encoder is the model) with ``data.train_subset=--labels``,
``--steps`` optimizer steps (whole epochs: the step count is rounded up to them), a held-out check every
``1/--checks`` of the run and one at the last step; ``--set key=value`` (repeatable) overrides the recipe (``--set
detect.layer_decay=1.0``). Each run appends a line to ``ROOT/results.jsonl``: box and mask AP / AP50 of the last
check (steps fixed in advance) and of the best one (what the held-out curve would pick, for both starts alike), with
the run's minutes. ``report`` turns those lines into the table of ``benchmarks/RESULTS.md``.
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
from PIL import Image

from anymae.modalities.image.data import demo_photos_root, find_images
from anymae.modalities.image.detect_demo import NUM_TRAIN, SPLITS, make_demo_image

from .common import add_transfer_study_arguments, device_name, machine_header, markdown_table, write_section

BATCH = 8  # demo_image_detect's train.batch_size; the loader drops the last partial batch
POOL_FIRST_SEED = 1_000_000  # past every seed of the demo's splits (training 0-299, held-out 100,000-100,099)


def pool_seeds(count: int) -> range:
    """The seeds of the unlabelled pool; refuses any that a demo split uses."""
    seeds = range(POOL_FIRST_SEED, POOL_FIRST_SEED + count)
    for split, (first, n) in SPLITS.items():
        if first < seeds.stop and seeds.start < first + n:
            raise ValueError(
                f"pool seeds {seeds.start}-{seeds.stop - 1} overlap the demo's {split} seeds {first}-{first + n - 1}"
            )
    return seeds


def make_pool(root: Path, *, unlabelled: int) -> None:
    """``root/train/*.png``: ``unlabelled`` demo images on the training photographs, their shapes not written."""
    photos = find_images(demo_photos_root() / "train")
    (root / "train").mkdir(parents=True, exist_ok=True)
    for seed in pool_seeds(unlabelled):
        pixels, _ = make_demo_image(seed, photos)
        Image.fromarray(pixels).save(root / "train" / f"{seed:07d}.png")
    print(f"wrote {unlabelled} unlabelled 96x96 images on the training photographs to {root / 'train'}")


def run_detect(
    root: Path, *, labels: int, steps: int, checks: int, start: str, overrides: list[str], tag: str
) -> dict[str, Any]:
    """One ``anymae detect`` run; its last and best held-out checks as a results line."""
    if not 1 <= labels <= NUM_TRAIN:
        raise SystemExit(f"--labels {labels}: the demo set has {NUM_TRAIN} training images")
    steps_per_epoch = labels // BATCH
    if steps_per_epoch == 0:
        raise SystemExit(f"--labels {labels} is less than one batch of {BATCH}")
    epochs = math.ceil(steps / steps_per_epoch)
    origin = "random" if start == "random" else f"{Path(start).parent.name}-{Path(start).stem}"
    name = f"{labels}-{tag}-{steps}-{origin}"
    out = root / "runs"
    if (out / name).exists():  # the trainer would write beside it, and its old metrics would be read
        raise SystemExit(f"{out / name} exists: remove it, or give this regime another --tag")
    # From a checkpoint, model=null: the checkpoint's own encoder, not demo_image_detect's model section.
    start_from = ["detect.checkpoint="] if start == "random" else [f"detect.checkpoint={start}", "model=null"]
    command = [
        sys.executable, "-m", "anymae.core.cli", "detect", "demo_image_detect", *start_from,
        f"data.train_subset={labels}", f"train.epochs={epochs}", f"train.eval_every_epochs={max(1, epochs // checks)}",
        f"optim.warmup_epochs={max(1, epochs // 20)}", f"train.batch_size={BATCH}", f"train.output_dir={out}",
        f"train.run_name={name}", *overrides,
    ]  # fmt: skip
    print(" ".join(command[2:]), flush=True)
    began = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    minutes = (time.perf_counter() - began) / 60
    records = map(json.loads, (out / name / "metrics.jsonl").read_text().splitlines())
    line = results_line(
        [r for r in records if "eval_bbox_AP" in r], labels=labels, start=start, tag=tag, overrides=overrides,
        minutes=minutes, run=name,
    )  # fmt: skip
    if line["steps"] != epochs * steps_per_epoch:
        raise SystemExit(f"{name}: the last check is at step {line['steps']}, not the run's {epochs * steps_per_epoch}")
    with (root / "results.jsonl").open("a") as f:
        f.write(json.dumps(line) + "\n")
    print(f"{name}: {ap_text(line)}, best box AP {line['best_box_ap']:.1f} (step {line['best_step']})")
    return line


def results_line(
    checks: list[dict[str, Any]], *, labels: int, start: str, tag: str, overrides: list[str], minutes: float, run: str
) -> dict[str, Any]:
    """A results line from a run's held-out checks (``eval_*`` records of ``metrics.jsonl``, in order): the last
    check, and the best by box AP as ``checkpoint-best.pt`` picks it (the first of equals)."""
    if not checks:
        raise SystemExit(f"{run}: metrics.jsonl has no held-out check")
    last = checks[-1]
    best = max(checks, key=lambda r: r["eval_bbox_AP"])  # max keeps the first of equal scores
    return {
        "labels": labels, "start": start, "tag": tag, "overrides": overrides, "steps": last["step"],
        "box_ap": last["eval_bbox_AP"], "box_ap50": last["eval_bbox_AP50"],
        "mask_ap": last["eval_segm_AP"], "mask_ap50": last["eval_segm_AP50"],
        "best_box_ap": best["eval_bbox_AP"], "best_mask_ap": best["eval_segm_AP"], "best_step": best["step"],
        "checks": len(checks), "minutes": round(minutes, 1), "run": run,
    }  # fmt: skip


def ap_text(line: dict[str, Any]) -> str:
    return (f"box AP {line['box_ap']:.1f} (AP50 {line['box_ap50']:.1f}), "
            f"mask AP {line['mask_ap']:.1f} (AP50 {line['mask_ap50']:.1f})")  # fmt: skip


def start_name(start: str) -> str:
    """``random``, or ``MAE (N ep.)`` for a numbered pre-training checkpoint."""
    if start == "random":
        return "random"
    epoch = Path(start).stem.removeprefix("checkpoint-")
    return f"MAE ({int(epoch)} ep.)" if epoch.isdigit() else "MAE"


def table(lines: list[dict[str, Any]]) -> str:
    """The markdown table of results lines, in the order run."""
    header = ["labels", "start", "regime", "overrides", "steps", "box AP (AP50)", "mask AP (AP50)",
              "best box / mask AP (step)", "minutes"]  # fmt: skip
    rows = [
        [
            str(r["labels"]), start_name(r["start"]), r["tag"], " ".join(r["overrides"]) or "-", str(r["steps"]),
            f"{r['box_ap']:.1f} ({r['box_ap50']:.1f})", f"{r['mask_ap']:.1f} ({r['mask_ap50']:.1f})",
            f"{r['best_box_ap']:.1f} / {r['best_mask_ap']:.1f} ({r['best_step']})", f"{r['minutes']:.1f}",
        ]
        for r in lines
    ]  # fmt: skip
    return markdown_table(header, rows)


def report(root: Path, *, results: Path | None) -> str:
    """The table of every line of ``ROOT/results.jsonl``, in the order run."""
    lines = [json.loads(x) for x in (root / "results.jsonl").read_text().splitlines() if x.strip()]
    cpu = torch.device("cpu")
    body = (
        f"`python -m benchmarks.detect_study` ({machine_header(cpu)}): `demo_image_detect`, batch {BATCH}, "
        "COCO AP on the 100 held-out images at the last step, and the best check of the run (by box AP)\n\n"
        + table(lines)
    )
    print(body)
    if results is not None:
        write_section(results, machine=device_name(cpu), script="detect_study", markdown=body)
    return body


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="write the unlabelled pool")
    data.add_argument("root", type=Path)
    data.add_argument("--unlabelled", type=int, default=10_000, help="unlabelled images in the pool")
    det = sub.add_parser("detect", help="anymae detect from each --start, the same steps each")
    det.add_argument("root", type=Path)
    det.add_argument("--labels", type=int, default=50, help="the first N labelled training images (data.train_subset)")
    det.add_argument("--steps", type=int, default=1000, help="optimizer steps (rounded up to whole epochs)")
    det.add_argument(
        "--checks", type=int, default=5, help="a held-out check every 1/N of the run, and at the last step"
    )
    add_transfer_study_arguments(det, sub, tag="shipped", example="detect.layer_decay=1.0")
    args = parser.parse_args(argv)
    if args.command == "data":
        make_pool(args.root, unlabelled=args.unlabelled)
    elif args.command == "detect":
        for start in args.start:
            run_detect(
                args.root.resolve(), labels=args.labels, steps=args.steps, checks=args.checks, start=start,
                overrides=args.overrides, tag=args.tag,
            )  # fmt: skip
    else:
        report(args.root, results=args.results)


if __name__ == "__main__":
    main()
