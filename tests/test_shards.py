"""Splits read from tar shards (``data.shards``): ``anymae pack``, every modality and a composite decoded by their own
dataset code, the rank x worker split, the seeded order, exact resume after SIGKILL, and bad data named and
counted."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import webdataset as wds
import yaml
from conftest import make_image, tiny_mae, write_image
from torch.utils.data import DataLoader

from anymae.core.build.data_source import labelled_data, modality_for
from anymae.core.build.pack import pack
from anymae.core.build.shard_source import split_dataset
from anymae.core.cli import main
from anymae.core.config import resolve_config, resolve_model_config
from anymae.core.config.stream import data_section
from anymae.core.data.samples import DataError, seeded
from anymae.core.data.shards import ShardStream, resolve_shards
from anymae.core.io.checkpoint import export_safetensors, read_checkpoint
from anymae.plugins import get_registry

CLASSES = ("cats", "dogs", "owls")


def _labelled_images(root: Path, per_class: dict[str, int]) -> Path:
    """root/<split>/<class>/<class>.<i>.{jpg,png}: ``per_class[split]`` images of each class (dots in the names)."""
    seed = 0
    for split, n in per_class.items():
        for c in CLASSES:
            for i in range(n):
                write_image(root / split / c / f"{c}.{i}.{'jpg' if i % 2 else 'png'}", make_image(seed))
                seed += 1
    return root


def _tar_members(folder: Path) -> list[str]:
    """Every member name of every shard in ``folder``, read with the standard library (not webdataset)."""
    names = []
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            names += tar.getnames()
    return names


def _image_data(**keys: Any) -> Any:
    from anymae.modalities.image.modality import ImageDataConfig

    return data_section(ImageDataConfig, keys, "data")


def test_pack_writes_every_file_once_with_its_class_and_a_manifest(tmp_path: Path) -> None:
    root = _labelled_images(tmp_path / "images", {"train": 5})
    files = sorted(p.relative_to(root / "train") for p in (root / "train").rglob("*.*"))
    (root / "train" / "owls" / "empty.jpg").write_bytes(b"")  # unreadable as media: named and left out

    report = pack(root / "train", tmp_path / "shards", modality="image", registry=get_registry(), shard_size=4,
                  progress=False)  # fmt: skip

    members = _tar_members(tmp_path / "shards")
    keys = sorted(m.rsplit(".", 1)[0] for m in members if not m.endswith(".cls"))
    assert keys == sorted(str(f.with_suffix("")).replace(".", "_") for f in files)
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["classes"] == list(CLASSES) and manifest["samples"] == len(files) == 15
    assert sorted(s["count"] for s in manifest["shards"]) == [3, 4, 4, 4]  # 16 files, one left out
    assert len(report.bad) == 1 and "empty.jpg" in report.bad[0]
    with tarfile.open(tmp_path / "shards" / "shard-000000.tar") as tar:  # the bytes as they are, the class index
        member = next(m for m in tar.getmembers() if not m.name.endswith(".cls"))
        source = root / "train" / (member.name.rsplit(".", 1)[0].replace("_", ".") + "." + member.name.rsplit(".")[-1])
        assert tar.extractfile(member).read() == source.read_bytes()  # type: ignore[union-attr]
        label = tar.extractfile(member.name.rsplit(".", 1)[0] + ".cls").read()  # type: ignore[union-attr]
        assert CLASSES[int(label)] == source.parent.name


def test_knn_gives_the_same_top1_from_packed_shards_as_from_the_folders(tmp_path: Path, capsys: Any) -> None:
    root = _labelled_images(tmp_path / "images", {"train": 6, "val": 3})
    for split in ("train", "val"):
        assert main(["pack", str(root / split), str(tmp_path / split), "--modality", "image", "--shard-size", "5",
                     "--no-progress"]) == 0  # fmt: skip
    checkpoint = export_safetensors(tiny_mae(), tmp_path / "random.safetensors")
    capsys.readouterr()

    assert (
        main(["knn", str(checkpoint), f"data.root={root}", "data.heldout_split=val", "--k", "5", "--no-progress"]) == 0
    )
    from_folders = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["knn", str(checkpoint), f"data.shards={tmp_path / 'train'}",
                 f"data.heldout_shards={tmp_path / 'val'}/shard-{{000000..000001}}.tar", "--k", "5",
                 "--no-progress"]) == 0  # fmt: skip
    from_shards = capsys.readouterr().out.strip().splitlines()[-1]

    assert re.search(r"top-1 \d+\.\d%.*\(9 held-out vs 18 training items\)", from_folders), from_folders
    assert from_shards == from_folders


def test_a_shard_sample_decodes_to_the_folder_item_of_its_file(tmp_path: Path) -> None:
    """The modality's own transform reads the shard's bytes: the held-out (evaluation) item of every sample equals
    the folder dataset's item of the file it was packed from."""
    root = _labelled_images(tmp_path / "images", {"val": 2})
    pack(root / "val", tmp_path / "val", modality="image", registry=get_registry(), shard_size=4, progress=False)
    model = resolve_model_config({"tokenizer": {"img_size": 32, "patch_size": 8}})
    modality = modality_for(model, registry=get_registry())
    folder = modality.build_dataset(_image_data(root=str(root), heldout_split="val"), model.tokenizer, split="heldout")
    by_key = {str(f.relative_to(root / "val").with_suffix("")).replace(".", "_"): folder[i]
              for i, f in enumerate(folder.files)}  # fmt: skip

    shards = split_dataset(modality, _image_data(heldout_shards=str(tmp_path / "val")), model.tokenizer,
                           split="heldout")  # fmt: skip
    keys = [
        s["__key__"] for s in wds.WebDataset(str(tmp_path / "val" / "shard-{000000..000001}.tar"), shardshuffle=False)
    ]

    assert len(shards) == len(keys) == 6
    for i, key in enumerate(keys):
        assert torch.equal(shards[i], by_key[key]), key


