"""The ``anymae`` argparse tree: one small function per subcommand, each naming its handler in :mod:`.commands`."""

from __future__ import annotations

import argparse
import warnings
from typing import Any

from anymae.core.build.pack import TASKS
from anymae.core.cli import commands
from anymae.core.weights.convert import targets
from anymae.plugins import get_registry

__all__ = ["OVERRIDE_COMMANDS", "build_parser"]

# Commands whose trailing key.sub=value overrides may also come after an option (argparse leaves those unparsed).
OVERRIDE_COMMANDS = ("pretrain", "finetune", "linprobe", "segment", "detect", "eval", "knn", "retrieve")
_FILE_HELP = "anything `load_model` reads: anymae checkpoint, official MAE .pth, HF folder"
_NO_PROGRESS_HELP = "no progress bar (logs still go to metrics.jsonl)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anymae", description="Masked-autoencoder pre-training for any modality.")
    sub = parser.add_subparsers(dest="command")
    for add in (_pretrain, _classify, _segment, _detect, _predict, _eval, _knn, _retrieve, _embed, _visualize, _export,
                _convert, _pack, _plugins, _configs, _models):  # fmt: skip
        add(sub)
    _plugin_commands(sub)
    return parser


def _pretrain(sub: Any) -> None:
    p = sub.add_parser("pretrain", help="pre-train an MAE (no CONFIG: the embedded image demo)")
    p.add_argument("config", nargs="?", default=commands.DEFAULT_CONFIG, help="a YAML file or a bundled config name")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.epochs=10")
    p.add_argument("--resume", help="a checkpoint to continue from, or 'auto' for the newest in the run folder")
    p.add_argument("--no-progress", action="store_true", help=_NO_PROGRESS_HELP)
    p.set_defaults(func=commands.pretrain)


def _classify(sub: Any) -> None:
    for name, what in (("finetune", "fine-tune a pre-trained MAE end to end"),
                       ("linprobe", "train a linear classifier on a frozen pre-trained MAE encoder")):  # fmt: skip
        p = sub.add_parser(name, help=f"{what} (CONFIG names {name}.checkpoint)")
        p.add_argument("config", help="a YAML file or a bundled config name")
        p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. preset=paper train.epochs=10")
        p.add_argument("--resume", help="a checkpoint-last.pt to continue from, or 'auto' for the run's newest")
        p.add_argument("--no-progress", action="store_true", help=_NO_PROGRESS_HELP)
        p.set_defaults(func=commands.classify)


def _segment(sub: Any) -> None:
    p = sub.add_parser("segment", help="train a semantic segmenter on a pre-trained MAE encoder (CONFIG names "
                       "segment.checkpoint, or a model to initialise at random)")  # fmt: skip
    p.add_argument("config", help="a YAML file or a bundled config name")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. segment.head=linear train.epochs=10")
    p.add_argument("--resume", help="a checkpoint-last.pt to continue from, or 'auto' for the run's newest")
    p.add_argument("--no-progress", action="store_true", help=_NO_PROGRESS_HELP)
    p.set_defaults(func=commands.segment)


def _detect(sub: Any) -> None:
    p = sub.add_parser("detect", help="train a Mask R-CNN detector on a pre-trained MAE encoder (CONFIG names "
                       "detect.checkpoint, or a model to initialise at random)")  # fmt: skip
    p.add_argument("config", help="a YAML file or a bundled config name")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. detect.backbone=fpn4 train.epochs=10")
    p.add_argument("--resume", help="a checkpoint-last.pt to continue from, or 'auto' for the run's newest")
    p.add_argument("--no-progress", action="store_true", help=_NO_PROGRESS_HELP)
    p.set_defaults(func=commands.detect)


def _predict(sub: Any) -> None:
    p = sub.add_parser("predict", help="boxes and masks of an `anymae detect` checkpoint on images, as COCO results")
    p.add_argument("checkpoint", help="checkpoint-best.pt or checkpoint-last.pt of anymae detect")
    p.add_argument("images", nargs="+", help="image files; image i (from 1) has COCO image id i")
    p.add_argument("-o", "--output", default="results.json", help="the COCO results JSON to write")
    p.add_argument("--draw", help="a folder for one PNG per image with its detections drawn")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.set_defaults(func=commands.predict)


