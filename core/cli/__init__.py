"""The ``anymae`` command line: pretrain, finetune, linprobe, eval, knn, embed, visualize, export, convert, plugins,
configs, and plugin commands."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

DEFAULT_CONFIG = "demo_image"  # `anymae pretrain` with no argument: the embedded image demo


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # `pretrain CONFIG --no-progress a.b=1`: argparse leaves overrides after an option unparsed
        if getattr(args, "command", None) not in ("pretrain", "finetune", "linprobe", "eval", "knn") or any(
            "=" not in e or e.startswith("-") for e in extra
        ):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from anymae.core.config import ConfigError
    from anymae.core.data.samples import BadSampleError, DataError
    from anymae.core.io.checkpoint import CheckpointError
    from anymae.core.train.run import PREEMPTED_EXIT_CODE, NonFiniteLossError, PreemptedError

    warnings.simplefilter("default")
    try:
        return args.func(args)
    except PreemptedError as exc:
        print(f"anymae {args.command}: {exc}", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    except (ConfigError, DataError, BadSampleError, CheckpointError, NonFiniteLossError, KeyError, OSError) as exc:
        print(f"anymae {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    """DataLoader workers re-raise with the worker's traceback in the message: keep its last line."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if len(lines) > 1 and "Traceback" in text:
        return lines[-1].split(": ", 1)[-1]
    return " ".join(line.strip() for line in lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anymae", description="Masked-autoencoder pre-training for any modality.")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("pretrain", help="pre-train an MAE (no CONFIG: the embedded image demo)")
    p.add_argument("config", nargs="?", default=DEFAULT_CONFIG, help="a YAML file or a bundled config name")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.epochs=10")
    p.add_argument("--resume", help="a checkpoint to continue from, or 'auto' for the newest in the run folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to metrics.jsonl)")
    p.set_defaults(func=_pretrain)

    for name, what in (("finetune", "fine-tune a pre-trained MAE end to end"),
                       ("linprobe", "train a linear classifier on a frozen pre-trained MAE encoder")):  # fmt: skip
        p = sub.add_parser(name, help=f"{what} (CONFIG names {name}.checkpoint)")
        p.add_argument("config", help="a YAML file or a bundled config name")
        p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. preset=paper train.epochs=10")
        p.add_argument("--resume", help="a checkpoint-last.pt to continue from, or 'auto' for the run's newest")
        p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to metrics.jsonl)")
        p.set_defaults(func=_classify)

    p = sub.add_parser("eval", help="top-1/top-5 accuracy of a fine-tuned or linear-probe checkpoint")
    p.add_argument("checkpoint", help="checkpoint-best.pt or checkpoint-last.pt of anymae finetune/linprobe")
    p.add_argument("--data-root", help="default: the data.root the classifier was trained with")
    p.add_argument("--split", default="heldout", choices=["train", "heldout"], help="which split of data.root")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("overrides", nargs="*", help="data.KEY=VALUE changes to the stored data section (e.g. another list)")
    p.set_defaults(func=_eval)

    p = sub.add_parser("knn", help="weighted k-NN top-1/top-5 of a pre-trained encoder's frozen features")
    p.add_argument("checkpoint", help="anything `load_model` reads: anymae checkpoint, official MAE .pth, HF folder")
    p.add_argument("config", nargs="?", help="a YAML file or bundled config whose data section names labelled data")
    p.add_argument("overrides", nargs="*", help="data.KEY=VALUE changes, e.g. data.root=my_images")
    p.add_argument("--k", type=int, default=20, help="neighbours that vote (DINO: 20)")
    p.add_argument("--temperature", type=float, default=0.07, help="vote weight exp(similarity / T) (DINO: 0.07)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers for reading the data")
    p.add_argument("--parts", default=None, help="a composite model: the parts whose features vote (default: all)")
    _add_encoder_options(p, batch_size=64)
    p.set_defaults(func=_knn)

    p = sub.add_parser("embed", help="write one feature row per input file (or per window of a long one)")
    p.add_argument("checkpoint", help="anything `load_model` reads: anymae checkpoint, official MAE .pth, HF folder")
    p.add_argument("inputs", nargs="+", help="files, folders (searched recursively) or .txt lists of paths")
    p.add_argument("-o", "--output", default="features.safetensors", help="the .safetensors file to write")
    p.add_argument("--window", type=float, help="seconds per window of long audio/video (default: the model's span)")
    p.add_argument("--hop", type=float, help="seconds between window starts (default: --window)")
    _add_encoder_options(p, batch_size=32)
    p.set_defaults(func=_embed)

    p = sub.add_parser("visualize", help="reconstruction figure of a checkpoint on input files")
    p.add_argument("checkpoint", help="anymae checkpoint, official MAE .pth, or Hugging Face ViTMAE folder")
    p.add_argument("inputs", nargs="+", help="input files (images for the image modality)")
    p.add_argument("-o", "--output", default="reconstruction.png", help="PNG to write")
    p.add_argument("--mask-ratio", type=float, default=None, help="default: the model's")
    p.add_argument("--seed", type=int, default=0, help="seed of the random masks")
    p.add_argument(
        "--raw-stats",
        action="store_true",
        help="norm-pix models: draw removed patches with the visible patches' average mean and std, not each true "
        "patch's (what the model itself predicts)",
    )
    p.set_defaults(func=_visualize)

    p = sub.add_parser("export", help="write a checkpoint's model weights as safetensors (no pickle, no code)")
    p.add_argument("checkpoint", help="anymae checkpoint or classifier, official MAE .pth, or Hugging Face folder")
    p.add_argument("output", help="the .safetensors file to write; the model config goes in its metadata")
    p.set_defaults(func=_export)

    from anymae.core.weights.convert import targets

    to = targets()
    p = sub.add_parser("convert", help=f"convert an MAE or classifier checkpoint to the {', '.join(to)} layout")
    p.add_argument("source", help="anything load_model reads, an anymae classifier, or an official mae_finetuned_*")
    p.add_argument("output", help="the file to write")
    p.add_argument("--to", default="anymae", choices=to, help="the layout to write (registered formats add theirs)")
    p.add_argument("--format", choices=["pt", "safetensors"], help="default: safetensors for .safetensors, else pt")
    p.add_argument("--num-heads", type=int, help="heads of an official / timm source of a non-official width")
    p.add_argument("--no-verify", action="store_true", help="skip reading the output back and comparing")
    p.set_defaults(func=_convert)

    p = sub.add_parser("plugins", help="list plugins: what each registers, distribution, version, status")
    p.add_argument("--verbose", "-v", action="store_true", help="also the hooks each plugin implements")
    p.set_defaults(func=_plugins)

    p = sub.add_parser("configs", help="list the bundled configs")
    p.set_defaults(func=_configs)
    _add_plugin_commands(sub)
    return parser