@pytest.mark.parametrize("decode", ["cpu", "gpu", "pil", "labelled"])
def test_training_jpegs_decode_from_memory_to_the_folder_item_and_other_files_through_a_scratch_file(
    tmp_path: Path, monkeypatch: Any, decode: str
) -> None:
    """A training sample's JPEG is decoded from the shard's bytes (no scratch file written) into the item the folder
    dataset makes of its file for the same seed (crop box, flip, pixels; each pre-training decode path, and a
    labelled set with the linear probe's random crops, labelled from the sample); a PNG still goes through a
    scratch file; a damaged JPEG is named by shard and key."""
    from anymae.core.build import scratch
    from anymae.core.data.samples import BadSampleError

    root = _labelled_images(tmp_path / "images", {"train": 2})  # 3 JPEGs and 3 PNGs
    pack(root / "train", tmp_path / "sh", modality="image", registry=get_registry(), shard_size=6, progress=False)
    model = resolve_model_config({"tokenizer": {"img_size": 32, "patch_size": 8}})
    modality = modality_for(model, registry=get_registry())
    labelled = decode == "labelled"
    keys = {"decode": "cpu" if labelled else decode}
    augment = {"recipe": "linprobe"} if labelled else None
    if labelled:
        folder = modality.build_labelled_dataset(_image_data(root=str(root), **keys), model.tokenizer, split="train",
                                                 augment=augment)  # fmt: skip
        files = [f for f, _ in folder.samples]
    else:
        folder = modality.build_dataset(_image_data(root=str(root), **keys), model.tokenizer, split="train")
        files = folder.files
    decoder = scratch.ScratchDecoder(modality, _image_data(**keys), model.tokenizer, split="train",
                                     labelled=labelled, augment=augment, crop_pct=1.0)  # fmt: skip
    written: list[Path] = []
    replace = scratch._replace
    monkeypatch.setattr(scratch, "_replace", lambda file, payload: (written.append(file), replace(file, payload)))
    samples = list(wds.WebDataset(str(tmp_path / "sh" / "shard-000000.tar"), shardshuffle=False))
    assert len(samples) == 6
    for sample in samples:
        file = next(f for f in files if str(f.relative_to(root / "train").with_suffix("")).replace(".", "_")
                    == sample["__key__"])  # fmt: skip
        before = len(written)
        with seeded(3):
            (got,) = decoder(sample)
        with seeded(3):
            expected = folder[files.index(file)]
        if decode == "gpu":
            got, expected = (got.data, got.box, got.flip), (expected.data, expected.box, expected.flip)
        elif not labelled:
            got, expected = (got,), (expected,)
        assert labelled is False or got[1] == CLASSES.index(file.parent.name)
        assert all(torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
                   for a, b in zip(got, expected, strict=True))  # fmt: skip
        # Only the PNGs were written to a scratch file.
        assert len(written) - before == (file.suffix == ".png"), sample["__key__"]
    jpeg = next(s for s in samples if "jpg" in s)
    with pytest.raises(BadSampleError, match=re.escape(f"{jpeg['__key__']}.jpg")):
        decoder({**jpeg, "jpg": b"\xff\xd8 not a JPEG"})