def _eval(sub: Any) -> None:
    p = sub.add_parser("eval", help="top-1/top-5 accuracy of a fine-tuned or linear-probe checkpoint")
    p.add_argument("checkpoint", help="checkpoint-best.pt or checkpoint-last.pt of anymae finetune/linprobe")
    p.add_argument("--data-root", help="default: the data.root the classifier was trained with")
    p.add_argument("--split", default="heldout", choices=["train", "heldout"], help="which split of data.root")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("overrides", nargs="*", help="data.KEY=VALUE changes to the stored data section (e.g. another list)")
    p.set_defaults(func=commands.evaluate)


def _knn(sub: Any) -> None:
    p = sub.add_parser("knn", help="weighted k-NN top-1/top-5 of a pre-trained encoder's frozen features")
    p.add_argument("checkpoint", help=_FILE_HELP)
    p.add_argument("config", nargs="?", help="a YAML file or bundled config whose data section names labelled data")
    p.add_argument("overrides", nargs="*", help="data.KEY=VALUE changes, e.g. data.root=my_images")
    p.add_argument("--k", type=int, default=20, help="neighbours that vote (DINO: 20)")
    p.add_argument("--temperature", type=float, default=0.07, help="vote weight exp(similarity / T) (DINO: 0.07)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers for reading the data")
    p.add_argument("--parts", default=None, help="a composite model: the parts whose features vote (default: all)")
    _encoder_options(p, batch_size=64)
    p.set_defaults(func=commands.knn)


def _retrieve(sub: Any) -> None:
    p = sub.add_parser("retrieve", help="cross-modal retrieval R@1/5/10 between two parts of a composite model")
    p.add_argument("checkpoint", help=_FILE_HELP)
    p.add_argument("config", nargs="?", help="a YAML file or bundled config whose data section names the pairs")
    p.add_argument("overrides", nargs="*", help="data.PART.KEY=VALUE changes, e.g. data.audio.root=my_clips")
    p.add_argument("--parts", default=None, help="the two parts to match, e.g. audio,video (default: the first two)")
    p.add_argument("--split", default="heldout", choices=["train", "heldout"], help="which split of the data")
    p.add_argument("-o", "--output", default="retrieval.json", help="the JSON file of the results")
    p.add_argument("--figure", default=None, help="a PNG of the top-5 matches of a few queries in each direction")
    p.add_argument("--queries", type=int, default=4, help="with --figure: the queries drawn per direction")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers for reading the data")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=commands.retrieve)


def _embed(sub: Any) -> None:
    p = sub.add_parser("embed", help="write one feature row per input file (or per window of a long one)")
    p.add_argument("checkpoint", help=_FILE_HELP)
    p.add_argument("inputs", nargs="+", help="files, folders (searched recursively) or .txt lists of paths")
    p.add_argument("-o", "--output", default="features.safetensors", help="the .safetensors file to write")
    p.add_argument("--window", type=float, help="seconds per window of long audio/video (default: the model's span)")
    p.add_argument("--hop", type=float, help="seconds between window starts (default: --window)")
    p.add_argument("--tokens", action="store_true", help="also every patch token of --layers, one array per block")
    p.add_argument("--layers", help="with --tokens: blocks from 0, e.g. 3,5,7,11 (default: the last)")
    _encoder_options(p, batch_size=32)
    p.set_defaults(func=commands.embed)


def _encoder_options(p: argparse.ArgumentParser, *, batch_size: int) -> None:
    """The options of the commands that run a frozen pre-trained encoder over data (knn, embed)."""
    p.add_argument("--pool", choices=["cls", "mean"], help="default: cls when the encoder has a CLS token, else mean")
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _visualize(sub: Any) -> None:
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
    p.set_defaults(func=commands.visualize)