def _add_encoder_options(p: argparse.ArgumentParser, *, batch_size: int) -> None:
    """The options of the commands that run a frozen pre-trained encoder over data (knn, embed)."""
    p.add_argument("--pool", choices=["cls", "mean"], help="default: cls when the encoder has a CLS token, else mean")
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_plugin_commands(sub: Any) -> None:
    """Subcommands registered by plugins (``anymae_register_commands``), e.g. ``audio-stats``."""
    from anymae.plugins import get_registry

    for name, entry in sorted(get_registry().commands.items()):
        if name in sub.choices:
            warnings.warn(
                f"plugin {entry.plugin!r}: command {name!r} is built in; ignored", RuntimeWarning, stacklevel=2
            )
            continue
        p = sub.add_parser(name, help=f"{entry.obj.help} (plugin {entry.plugin})")
        entry.obj.add_arguments(p)
        p.set_defaults(func=entry.obj.run)


def _pretrain(args: argparse.Namespace) -> int:
    from anymae.core.config import ClassifyConfig, ConfigError, load_config
    from anymae.core.train.task_pretrain import pretrain

    config, overrides = args.config, list(args.overrides)
    if "=" in config and not Path(config).is_file():  # `anymae pretrain train.epochs=5`: overrides of the demo
        config, overrides = DEFAULT_CONFIG, [config, *overrides]
    cfg = load_config(config, overrides)
    if isinstance(cfg, ClassifyConfig):
        raise ConfigError(f"config {config} is a {cfg.mode} config: run `anymae {cfg.mode} {config}`")
    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports
    if main_process:
        print(f"anymae pretrain: config {cfg.name!r}, modality {cfg.model.modality!r}")
    result = pretrain(cfg, resume=args.resume, progress=not args.no_progress)
    if not main_process:
        return 0
    print(f"\nfinished: last-epoch training loss {result.train_loss:.4f}")
    if result.heldout_loss is not None:
        ratio = result.heldout_loss / result.baseline_loss if result.baseline_loss else float("nan")
        print(
            f"held-out masked-patch loss {result.heldout_loss:.4f} vs {result.baseline_loss:.4f} for the trivial "
            f"baseline (each patch predicted by its own mean): {ratio:.2f}x"
        )
    print(f"run folder:      {result.run_dir}")
    print(f"checkpoint:      {result.checkpoint}")
    print(f"metrics:         {result.metrics}")
    print(f"resolved config: {result.run_dir / 'config.yaml'}")
    if result.figure is not None:
        print(f"reconstructions: {result.figure}")
    return 0