def test_video_audio_and_composite_samples_decode_with_their_modalities(tmp_path: Path) -> None:
    from test_composite import AUDIO_TOKENIZER, write_pairs

    from anymae.modalities.video.decode import write_video

    rng = np.random.default_rng(0)
    for i in range(2):
        write_video(tmp_path / "video" / "heldout" / f"v{i}.mp4", rng.integers(0, 256, (12, 32, 32, 3), np.uint8))
    write_pairs(tmp_path / "pairs", 2, split="heldout")
    registry = get_registry()
    cases = {"video": ({"num_frames": 4, "img_size": 32, "patch_size": 8, "tubelet_size": 2}, "video"),
             "audio": (AUDIO_TOKENIZER, "pairs/audio")}  # fmt: skip
    for name, (tokenizer, folder) in cases.items():
        pack(tmp_path / folder / "heldout", tmp_path / f"{name}-shards", modality=name, registry=registry,
             progress=False)  # fmt: skip
        raw = {"model": {"modality": name, "tokenizer": tokenizer, "embed_dim": 16, "num_heads": 2},
               "data": {"root": str(tmp_path / folder), "heldout_split": "heldout"}}  # fmt: skip
        cfg = resolve_config(raw)
        modality = modality_for(cfg.model, registry=registry)
        expected = modality.build_dataset(cfg.data, cfg.model.tokenizer, split="heldout")
        cfg = resolve_config({**raw, "data": {"heldout_shards": str(tmp_path / f"{name}-shards")}})
        got = split_dataset(modality, cfg.data, cfg.model.tokenizer, split="heldout")
        assert len(got) == len(expected) == 2, name
        names = sorted(p.stem for p in (tmp_path / folder / "heldout").iterdir())
        for i in range(2):  # shuffled into the shard: match by file name
            j = names.index(_key_of(tmp_path / f"{name}-shards", i).rsplit("/", 1)[-1])
            with seeded(0):
                item = got[i]
            assert torch.equal(_input(item), _input(expected[j])), (name, i)

    # A composite sample holds every part of one item: <key>.image.png and <key>.audio.wav.
    pairs = tmp_path / "pairs"
    with wds.TarWriter(str(tmp_path / "av.tar")) as writer:
        for stem in ("s000", "s001"):
            writer.write({"__key__": stem, "image.png": (pairs / "image" / "heldout" / f"{stem}.png").read_bytes(),
                          "audio.wav": (pairs / "audio" / "heldout" / f"{stem}.wav").read_bytes()})  # fmt: skip
    from test_composite import composite_raw

    raw = composite_raw(tmp_path, pairs)
    cfg = resolve_config(raw)
    modality = modality_for(cfg.model, registry=registry)
    expected = modality.build_dataset(cfg.data, None, split="heldout")
    raw["data"]["heldout_shards"] = str(tmp_path / "av.tar")
    got = split_dataset(modality, resolve_config(raw).data, None, split="heldout")
    assert len(got) == 2
    for i in range(2):
        with seeded(0):
            a = got[i]
        with seeded(0):
            b = expected[i]
        assert a.keys() == b.keys() == {"image", "audio"}
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_pack_of_a_composite_writes_every_part_of_a_paired_item_in_one_sample_that_decodes_as_the_folders(
    tmp_path: Path, capsys: Any
) -> None:
    from test_composite import composite_raw, write_pairs

    pairs = tmp_path / "pairs"
    write_pairs(pairs, 3, split="heldout", skip_audio=(2,))  # s002 has no sound: no item, left out and named
    assert main(["pack", f"{pairs}/{{part}}/heldout", str(tmp_path / "av"), "--parts", "image=image,audio=audio",
                 "--no-progress"]) == 0  # fmt: skip
    assert "left out: part 'image': 1 (heldout/s002)" in capsys.readouterr().err
    with tarfile.open(tmp_path / "av" / "shard-000000.tar") as tar:  # the bytes as they are, one sample an item
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert sorted(members) == ["s000.audio.wav", "s000.image.png", "s001.audio.wav", "s001.image.png"]
    assert members["s001.audio.wav"] == (pairs / "audio" / "heldout" / "s001.wav").read_bytes()
    assert members["s001.image.png"] == (pairs / "image" / "heldout" / "s001.png").read_bytes()

    raw = composite_raw(tmp_path, pairs)
    cfg = resolve_config(raw)
    modality = modality_for(cfg.model, registry=get_registry())
    expected = modality.build_dataset(cfg.data, None, split="heldout")
    raw["data"]["heldout_shards"] = str(tmp_path / "av")
    got = split_dataset(modality, resolve_config(raw).data, None, split="heldout")
    assert len(got) == len(expected) == 2
    for i, key in enumerate(s["__key__"] for s in wds.WebDataset(str(tmp_path / "av" / "shard-000000.tar"))):
        with seeded(0):
            a = got[i]
        with seeded(0):
            b = expected[["s000", "s001"].index(key)]
        assert a.keys() == b.keys() == {"image", "audio"}
        assert all(torch.equal(a[k], b[k]) for k in a), key


def _input(item: Any) -> Any:
    """An item's input (pre-training items may be ``(input, label)`` pairs)."""
    return item[0] if isinstance(item, tuple) else item


def _key_of(folder: Path, i: int) -> str:
    return list(wds.WebDataset(str(next(folder.glob("*.tar"))), shardshuffle=False))[i]["__key__"]


def _key_shards(folder: Path, shards: int, per_shard: int) -> list[str]:
    """``shards`` shards of ``per_shard`` tiny samples each (the key is the content); the keys written."""
    folder.mkdir(parents=True, exist_ok=True)
    keys, manifest = [], []
    for s in range(shards):
        with wds.TarWriter(str(folder / f"part-{s:03d}.tar")) as writer:
            for i in range(per_shard):
                keys.append(f"k{s:03d}_{i:03d}")
                writer.write({"__key__": keys[-1], "txt": keys[-1].encode(), "png": b"x"})
        manifest.append({"name": f"part-{s:03d}.tar", "count": per_shard})
    (folder / "manifest.json").write_text(json.dumps({"shards": manifest, "classes": []}))
    return keys


def _keys_read(folder: Path, *, rank: int, world: int, workers: int, batch: int, epoch: int = 0, seed: int = 0,
               start_batch: int = 0, **stream: Any) -> list[str]:  # fmt: skip
    """The keys one rank's DataLoader reads in ``epoch``, in order (the decode returns the key)."""
    shards = ShardStream(resolve_shards(str(folder), key="data.shards"), decode=lambda s: [s["__key__"]], **stream)
    shards.bind(rank=rank, world_size=world, workers=workers, batch_size=batch, seed=seed,
                finish=lambda item, bad, seed: item)  # fmt: skip
    shards.set_epoch(epoch, start_batch)
    loader = DataLoader(shards, batch_size=batch, num_workers=workers, collate_fn=list)
    return [key for b in loader for key in b]


