"""The handlers of the built-in commands: each calls the one function of its room that does the work, then prints
the result and returns the exit code. Under ``torchrun`` only rank 0 prints."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from anymae.core.build.pack import pack as pack_files
from anymae.core.cli.errors import one_line
from anymae.core.config import (
    ConfigError,
    bundled_configs,
    load_classify_config,
    load_pretrain_config,
    load_segment_config,
)
from anymae.core.config.detect import load_detect_config
from anymae.core.data.samples import DataError
from anymae.core.evaluate.classification import evaluate_checkpoint, format_stats
from anymae.core.evaluate.detect_predict import predict_images
from anymae.core.evaluate.embed import embed_command
from anymae.core.evaluate.knn import knn_command
from anymae.core.evaluate.retrieval import retrieval_line, retrieve_command
from anymae.core.evaluate.visualize import visualize_checkpoint
from anymae.core.train.launch import classify_from_checkpoint
from anymae.core.train.task_detect import detect_from_config
from anymae.core.train.task_pretrain import pretrain as pretrain_run
from anymae.core.train.task_segment import segment_from_config
from anymae.core.weights.catalog import released
from anymae.core.weights.convert import convert as convert_checkpoint
from anymae.core.weights.convert import export_hugging_face, export_weights
from anymae.plugins import get_registry

__all__ = ["DEFAULT_CONFIG", "classify", "configs", "convert", "detect", "embed", "evaluate", "export", "knn", "pack",
           "plugins", "predict", "pretrain", "retrieve", "segment", "visualize"]  # fmt: skip

DEFAULT_CONFIG = "demo_image"  # `anymae pretrain` with no argument: the embedded image demo


def _main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports


def pretrain(args: argparse.Namespace) -> int:
    config, overrides = args.config, list(args.overrides)
    if "=" in config and not Path(config).is_file():  # `anymae pretrain train.epochs=5`: overrides of the demo
        config, overrides = DEFAULT_CONFIG, [config, *overrides]
    cfg = load_pretrain_config(config, overrides)
    if _main_process():
        print(f"anymae pretrain: config {cfg.name!r}, modality {cfg.model.modality!r}")
    result = pretrain_run(cfg, resume=args.resume, progress=not args.no_progress)
    if not _main_process():
        return 0
    print(f"\nfinished: last-epoch training loss {result.train_loss:.4f}")
    if result.heldout_loss is not None:
        ratio = result.heldout_loss / result.baseline_loss if result.baseline_loss else float("nan")
        print(
            f"held-out masked-patch loss {result.heldout_loss:.4f} vs {result.baseline_loss:.4f} for the trivial "
            f"baseline (each patch predicted by its own mean): {ratio:.2f}x"
        )
    for line in result.retrieval:  # a composite: its parts matched on the held-out items
        print(line)
    print(f"run folder:      {result.run_dir}")
    print(f"checkpoint:      {result.checkpoint}")
    print(f"metrics:         {result.metrics}")
    print(f"resolved config: {result.run_dir / 'config.yaml'}")
    if result.figure is not None:
        print(f"reconstructions: {result.figure}")
    return 0


def classify(args: argparse.Namespace) -> int:
    cfg = load_classify_config(args.config, args.overrides, mode=args.command)
    if _main_process():
        print(f"anymae {args.command}: config {cfg.name!r}, from {cfg.head.checkpoint}")
    result = classify_from_checkpoint(cfg, resume=args.resume, progress=not args.no_progress)
    if not _main_process():
        return 0
    best = f"best mAP {result.best_map:.2f}%" if result.best_map is not None else f"best top-1 {result.best_acc1:.2f}%"
    last = f"mAP {result.last_map:.2f}%  " if result.last_map is not None else ""
    print(f"\nfinished: {last}top-1 {result.last_acc1:.2f}%  top-5 {result.last_acc5:.2f}% ({best})")
    print(f"run folder:      {result.run_dir}")
    print(f"best checkpoint: {result.best_checkpoint}")
    print(f"metrics:         {result.metrics}")
    return 0


def segment(args: argparse.Namespace) -> int:
    cfg = load_segment_config(args.config, args.overrides)
    if _main_process():
        start = cfg.segment.checkpoint or "a random init of the config's model"
        print(f"anymae segment: config {cfg.name!r}, {cfg.segment.head} head, from {start}")
    result = segment_from_config(cfg, resume=args.resume, progress=not args.no_progress)
    if not _main_process():
        return 0
    print(f"\nfinished: mIoU {result.miou:.2f}% (pixel accuracy {result.pixel_accuracy:.2f}%) on {result.images} "
          "held-out images")  # fmt: skip
    if result.skipped:
        print(f"{result.skipped} unusable held-out images skipped (the warnings above name them)")
    print(f"best mIoU:       {result.best_miou:.2f}%")
    print(f"run folder:      {result.run_dir}")
    print(f"best checkpoint: {result.best_checkpoint}")
    print(f"metrics:         {result.metrics}")
    return 0


def detect(args: argparse.Namespace) -> int:
    cfg = load_detect_config(args.config, args.overrides)
    if _main_process():
        start = cfg.detect.checkpoint or "a random init of the config's model"
        print(f"anymae detect: config {cfg.name!r}, Mask R-CNN on {cfg.detect.backbone}, from {start}")
    result = detect_from_config(cfg, resume=args.resume, progress=not args.no_progress)
    if not _main_process():
        return 0
    print(f"best box AP:     {result.best_box_ap:.1f}")
    print(f"run folder:      {result.run_dir}")
    print(f"best checkpoint: {result.best_checkpoint}")
    print(f"metrics:         {result.metrics}")
    print(f"\nfinished: {result.summary()}")
    return 0


def predict(args: argparse.Namespace) -> int:
    result = predict_images(args.checkpoint, args.images, output=Path(args.output),
                            draw_dir=Path(args.draw) if args.draw else None, device=args.device)  # fmt: skip
    print(f"{result.detections} detections on {len(args.images)} images: {result.results} (image ids: {result.images})")
    if result.drawn:
        print(f"drawn:           {args.draw} ({len(result.drawn)} PNG)")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    scores = evaluate_checkpoint(args.checkpoint, split=args.split, data_root=args.data_root,
                                 overrides=args.overrides, batch_size=args.batch_size, device=args.device)  # fmt: skip
    if scores.classes != scores.trained_classes:
        print(f"anymae eval: warning: class folders {scores.classes} differ from training's {scores.trained_classes}")
    if scores.is_main:
        stats = scores.stats
        print(f"{args.split}: {int(stats['n'])} samples  {format_stats(stats)}  loss {stats['loss']:.4f}")
    return 0


def knn(args: argparse.Namespace) -> int:
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not Path(config).is_file():  # `anymae knn CKPT data.root=x`
        config, overrides = None, [config, *overrides]
    parts = args.parts.split(",") if args.parts is not None else None
    report = knn_command(args.checkpoint, config, overrides, parts=parts, k=args.k, temperature=args.temperature,
                         pool=args.pool, batch_size=args.batch_size, device=args.device, num_workers=args.num_workers,
                         progress=not args.no_progress)  # fmt: skip
    features = f"{report.pool} features" + (f" of {args.parts}" if args.parts else "")
    skipped = f"; {report.skipped} unreadable files skipped" if report.skipped else ""
    print(
        f"k-NN (k={args.k}, T={args.temperature:g}, {features}): top-1 {report.top1:.1f}%  top-5 {report.top5:.1f}%  "
        f"({report.queries} held-out vs {report.training_items} training items{skipped})"
    )
    return 0


def pack(args: argparse.Namespace) -> int:
    pairs = [part.split("=", 1) for part in args.parts.split(",")] if args.parts else []
    if any(len(pair) != 2 or not all(pair) for pair in pairs):
        raise DataError(f"--parts: expected NAME=MODALITY,... (image=image,audio=audio), got {args.parts!r}")
    parts = dict(pairs) if pairs else None
    report = pack_files(args.src, args.dest, modality=args.modality or "", parts=parts, registry=get_registry(),
                        shard_size=args.shard_size, split_by_class=args.split_by_class, seed=args.seed,
                        progress=not args.no_progress, task=args.task, images=args.images)  # fmt: skip
    classes = f", {len(report.classes)} classes" if report.classes else ""
    bad = f"; {len(report.bad)} unreadable files left out (named above)" if report.bad else ""
    print(f"wrote {report.samples} samples in {len(report.shards)} shards{classes} to {args.dest} "
          f"(manifest.json){bad}")  # fmt: skip
    return 0


def retrieve(args: argparse.Namespace) -> int:
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not Path(config).is_file():  # `anymae retrieve CKPT data.x=y`
        config, overrides = None, [config, *overrides]
    report = retrieve_command(args.checkpoint, config, overrides,
                              parts=args.parts.split(",") if args.parts else None, split=args.split,
                              batch_size=args.batch_size, device=args.device, num_workers=args.num_workers,
                              output=args.output, figure=args.figure, queries=args.queries,
                              progress=not args.no_progress)  # fmt: skip
    for direction, scores in report.directions.items():
        print(retrieval_line(direction, scores, report.pairs))
    items = "item" if report.skipped == 1 else "items"
    skipped = f"; {report.skipped} {items} with an unreadable part skipped" if report.skipped else ""
    figure = f", top-5 matches in {report.figure}" if report.figure else ""
    print(f"results in {report.output}{figure}{skipped}")
    return 0


def embed(args: argparse.Namespace) -> int:
    if args.layers is not None and not args.tokens:
        print("anymae embed: error: --layers picks the blocks of --tokens; add --tokens", file=sys.stderr)
        return 2
    layers = None
    if args.tokens:
        layers = [int(v) for v in args.layers.split(",")] if args.layers else [-1]
    result, out = embed_command(args.checkpoint, args.inputs, args.output, pool=args.pool, window=args.window,
                                hop=args.hop, batch_size=args.batch_size, device=args.device,
                                progress=not args.no_progress, layers=layers)  # fmt: skip
    skipped = f" ({len(result.skipped)} unreadable files skipped)" if result.skipped else ""
    print(f"wrote {out}: {result.features.shape[0]} rows of {result.features.shape[1]} ({result.pool} features) "
          f"from {len(result.files)} files{skipped}")  # fmt: skip
    for block, found in result.layers.items():
        print(f"  layer_{block}: {tuple(found.shape)} patch tokens of block {block}")
    return 0


def visualize(args: argparse.Namespace) -> int:
    drawn = visualize_checkpoint(args.checkpoint, args.inputs, args.output, mask_ratio=args.mask_ratio, seed=args.seed,
                                 raw_stats=args.raw_stats)  # fmt: skip
    if drawn.part_losses:
        losses = ", ".join(f"{name} {loss:.4f}" for name, loss in drawn.part_losses.items())
        print(f"masked-patch loss {drawn.loss:.4f} ({losses}); wrote {drawn.path}")
    else:
        print(
            f"masked-patch loss {drawn.loss:.4f}; wrote {drawn.path}" + (f" ({drawn.caption})" if drawn.caption else "")
        )
    return 0


def export(args: argparse.Namespace) -> int:
    if (args.output is None) == (args.hf is None):
        raise ConfigError("anymae export: give either OUTPUT (a .safetensors file) or --hf DIR")
    if args.hf is not None:
        folder, diff = export_hugging_face(args.checkpoint, args.hf)
        checked = "" if diff is None else f"; transformers reloads it, max abs difference {diff:.2e}"
        print(f"wrote {folder} (transformers from_pretrained folder{checked})")
        return 0
    out, values = export_weights(args.checkpoint, args.output)
    print(f"wrote {out} ({values:,} values)")
    return 0


def convert(args: argparse.Namespace) -> int:
    try:
        result = convert_checkpoint(args.source, args.output, to=args.to, file_format=args.format,
                                    num_heads=args.num_heads, verify=not args.no_verify)  # fmt: skip
    except ValueError as exc:  # e.g. heads that cannot be inferred: a user error, not a crash
        print(f"anymae convert: error: {one_line(exc)}", file=sys.stderr)
        return 1
    print(f"wrote {result.path}: {result.kind} in the {result.target} layout, {result.num_tensors} tensors, "
          f"{result.num_values:,} values")  # fmt: skip
    for note in result.notes:
        print(f"note: {note}")
    if result.timm is not None:
        print(f"timm constructor (also in {result.timm_spec_path}):\n{result.timm['python']}")
    if result.max_abs_diff is not None:
        print(f"verified: timm's output equals anymae's on a random input (max abs diff {result.max_abs_diff:.2g})")
    elif not args.no_verify:
        print("verified: read back with identical tensors")
    return 0


def plugins(args: argparse.Namespace) -> int:
    registry = get_registry()
    rows = [("plugin", "registers", "distribution", "version", "status")]
    for info in registry.plugins.values():
        status = info.status if info.status != "broken" else f"broken: {info.error}"
        rows.append(
            (info.name, ", ".join(info.registers) or "-", info.distribution or "-", info.version or "-", status)
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])
        info = registry.plugins.get(row[0])
        if args.verbose and info is not None:
            print("    hooks: " + (", ".join(info.hooks) or "-"))
    return 0


def models(args: argparse.Namespace) -> int:
    rows = [("name", "modality", "size", "weights", "layout", "source")]
    rows += [(r.hub_name, r.modality, r.size, r.contents, r.layout, r.source) for r in released(args.modality)]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:5])) + "  " + row[5])
    return 0


def configs(args: argparse.Namespace) -> int:
    for name, summary in bundled_configs().items():
        print(f"{name:<24} {summary}")
    return 0