def _export(sub: Any) -> None:
    p = sub.add_parser("export", help="write a checkpoint's model weights as safetensors (no pickle, no code)")
    p.add_argument("checkpoint", help="anymae checkpoint or classifier, official MAE .pth, or Hugging Face folder")
    p.add_argument("output", nargs="?", help="the .safetensors file to write; the model config goes in its metadata")
    p.add_argument("--hf", metavar="DIR", help="write a folder transformers loads with from_pretrained(DIR) instead")
    p.set_defaults(func=commands.export)


def _convert(sub: Any) -> None:
    to = targets()
    p = sub.add_parser("convert", help=f"convert an MAE or classifier checkpoint to the {', '.join(to)} layout")
    p.add_argument("source", help="anything load_model reads, an anymae classifier, or an official mae_finetuned_*")
    p.add_argument("output", help="the file to write")
    p.add_argument("--to", default="anymae", choices=to, help="the layout to write (registered formats add theirs)")
    p.add_argument("--format", choices=["pt", "safetensors"], help="default: safetensors for .safetensors, else pt")
    p.add_argument("--num-heads", type=int, help="heads of an official / timm source of a non-official width")
    p.add_argument("--no-verify", action="store_true", help="skip reading the output back and comparing")
    p.set_defaults(func=commands.convert)


def _pack(sub: Any) -> None:
    p = sub.add_parser("pack", help="write a folder or list file as tar shards (WebDataset) with a manifest.json")
    p.add_argument("src", help="a split folder (class folders or flat) or a list file of `path [label]` lines; "
                   "--task segment: ROOT/images/<split> (ADE20K layout) or a list of `image mask` lines; "
                   "--task detect: a COCO instances JSON")  # fmt: skip
    p.add_argument("dest", help="the folder for shard-NNNNNN.tar and manifest.json")
    p.add_argument("--modality", help="the registered modality that reads SRC (its file types)")
    p.add_argument("--parts", help="a composite instead: NAME=MODALITY,... (image=image,audio=audio), each part's "
                   "split folder SRC with {part} replaced by its name (or SRC/NAME); a sample holds every part of an "
                   "item, paired by file name")  # fmt: skip
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    p.add_argument("--split-by-class", action="store_true", help="each class in shards of its own (not shuffled)")
    p.add_argument("--seed", type=int, default=0, help="seed of the order the samples are dealt into shards")
    p.add_argument("--task", default="classify", choices=TASKS,
                   help="what a sample holds: a file (and its class), an image and its label map (KEY.seg.png), "
                   "or an image and its COCO annotations (KEY.json)")  # fmt: skip
    p.add_argument("--images", help="--task detect: the folder the COCO JSON's file names are under")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=commands.pack)


def _plugins(sub: Any) -> None:
    p = sub.add_parser("plugins", help="list plugins: what each registers, distribution, version, status")
    p.add_argument("--verbose", "-v", action="store_true", help="also the hooks each plugin implements")
    p.set_defaults(func=commands.plugins)


def _configs(sub: Any) -> None:
    p = sub.add_parser("configs", help="list the bundled configs")
    p.set_defaults(func=commands.configs)


def _models(sub: Any) -> None:
    p = sub.add_parser("models", help="released MAE-family weights anymae reads by hub name (hf-hub:ORG/NAME)")
    p.add_argument("--modality", help="only this modality's weights")
    p.set_defaults(func=commands.models)


def _plugin_commands(sub: Any) -> None:
    """Subcommands registered by plugins (``anymae_register_commands``), e.g. ``audio-stats``."""
    for name, entry in sorted(get_registry().commands.items()):
        if name in sub.choices:
            warnings.warn(
                f"plugin {entry.plugin!r}: command {name!r} is built in; ignored", RuntimeWarning, stacklevel=2
            )
            continue
        p = sub.add_parser(name, help=f"{entry.obj.help} (plugin {entry.plugin})")
        entry.obj.add_arguments(p)
        p.set_defaults(func=entry.obj.run)