def test_ranks_and_workers_read_every_sample_once_per_epoch_in_a_seeded_order(tmp_path: Path) -> None:
    keys = _key_shards(tmp_path / "even", shards=8, per_shard=4)
    epochs = []
    for epoch in range(2):
        read = [_keys_read(tmp_path / "even", rank=r, world=2, workers=2, batch=2, epoch=epoch) for r in range(2)]
        assert sorted(read[0] + read[1]) == sorted(keys)  # each of the 32 once, over 2 ranks x 2 workers
        epochs.append(read[0])
    assert epochs[0] != epochs[1]  # a new order each epoch ...
    assert _keys_read(tmp_path / "even", rank=0, world=2, workers=2, batch=2, epoch=1) == epochs[1]  # ... seeded

    # Fewer shards than slots: every slot reads every shard and keeps its own samples, still once each.
    few = _key_shards(tmp_path / "few", shards=2, per_shard=8)
    read = [_keys_read(tmp_path / "few", rank=r, world=2, workers=2, batch=2) for r in range(2)]
    assert sorted(read[0] + read[1]) == sorted(few)


def test_an_uneven_split_leaves_samples_out_and_says_so_instead_of_reading_any_twice(tmp_path: Path, capsys) -> None:
    keys = _key_shards(tmp_path / "odd", shards=3, per_shard=5)  # 15 samples over 2 slots: 10 + 5
    read = _keys_read(tmp_path / "odd", rank=0, world=1, workers=2, batch=2)
    assert len(read) == len(set(read)) and set(read) <= set(keys)
    assert len(read) == 10  # batches 0..4: worker 1 (5 samples) runs batches 1, 3 -> 5 batches of 2
    assert "5 of 15 samples are left out of each epoch" in capsys.readouterr().out


def test_samples_per_epoch_sets_the_epoch_and_is_required_without_counts(tmp_path: Path) -> None:
    keys = _key_shards(tmp_path / "s", shards=2, per_shard=4)
    read = _keys_read(tmp_path / "s", rank=0, world=1, workers=1, batch=4, samples_per_epoch=12, shuffle_buffer=0)
    assert len(read) == 12 and set(read) == set(keys)  # 8 samples, then the shards again
    (tmp_path / "s" / "manifest.json").unlink()
    with pytest.raises(DataError, match=r"set data\.samples_per_epoch"):
        _keys_read(tmp_path / "s", rank=0, world=1, workers=1, batch=4)


def test_a_resumed_epoch_reads_what_the_uninterrupted_epoch_read_after_that_batch(tmp_path: Path) -> None:
    _key_shards(tmp_path / "r", shards=4, per_shard=6)
    whole = _keys_read(tmp_path / "r", rank=0, world=1, workers=2, batch=3, epoch=2)
    rest = _keys_read(tmp_path / "r", rank=0, world=1, workers=2, batch=3, epoch=2, start_batch=3)
    assert rest == whole[9:]


def test_a_missing_shard_is_refused_at_start_naming_it(tmp_path: Path, capsys: Any) -> None:
    root = _labelled_images(tmp_path / "images", {"train": 2})
    pack(root / "train", tmp_path / "sh", modality="image", registry=get_registry(), shard_size=2, progress=False)
    checkpoint = export_safetensors(tiny_mae(), tmp_path / "random.safetensors")

    code = main(["knn", str(checkpoint), f"data.shards={tmp_path / 'sh'}/shard-{{000000..000004}}.tar",
                 f"data.heldout_shards={tmp_path / 'sh'}", "--no-progress"])  # fmt: skip

    assert code == 1
    assert f"data.shards: 2 of 5 shards do not exist; first: {tmp_path / 'sh' / 'shard-000003.tar'}" in (
        capsys.readouterr().err
    )


def _pretrain_raw(tmp_path: Path, shards: Path, **train: Any) -> dict[str, Any]:
    return {
        "name": "shards",
        "model": {"tokenizer": {"img_size": 16, "patch_size": 4}, "embed_dim": 16, "depth": 1, "num_heads": 2,
                  "decoder_embed_dim": 8, "decoder_depth": 1, "decoder_num_heads": 2},
        "data": {"shards": str(shards), "shuffle_buffer": 6},
        "optim": {"lr": 1e-3, "warmup_epochs": 1},
        "train": {"epochs": 2, "batch_size": 2, "num_workers": 2, "device": "cpu", "knn": False, "pin_memory": False,
                  "output_dir": str(tmp_path / "runs"), "log_every_steps": 1, "heldout_batches": 1,
                  "figure_samples": 0, **train},
    }  # fmt: skip