def _classify(args: argparse.Namespace) -> int:
    from anymae.core.config import load_classify_config
    from anymae.core.io.checkpoint import CheckpointError
    from anymae.core.train.task_classify import train_classifier
    from anymae.core.weights.loading import load_model

    cfg = load_classify_config(args.config, args.overrides, mode=args.command)
    if cfg.linprobe is not None and cfg.linprobe.solver == "lbfgs":  # refused before the checkpoint is read
        from anymae.core.train.probe import check_probe_config

        check_probe_config(cfg, resume=args.resume)
    pretrained = load_model(cfg.head.checkpoint)
    if pretrained.config["model"]["modality"] != cfg.head.modality:
        raise CheckpointError(
            f"{cfg.head.checkpoint} is a {pretrained.config['model']['modality']!r} model but the config says "
            f"{args.command}.modality={cfg.head.modality!r}"
        )
    main_process = os.environ.get("RANK", "0") == "0"
    if main_process:
        print(f"anymae {args.command}: config {cfg.name!r}, from {cfg.head.checkpoint}")
    result = train_classifier(cfg, pretrained, progress=not args.no_progress, resume=args.resume)
    if not main_process:
        return 0
    best = f"best mAP {result.best_map:.2f}%" if result.best_map is not None else f"best top-1 {result.best_acc1:.2f}%"
    last = f"mAP {result.last_map:.2f}%  " if result.last_map is not None else ""
    print(f"\nfinished: {last}top-1 {result.last_acc1:.2f}%  top-5 {result.last_acc5:.2f}% ({best})")
    print(f"run folder:      {result.run_dir}")
    print(f"best checkpoint: {result.best_checkpoint}")
    print(f"metrics:         {result.metrics}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from anymae.core.build.composite_data import CompositeModality
    from anymae.core.config import COMPOSITE, ConfigError, apply_overrides, from_dict
    from anymae.core.distributed.context import setup, teardown
    from anymae.core.evaluate.classification import evaluate, format_stats, load_classifier
    from anymae.plugins import get_registry

    model = load_classifier(args.checkpoint)
    config = model.config
    composite = config["model"]["modality"] == COMPOSITE
    registry = get_registry()
    data_raw = dict(config.get("data") or {})
    if args.data_root:
        if composite:
            raise ConfigError("--data-root: a composite's data has a section per part; use data.<part>.root=...")
        data_raw["root"] = args.data_root
    bad = [o for o in args.overrides if not o.startswith("data.")]
    if bad:
        raise ConfigError(f"anymae eval takes data.KEY=VALUE overrides only, got {bad[0]!r}")
    data_raw = apply_overrides({"data": data_raw}, args.overrides)["data"]
    if composite:  # the parts the classifier reads, each with its own data section
        modality = CompositeModality.of(config["model"], config["classifier"]["parts"], registry=registry)
        data = {name: from_dict(part.data_config, data_raw.get(name), f"data.{name}")
                for name, part in modality.modalities.items()}  # fmt: skip
        tokenizer = None
    else:
        modality = registry.modality(config["model"]["modality"])
        data = from_dict(modality.data_config, data_raw, "data")
        tokenizer = from_dict(modality.tokenizer_config, config["model"]["tokenizer"], "model.tokenizer")
    dataset = modality.build_labelled_dataset(
        data, tokenizer, split=args.split, augment=None, crop_pct=config.get("eval_crop_pct", 0.875)
    )
    if list(dataset.classes) != list(config.get("classes", dataset.classes)):
        print(f"anymae eval: warning: class folders {dataset.classes} differ from training's {config['classes']}")
    ctx, device = setup(args.device)
    try:
        stats = evaluate(model.to(device), dataset, batch_size=args.batch_size, device=device, ctx=ctx,
                         view_reduce=config.get("view_reduce", "logits"))  # fmt: skip
    finally:
        teardown(ctx)
    if ctx.is_main:
        print(f"{args.split}: {int(stats['n'])} samples  {format_stats(stats)}  loss {stats['loss']:.4f}")
    return 0


def _knn(args: argparse.Namespace) -> int:
    from anymae.core.build.composite_data import CompositeModality
    from anymae.core.config import (
        COMPOSITE,
        ConfigError,
        apply_overrides,
        from_dict,
        read_config_source,
        resolve_model_config,
        resolve_part_data,
    )
    from anymae.core.distributed.context import resolve_device
    from anymae.core.evaluate.knn import default_pool, knn_accuracy
    from anymae.core.weights.loading import load_model
    from anymae.plugins import get_registry

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not Path(config).is_file():  # `anymae knn CKPT data.root=x`
        config, overrides = None, [config, *overrides]
    bad = [o for o in overrides if not o.startswith("data.")]
    if bad:
        raise ConfigError(f"anymae knn takes data.KEY=VALUE overrides only, got {bad[0]!r}")
    model = load_model(args.checkpoint)
    model_cfg = resolve_model_config(model.config["model"])
    composite = model_cfg.modality == COMPOSITE
    if args.parts is not None and not composite:
        raise ConfigError(f"--parts is for composite models; {args.checkpoint} is a {model_cfg.modality} model")
    registry = get_registry()
    modality = (
        CompositeModality(model_cfg.parts, registry=registry) if composite else registry.modality(model_cfg.modality)
    )
    # The data section: the checkpoint's (anymae runs carry theirs), replaced by CONFIG's, then the overrides.
    data_raw = dict(model.config.get("data") or {})
    if config is not None:
        data_raw = dict(read_config_source(config)[1].get("data") or {})
    data_raw = apply_overrides({"data": data_raw}, overrides)["data"]
    if composite:  # one data section per part; the features of --parts (default: all of them, joint)
        data = resolve_part_data(model_cfg, data_raw, registry)
        if args.parts is not None:
            model = model.restricted(args.parts.split(","))
    else:
        data = from_dict(modality.data_config, data_raw, "data")
    train_set = modality.build_labelled_dataset(data, model_cfg.tokenizer, split="train", augment=None)
    query_set = modality.build_labelled_dataset(data, model_cfg.tokenizer, split="heldout", augment=None)
    device = resolve_device(args.device)
    stats = knn_accuracy(model.to(device), train_set, query_set, batch_size=args.batch_size, device=device,
                         k=args.k, temperature=args.temperature, pool=args.pool, num_workers=args.num_workers,
                         progress=not args.no_progress)  # fmt: skip
    pool = args.pool or default_pool(model)
    features = f"{pool} features" + (f" of {args.parts}" if args.parts else "")
    print(
        f"k-NN (k={args.k}, T={args.temperature:g}, {features}): top-1 {stats['knn_top1']:.1f}%  "
        f"top-5 {stats['knn_top5']:.1f}%  ({int(stats['n'])} held-out vs {len(train_set)} training items)"
    )
    return 0


def _embed(args: argparse.Namespace) -> int:
    from anymae.core.evaluate.embed import embed_files, expand_inputs, save_embeddings
    from anymae.core.weights.loading import load_model

    model = load_model(args.checkpoint)
    result = embed_files(model, expand_inputs(args.inputs), pool=args.pool, window=args.window, hop=args.hop,
                         batch_size=args.batch_size, device=args.device, progress=not args.no_progress)  # fmt: skip
    out = save_embeddings(result, args.output, checkpoint=str(args.checkpoint))
    print(f"wrote {out}: {result.features.shape[0]} rows of {result.features.shape[1]} ({result.pool} features) "
          f"from {len(result.files)} files")  # fmt: skip
    return 0


def _visualize(args: argparse.Namespace) -> int:
    import torch

    from anymae.core.config import from_dict, resolve_model_config
    from anymae.core.io.checkpoint import CheckpointError
    from anymae.core.model.composite import MultiModalMAE
    from anymae.core.model.figures import render_figure
    from anymae.core.model.masking import sample_mask
    from anymae.core.weights.loading import load_model
    from anymae.plugins import get_registry

    model = load_model(args.checkpoint)
    if isinstance(model, MultiModalMAE):
        return _visualize_composite(model, args)
    if model.decoder is None:
        raise CheckpointError(
            f"{args.checkpoint} has no decoder weights, so it cannot reconstruct; use a checkpoint with a decoder "
            "(an anymae run, mae_visualize_*.pth or mae_pretrain_*_full.pth)"
        )
    model.eval()
    model_cfg = resolve_model_config(model.config["model"])
    modality = get_registry().modality(model_cfg.modality)
    # anymae checkpoints carry their data section; official and HF models use the modality's defaults.
    data_cfg = from_dict(modality.data_config, model.config.get("data") or {}, "data")
    inputs = modality.load_inputs(args.inputs, data_cfg, model_cfg.tokenizer)
    generator = torch.Generator().manual_seed(args.seed)
    forced = sample_mask(
        model.masking,
        batch=inputs.shape[0],
        grid=model.tokenizer.grid,
        mask_ratio=model.mask_ratio if args.mask_ratio is None else args.mask_ratio,
        device=torch.device("cpu"),
        generator=generator,
    )
    with torch.no_grad():
        loss, pred, mask = model(inputs, mask=forced)
    out, caption = render_figure(
        modality, model, inputs=inputs, pred=pred, mask=mask, data=data_cfg, path=args.output, raw_stats=args.raw_stats
    )
    print(f"masked-patch loss {loss.item():.4f}; wrote {out}" + (f" ({caption})" if caption else ""))
    return 0


def _visualize_composite(model: Any, args: argparse.Namespace) -> int:
    """``anymae visualize`` of a composite model: every input file is read by every part (a media file with a video
    and an audio stream, say); one joint mask per file (each part's strategy and ratio); the parts' figures
    stacked."""
    import torch

    from anymae.core.build.composite_data import CompositeModality
    from anymae.core.config import ConfigError, from_dict, resolve_model_config
    from anymae.core.evaluate.composite import composite_figure
    from anymae.core.io.checkpoint import CheckpointError
    from anymae.plugins import get_registry

    if not model.decoders():
        raise CheckpointError(f"{args.checkpoint} has no decoder weights, so it cannot reconstruct")
    if args.mask_ratio is not None:
        raise ConfigError("--mask-ratio: a composite model masks each part at its own ratio (model.parts.<part>)")
    model.eval()
    cfg = resolve_model_config(model.config["model"])
    modality = CompositeModality(cfg.parts, registry=get_registry())
    stored = model.config.get("data") or {}
    data, inputs = {}, {}
    for name, part in modality.modalities.items():
        data[name] = from_dict(part.data_config, stored.get(name) or {}, f"data.{name}")
        inputs[name] = part.load_inputs(args.inputs, data[name], cfg.parts[name].tokenizer)
    mask = model.draw_mask(len(args.inputs), generator=torch.Generator().manual_seed(args.seed))
    with torch.no_grad():
        out = model(inputs, mask=mask)
    path = composite_figure(model, modality, data, inputs, out, Path(args.output), raw_stats=args.raw_stats)
    losses = ", ".join(f"{name} {float(loss):.4f}" for name, loss in out.losses.items())
    print(f"masked-patch loss {float(out.loss):.4f} ({losses}); wrote {path}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from anymae.core.io.checkpoint import export_safetensors
    from anymae.core.weights.loading import load_any

    model = load_any(args.checkpoint)
    out = export_safetensors(model, args.output)
    print(f"wrote {out} ({sum(t.numel() for t in model.state_dict().values()):,} values)")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from anymae.core.weights.convert import convert

    try:
        result = convert(
            args.source,
            args.output,
            to=args.to,
            file_format=args.format,
            num_heads=args.num_heads,
            verify=not args.no_verify,
        )
    except ValueError as exc:  # e.g. heads that cannot be inferred: a user error, not a crash
        print(f"anymae convert: error: {_one_line(exc)}", file=sys.stderr)
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


def _plugins(args: argparse.Namespace) -> int:
    from anymae.plugins import get_registry

    registry = get_registry()
    rows = [("plugin", "registers", "distribution", "version", "status")]
    for info in registry.plugins.values():
        status = info.status if info.status != "broken" else f"broken: {info.error}"
        rows.append(
            (
                info.name,
                ", ".join(info.registers) or "-",
                info.distribution or "-",
                info.version or "-",
                status,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])
        info = registry.plugins.get(row[0])
        if args.verbose and info is not None:
            print("    hooks: " + (", ".join(info.hooks) or "-"))
    return 0


def _configs(args: argparse.Namespace) -> int:
    from anymae.core.config import bundled_configs

    for name, summary in bundled_configs().items():
        print(f"{name:<24} {summary}")
    return 0