def test_bad_samples_and_a_truncated_shard_are_named_skipped_and_counted(tmp_path: Path) -> None:
    from anymae.core.train.task_pretrain import pretrain

    root = _labelled_images(tmp_path / "images", {"train": 4})  # 12 images
    pack(root / "train", tmp_path / "sh", modality="image", registry=get_registry(), shard_size=4, progress=False)
    with wds.TarWriter(str(tmp_path / "sh" / "shard-000003.tar")) as writer:  # a corrupt image, a sample w/o media
        writer.write({"__key__": "broken", "jpg": b"not a jpeg"})
        writer.write({"__key__": "nomedia", "cls": b"1"})
        for i in range(2):
            writer.write({"__key__": f"fine{i}", "png": (root / "train" / "cats" / "cats.0.png").read_bytes()})
    manifest = json.loads((tmp_path / "sh" / "manifest.json").read_text())
    manifest["shards"].append({"name": "shard-000003.tar", "count": 4})
    (tmp_path / "sh" / "manifest.json").write_text(json.dumps(manifest))
    truncated = tmp_path / "sh" / "shard-000001.tar"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 3])

    cfg = resolve_config(_pretrain_raw(tmp_path, tmp_path / "sh", num_workers=0, epochs=1, max_bad_fraction=0.5))
    with pytest.warns(UserWarning) as caught:
        result = pretrain(cfg, progress=False)

    messages = [str(w.message) for w in caught]
    assert any(f"shard {tmp_path / 'sh' / 'shard-000003.tar'}, key broken" in m for m in messages), messages
    assert any("key nomedia: expected one media file" in m for m in messages), messages
    assert any(f"shard {truncated}" in m for m in messages), messages
    rows = [json.loads(line) for line in result.metrics.read_text().splitlines()]
    bad = next(r["epoch_bad_samples"] for r in rows if "epoch_bad_samples" in r)
    # 2 unreadable samples and the samples the truncated shard lost (it held 4; a third of it keeps at most 1).
    assert 2 + 3 <= bad <= 2 + 4, bad


def test_a_resume_from_shards_inside_an_epoch_is_refused_with_other_workers_naming_both_counts(tmp_path) -> None:
    from anymae.core.io.checkpoint import CheckpointError
    from anymae.core.train.task_pretrain import pretrain

    root = _labelled_images(tmp_path / "images", {"train": 4})  # 12 images: 6 steps of 2 an epoch
    pack(root / "train", tmp_path / "sh", modality="image", registry=get_registry(), shard_size=3, progress=False)
    pretrain(resolve_config(_pretrain_raw(tmp_path, tmp_path / "sh", num_workers=0, epochs=1, save_every_steps=1)),
             progress=False)  # fmt: skip
    run = tmp_path / "runs" / "shards"
    inside = next(p for p in sorted(run.glob("checkpoint-step*.pt")) if read_checkpoint(p)["progress"]["batch"])
    assert read_checkpoint(inside)["shard_slots"] == [1, 1]  # 1 rank x 1 worker (num_workers 0 reads as 1)

    with pytest.raises(CheckpointError) as refused:
        pretrain(resolve_config(_pretrain_raw(tmp_path, tmp_path / "sh", num_workers=2, epochs=1)),
                 resume=str(inside), progress=False)  # fmt: skip
    message = str(refused.value)
    assert "1 rank(s) x 1 worker(s)" in message and "this run has 1 rank(s) x 2 worker(s)" in message, message


DRIVER = '''\
"""`anymae` killed with SIGKILL at training micro-step KILL_AT, while the marker file KILL_ONCE does not exist."""
import os, signal, sys
from pathlib import Path

from anymae.core.cli import main
from anymae.core.train.trainer import Trainer

at, once = int(os.environ.get("KILL_AT", "0")), os.environ.get("KILL_ONCE")
if at and not (once and Path(once).exists()):
    real, calls = Trainer.train_step, [0]

    def train_step(self, batch, it, **kwargs):
        calls[0] += 1
        if calls[0] == at:
            Path(once).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, batch, it, **kwargs)

    Trainer.train_step = train_step
sys.exit(main(sys.argv[1:]))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_ranks(cmd: list[str], env: dict[str, str]) -> list[subprocess.Popen]:
    """``cmd`` started as ranks 0 and 1 of a gloo group on this machine (what torchrun sets, set by hand)."""
    base = {**env, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    return [subprocess.Popen(cmd, env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for r in range(2)]  # fmt: skip


@pytest.mark.skipif(sys.platform != "linux", reason="signals as on Linux")
def test_two_gloo_ranks_killed_mid_epoch_and_restarted_end_with_the_weights_of_the_run_left_alone(tmp_path) -> None:
    root = _labelled_images(tmp_path / "images", {"train": 8})  # 24 images in 8 shards
    pack(root / "train", tmp_path / "sh", modality="image", registry=get_registry(), shard_size=3, progress=False)
    (tmp_path / "driver.py").write_text(DRIVER)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("KILL_", "ANYMAE_"))}, "OMP_NUM_THREADS": "1"}
    finals = {}
    # 2 ranks x 2 workers, batch 2: 6 steps an epoch; step 8 is in epoch 2, after its step-7 checkpoint: the resumed
    # epoch starts at its batch 1, which worker 1 ran in the uninterrupted epoch.
    for name, kill_at in (("alone", None), ("killed", 8)):
        raw = _pretrain_raw(tmp_path / name, tmp_path / "sh", save_every_steps=1)
        config = tmp_path / f"{name}.yaml"
        config.write_text(yaml.safe_dump(raw))
        cmd = [sys.executable, str(tmp_path / "driver.py"), "pretrain", str(config), "--resume", "auto",
               "--no-progress"]  # fmt: skip
        if kill_at:  # a rank dies by SIGKILL; the other, left waiting in a collective, is killed as a job manager would
            ranks = _two_ranks(cmd, {**env, "KILL_AT": str(kill_at), "KILL_ONCE": str(tmp_path / "killed-once")})
            while all(rank.poll() is None for rank in ranks):
                time.sleep(0.2)
            for rank in ranks:
                rank.kill()
                rank.communicate()
            assert -signal.SIGKILL in [rank.returncode for rank in ranks]
        ranks = _two_ranks(cmd, env)
        outs = [rank.communicate(timeout=300) for rank in ranks]
        assert [rank.returncode for rank in ranks] == [0, 0], [err for _, err in outs]
        finals[name] = tmp_path / name / "runs" / "shards" / "checkpoint-0002.pt"
    assert (tmp_path / "killed-once").exists(), "no rank was killed"
    assert "checkpoint-step00000007.pt (step 7): epoch 2, batch 2" in outs[0][0], outs[0][0]
    a, b = read_checkpoint(finals["alone"])["model"], read_checkpoint(finals["killed"])["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


GLOO_SCRIPT = """\
import json, sys
import torch.distributed as dist
from torch.utils.data import DataLoader
from anymae.core.data.shards import ShardStream, resolve_shards

dist.init_process_group("gloo")
rank = dist.get_rank()
stream = ShardStream(resolve_shards(sys.argv[1], key="data.shards"), decode=lambda s: [s["__key__"]],
                     shuffle_buffer=4)
stream.bind(rank=rank, world_size=2, workers=2, batch_size=2, seed=7, finish=lambda item, bad, seed: item)
epochs = []
for epoch in range(2):
    stream.set_epoch(epoch)
    mine = [k for batch in DataLoader(stream, batch_size=2, num_workers=2, collate_fn=list, persistent_workers=True)
            for k in batch]
    everyone = [None, None]
    dist.all_gather_object(everyone, mine)
    epochs.append(everyone)
if rank == 0:
    print(json.dumps(epochs))
dist.destroy_process_group()
"""


def test_two_gloo_ranks_with_two_workers_each_read_every_sample_exactly_once_per_epoch(tmp_path: Path) -> None:
    keys = _key_shards(tmp_path / "sh", shards=8, per_shard=4)  # 32 samples, 2 shards for each of 4 slots
    (tmp_path / "gloo.py").write_text(GLOO_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), str(tmp_path / "gloo.py"), str(tmp_path / "sh")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    epochs = json.loads(done.stdout.strip().splitlines()[-1])
    for ranks in epochs:
        read = ranks[0] + ranks[1]
        assert sorted(read) == sorted(keys)  # all 32, once each
    assert epochs[0][0] != epochs[1][0]


def test_stream_keys_are_refused_where_they_cannot_be_honoured(tmp_path: Path) -> None:
    from anymae.core.config import ConfigError

    refused = {
        "shuffle_buffer must be >= 0": {"shards": "a.tar", "shuffle_buffer": -1},
        "shards and hf_dataset each name the training split": {"shards": "a.tar", "hf_dataset": "x"},
        "samples_per_epoch applies to a training split read from shards": {"samples_per_epoch": 10},
        "hf_label_column names a column of hf_dataset": {"hf_label_column": "y"},
        r"sources\[0\] must be": {"sources": [{"folder": "x"}]},
    }
    for message, keys in refused.items():
        with pytest.raises(ConfigError, match=message):
            _image_data(**keys)
    model = resolve_model_config({"tokenizer": {"img_size": 32, "patch_size": 8}})
    with pytest.raises(DataError, match=r"holds no \.tar shards"):
        labelled_data(model, _image_data(shards=str(tmp_path)), registry=get_registry()).split("train")
    with pytest.raises(DataError, match=r"data\.sources\[0\]: a mix reads shards"):
        split_dataset(modality_for(model, registry=get_registry()), _image_data(sources=[{"hf_dataset": "x"}]),
                      model.tokenizer, split="train", training=True)  # fmt: skip


def test_sources_are_drawn_in_proportion_to_their_weights_and_the_realised_shares_are_logged(tmp_path, capsys):
    a = _key_shards(tmp_path / "a", shards=4, per_shard=10)
    b = _key_shards(tmp_path / "b", shards=2, per_shard=5)
    b_keys = {f"b{k}" for k in b}
    for shard in (tmp_path / "b").glob("*.tar"):  # b's keys renamed, so that a key tells its source
        samples = list(wds.WebDataset(str(shard), shardshuffle=False))
        with wds.TarWriter(str(shard)) as writer:
            for sample in samples:
                writer.write({"__key__": f"b{sample['__key__']}", "txt": b"", "png": b"x"})
    shards = [resolve_shards(str(tmp_path / name), key="data.shards") for name in ("a", "b")]
    stream = ShardStream(shards[0], decode=lambda s: [s["__key__"]], samples_per_epoch=400, shuffle_buffer=0,
                         mix=[(shards[0], 3.0), (shards[1], 1.0)])  # fmt: skip
    stream.bind(rank=0, world_size=1, workers=2, batch_size=4, seed=0, finish=lambda item, bad, seed: item)
    stream.set_epoch(0)

    read = [k for batch in DataLoader(stream, batch_size=4, num_workers=2, collate_fn=list) for k in batch]

    from_b = sum(k in b_keys for k in read)
    assert len(read) == 400 and set(read) <= set(a) | b_keys
    assert 0.2 < from_b / 400 < 0.3  # weight 1 of 4
    logged = capsys.readouterr().out
    assert f"{100 * (400 - from_b) / 400:.1f}%" in logged and f"{100 * from_b / 400:.1f}%" in logged, logged


def test_a_hugging_face_folder_and_parquet_files_read_as_the_images_they_hold(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    root = _labelled_images(tmp_path / "images", {"train": 1, "val": 2})
    files = sorted((root / "val").rglob("*.*"))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASSES))})
    table = datasets.Dataset.from_dict(
        {"image": [{"bytes": f.read_bytes(), "path": f.name} for f in files],
         "label": [CLASSES.index(f.parent.name) for f in files]},
        features=features,
    )  # fmt: skip
    table.save_to_disk(str(tmp_path / "hf"))
    table.to_parquet(str(tmp_path / "rows.parquet"))
    model = resolve_model_config({"tokenizer": {"img_size": 32, "patch_size": 8}})
    folder = labelled_data(model, _image_data(root=str(root), heldout_split="val"), registry=get_registry())
    expected = folder.split("heldout")
    by_file = {Path(f).name: expected[i] for i, (f, _) in enumerate(expected.samples)}

    for name in ("hf", "rows.parquet"):
        data = _image_data(hf_dataset=str(tmp_path / name), hf_heldout=str(tmp_path / name))
        rows = labelled_data(model, data, registry=get_registry()).split("heldout")
        assert len(rows) == len(files) and rows.classes == list(CLASSES)
        for i, f in enumerate(files):
            x, label = rows[i]
            assert label == by_file[f.name][1] and torch.equal(x, by_file[f.name][0]), (name, f)


def _parquet_files(tmp_path: Path, files: list[Path], *, per_file: int, label_names: bool = True) -> Path:
    """``files`` as rows of parquet files written by ``datasets`` (an ``Image`` column and a class label), in
    ``tmp_path/pq/part-N.parquet``, ``per_file`` rows each."""
    datasets = pytest.importorskip("datasets")
    label = datasets.ClassLabel(names=list(CLASSES)) if label_names else datasets.Value("int64")
    features = datasets.Features({"image": datasets.Image(), "label": label})
    for k in range(0, len(files), per_file):
        chunk = files[k : k + per_file]
        datasets.Dataset.from_dict(
            {"image": [{"bytes": f.read_bytes(), "path": f.name} for f in chunk],
             "label": [CLASSES.index(f.parent.name) for f in chunk]},
            features=features,
        ).to_parquet(str(tmp_path / "pq" / f"part-{k // per_file}.parquet"))  # fmt: skip
    return tmp_path / "pq"


def test_hf_streaming_reads_parquet_rows_as_shards_every_row_once_per_epoch_as_the_folder_items(tmp_path) -> None:
    """``data.hf_streaming``: parquet files are shards (rows counted from the footers, class names from the
    ClassLabel feature); the training stream over 2 workers reads every row once per epoch, in one order for one
    seed; the held-out rows decode to the folder's items of their files, labels included."""
    root = _labelled_images(tmp_path / "images", {"train": 4, "val": 2})  # 12 training rows, 6 held-out
    train = sorted((root / "train").rglob("*.*"))
    pq = _parquet_files(tmp_path, train, per_file=3)  # 4 files: one per slot of 2 ranks x 2 workers
    model = resolve_model_config({"tokenizer": {"img_size": 32, "patch_size": 8}})
    modality = modality_for(model, registry=get_registry())
    data = _image_data(hf_dataset=str(pq), hf_streaming=True, shuffle_buffer=4)
    stream = split_dataset(modality, data, model.tokenizer, split="train", training=True)
    assert isinstance(stream, ShardStream) and len(stream) == 12 and stream.shards.counts == (3, 3, 3, 3)

    def keys(rank: int, epoch: int) -> list[str]:
        keys_stream = ShardStream(stream.shards, decode=lambda s: [f"{Path(s['__url__']).name}#{s['__key__']}"],
                                  shuffle_buffer=4)  # fmt: skip
        keys_stream.bind(rank=rank, world_size=2, workers=2, batch_size=1, seed=5, finish=lambda i, b, s: i)
        keys_stream.set_epoch(epoch)
        return [k for batch in DataLoader(keys_stream, batch_size=1, num_workers=2, collate_fn=list) for k in batch]

    every = sorted(f"part-{k}.parquet#row{r}" for k in range(4) for r in range(3))
    epoch0 = keys(0, 0) + keys(1, 0)
    assert sorted(epoch0) == every and sorted(keys(0, 1) + keys(1, 1)) == every
    assert keys(0, 0) + keys(1, 0) == epoch0 and keys(0, 1) + keys(1, 1) != epoch0  # seeded; a new order each epoch
    batch = next(iter(DataLoader(stream.bind(rank=0, world_size=1, workers=1, batch_size=2, seed=0,
                                             finish=lambda i, b, s: i), batch_size=2, num_workers=1)))  # fmt: skip
    assert batch.shape == (2, 3, 32, 32)

    val = sorted((root / "val").rglob("*.*"))
    for label_names in (True, False):  # class names from ClassLabel, else 0..max of the column
        shutil.rmtree(tmp_path / "pq")
        _parquet_files(tmp_path, val, per_file=4, label_names=label_names)
        folder = labelled_data(model, _image_data(root=str(root), heldout_split="val"), registry=get_registry())
        expected = folder.split("heldout")
        by_file = {Path(f).name: expected[i] for i, (f, _) in enumerate(expected.samples)}
        data = _image_data(hf_heldout=str(tmp_path / "pq"), hf_streaming=True)
        rows = labelled_data(model, data, registry=get_registry()).split("heldout")
        assert len(rows) == 6 and rows.classes == (list(CLASSES) if label_names else ["0", "1", "2"])
        for i, f in enumerate(val):
            x, label = rows[i]
            assert label == by_file[f.name][1] and torch.equal(x, by_file[f.name][0]), f


def test_hf_streaming_names_bad_rows_and_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    root = _labelled_images(tmp_path / "images", {"train": 1})
    good = (root / "train" / "cats" / "cats.0.png").read_bytes()
    (tmp_path / "pq").mkdir()
    datasets.Dataset.from_dict({"image": [good, None, b"not a known file"], "label": [0, 1, 2]}).to_parquet(
        str(tmp_path / "pq" / "rows.parquet"))  # fmt: skip
    model = resolve_model_config({"tokenizer": {"img_size": 32, "patch_size": 8}})
    modality = modality_for(model, registry=get_registry())
    data = _image_data(hf_heldout=str(tmp_path / "pq"), hf_streaming=True)
    rows = split_dataset(modality, data, model.tokenizer, split="heldout")
    assert rows[0].shape == (3, 32, 32)
    from anymae.core.data.samples import BadSampleError

    shard = tmp_path / "pq" / "rows.parquet"
    with pytest.raises(BadSampleError, match=re.escape(f"shard {shard}, key row1: column 'image' holds no file")):
        rows[1]
    with pytest.raises(BadSampleError, match="key row2: cannot tell the file type"):
        rows[2]
    with pytest.raises(ValueError, match="hf_streaming names a column of hf_dataset"):
        _image_data(hf_streaming=True)
    datasets.Dataset.from_dict({"image": [good]}).save_to_disk(str(tmp_path / "saved"))
    for name, message in (("saved", "is a `save_to_disk` folder"), ("missing", "reads local parquet files"),
                          ("images", "names no parquet files")):  # fmt: skip
        data = _image_data(hf_dataset=str(tmp_path / name), hf_streaming=True)
        with pytest.raises(DataError, match=re.escape(f"data.hf_dataset: {tmp_path / name}") + ".*" + message):
            split_dataset(modality, data, model.tokenizer, split="train", training=True)
    (tmp_path / "pq" / "broken.parquet").write_bytes(b"PAR1 cut short")
    with pytest.raises(DataError, match=r"broken\.parquet is not a readable parquet file"):
        split_dataset(modality, _image_data(hf_dataset=str(tmp_path / "pq"), hf_streaming=True), model.tokenizer,
                      split="train", training=True)  # fmt: skip


def test_embed_and_visualize_take_a_shard_or_one_sample_of_it(tmp_path: Path, capsys: Any) -> None:
    from safetensors import safe_open

    from anymae.core.evaluate.embed import expand_inputs

    root = _labelled_images(tmp_path / "images", {"val": 1})
    pack(root / "val", tmp_path / "sh", modality="image", registry=get_registry(), shard_size=10, progress=False)
    shard = tmp_path / "sh" / "shard-000000.tar"
    extracted = expand_inputs([shard])
    originals = {
        str(p.relative_to(root / "val").with_suffix("")).replace(".", "_"): p for p in (root / "val").rglob("*.*")
    }
    assert sorted(p.read_bytes() for p in extracted) == sorted(p.read_bytes() for p in originals.values())
    checkpoint = export_safetensors(tiny_mae(), tmp_path / "random.safetensors")

    assert main(["embed", str(checkpoint), str(shard), "-o", str(tmp_path / "a.safetensors"), "--no-progress"]) == 0
    assert main(["embed", str(checkpoint), *map(str, originals.values()), "-o", str(tmp_path / "b.safetensors"),
                 "--no-progress"]) == 0  # fmt: skip
    with safe_open(str(tmp_path / "a.safetensors"), "pt") as a, safe_open(str(tmp_path / "b.safetensors"), "pt") as b:
        rows_a, rows_b = a.get_tensor("features"), b.get_tensor("features")
    assert rows_a.shape == rows_b.shape == (3, 16)
    assert torch.allclose(rows_a.sort(dim=0).values, rows_b.sort(dim=0).values)
    key = next(iter(originals))
    assert main(["visualize", str(checkpoint), f"{shard}#{key}", "-o", str(tmp_path / "r.png")]) == 0
    assert (tmp_path / "r.png").is_file()
