"""``anymae segment`` and ``anymae detect`` read tar shards: ``anymae pack --task segment|detect`` writes the image
with its label map or its COCO annotations, the samples decode to the folder's items through the modality's own
segmentation and detection datasets, a run trains from packed shards, and a bad sample is named and counted."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path
from typing import Any

import torch
import webdataset as wds
from test_detect_command import _config as _detect_config
from test_detect_command import _data as _coco_data
from test_segment_command import FINAL, _config, _data

from anymae.core.build.pack import pack
from anymae.core.build.shard_source import detection_split, segmentation_split
from anymae.core.cli import main
from anymae.core.config import resolve_model_config
from anymae.core.config.detect import load_detect_config
from anymae.core.config.segment import load_segment_config
from anymae.core.data.samples import seeded
from anymae.plugins import get_registry


def _members(shard: Path) -> dict[str, bytes]:
    """Every member of a shard and its bytes, read with the standard library (not webdataset)."""
    with tarfile.open(shard) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def _keys(folder: Path) -> list[str]:
    return [s["__key__"] for s in wds.WebDataset(str(folder / "shard-000000.tar"), shardshuffle=False)]


def _tokenizer(patch_size: int) -> Any:
    return resolve_model_config(
        {"modality": "image", "tokenizer": {"img_size": 32, "patch_size": patch_size}}
    ).tokenizer


def test_packed_segmentation_samples_hold_image_and_label_map_and_decode_to_the_folder_items(tmp_path: Path) -> None:
    data = _data(tmp_path / "data")
    report = pack(data / "images" / "validation", tmp_path / "val", modality="image", registry=get_registry(),
                  task="segment", progress=False)  # fmt: skip
    members = _members(tmp_path / "val" / "shard-000000.tar")
    assert report.samples == 4 and not report.bad
    for i in range(4):  # the bytes as they are: KEY.png (image) and KEY.seg.png (label map)
        assert members[f"{i:03d}.png"] == (data / "images" / "validation" / f"{i:03d}.png").read_bytes()
        assert members[f"{i:03d}.seg.png"] == (data / "annotations" / "validation" / f"{i:03d}.png").read_bytes()

    config, modality, tokenizer = _config(tmp_path, data), get_registry().modality("image"), _tokenizer(4)
    expected = modality.build_segmentation_dataset(load_segment_config(config).data, tokenizer, split="heldout",
                                                   train=False)  # fmt: skip
    shards = load_segment_config(config, [f"data.heldout_shards={tmp_path / 'val'}"]).data
    got = segmentation_split(modality, shards, tokenizer, split="heldout", train=False)
    assert len(got) == len(expected) == 4
    for i, key in enumerate(_keys(tmp_path / "val")):
        (image, mask), (image_f, mask_f) = got[i], expected[int(key)]
        assert torch.equal(image, image_f) and torch.equal(mask, mask_f), key

    # The training pipeline (random rescale, crop, flip) draws the same from a shard sample as from its files.
    stream = segmentation_split(modality, load_segment_config(config, [f"data.shards={tmp_path / 'val'}"]).data,
                                tokenizer, split="train", train=True)  # fmt: skip
    sample = next(iter(wds.WebDataset(str(tmp_path / "val" / "shard-000000.tar"), shardshuffle=False)))
    folder_train = modality.build_segmentation_dataset(
        load_segment_config(config, ["data.train_split=validation"]).data, tokenizer, split="train", train=True
    )
    with seeded(3):
        ((image, mask),) = stream.decode(sample)
    with seeded(3):
        image_f, mask_f = folder_train[int(sample["__key__"])]
    assert torch.equal(image, image_f) and torch.equal(mask, mask_f)


def test_packed_coco_samples_decode_to_the_folder_items_boxes_masks_labels_and_ground_truth(tmp_path: Path) -> None:
    data = _coco_data(tmp_path / "data", heldout=3)
    registry = get_registry()
    for split in ("train", "heldout"):
        pack(data / "annotations" / f"{split}.json", tmp_path / split, modality="image", registry=registry,
             task="detect", images=data / "images" / split, progress=False)  # fmt: skip
    member = json.loads(_members(tmp_path / "heldout" / "shard-000000.tar")["001.json"])
    assert [im["id"] for im in member["images"]] == [1] and {a["image_id"] for a in member["annotations"]} == {1}
    manifest = json.loads((tmp_path / "train" / "manifest.json").read_text())
    assert manifest["samples"] == 8  # 6 + negative + corrupt (bytes as they are); the missing file left out

    config = _detect_config(tmp_path, data)
    folder = load_detect_config(config).data
    shards = load_detect_config(config, [f"data.heldout_shards={tmp_path / 'heldout'}"]).data
    modality, tokenizer = registry.modality("image"), _tokenizer(8)
    expected = modality.build_detection_dataset(folder, tokenizer, split="heldout", augment=None)
    got = detection_split(modality, shards, tokenizer, split="heldout", augment=None)
    assert len(got) == len(expected) == 3
    by_id = {int(expected[i][1]["image_id"]): expected[i] for i in range(3)}
    for i in range(3):
        image, target = got[i]
        image_f, target_f = by_id[int(target["image_id"])]
        assert torch.equal(image, image_f) and target.keys() == target_f.keys()
        assert all(torch.equal(target[k], target_f[k]) for k in target), i
    truth, truth_f = got.instances.ground_truth(), expected.instances.ground_truth()
    assert truth["annotations"] == truth_f["annotations"] and truth["categories"] == truth_f["categories"]
    assert [im["id"] for im in truth["images"]] == [im["id"] for im in truth_f["images"]]

    # Training items with the large-scale jitter: the same draws from a shard sample as from its file.
    augment = {"recipe": "lsj", "size": 64, "scale": (0.8, 1.25)}
    stream = detection_split(modality, load_detect_config(config, [f"data.shards={tmp_path / 'train'}"]).data,
                             tokenizer, split="train", augment=augment, training=True)  # fmt: skip
    folder_train = modality.build_detection_dataset(folder, tokenizer, split="train", augment=augment)
    index = {im.path.name: i for i, im in enumerate(folder_train.instances.images)}
    sample = next(s for s in wds.WebDataset(str(tmp_path / "train" / "shard-000000.tar"), shardshuffle=False)
                  if s["__key__"] == "003")  # fmt: skip
    with seeded(5):
        ((image, target),) = stream.decode(sample)
    with seeded(5):
        image_f, target_f = folder_train[index["003.png"]]
    assert torch.equal(image, image_f) and all(torch.equal(target[k], target_f[k]) for k in target)
    assert stream.instances.category_ids == [3, 5]


def test_segment_trains_from_packed_shards_and_names_and_counts_a_bad_sample(tmp_path: Path, capsys) -> None:
    data = _data(tmp_path / "data")
    for split in ("training", "validation"):
        assert main(["pack", str(data / "images" / split), str(tmp_path / split), "--modality", "image", "--task",
                     "segment", "--no-progress"]) == 0  # fmt: skip
    with wds.TarWriter(str(tmp_path / "training" / "shard-000001.tar")) as writer:  # a label map missing
        writer.write({"__key__": "lonely", "png": (data / "images" / "training" / "000.png").read_bytes()})
    manifest = json.loads((tmp_path / "training" / "manifest.json").read_text())
    manifest["shards"].append({"name": "shard-000001.tar", "count": 1})
    (tmp_path / "training" / "manifest.json").write_text(json.dumps(manifest))
    config = _config(tmp_path, data)
    capsys.readouterr()

    code = main(["segment", str(config), "train.epochs=1", f"train.output_dir={tmp_path / 'runs'}",
                 f"data.shards={tmp_path / 'training'}", f"data.heldout_shards={tmp_path / 'validation'}",
                 "data.shuffle_buffer=4", "train.max_bad_fraction=0.5", "--no-progress"])  # fmt: skip

    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert FINAL.findall(captured.out)[0][2] == "4"
    assert f"data: the train split reads {tmp_path / 'training'}" in captured.out
    shard = tmp_path / "training" / "shard-000001.tar"
    assert re.search(rf"shard {re.escape(str(shard))}, key lonely: a segmentation sample holds one image", captured.err)
    rows = [json.loads(line) for line in (tmp_path / "runs" / "seg" / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("bad_samples", 0) for r in rows) == 1


def test_detect_trains_from_packed_shards_to_the_final_line_and_names_and_counts_a_bad_sample(
    tmp_path: Path, capsys
) -> None:
    data = _coco_data(tmp_path / "data", train=4, heldout=2)  # with a corrupt training image and a missing one
    for split in ("train", "heldout"):
        argv = ["pack", str(data / "annotations" / f"{split}.json"), str(tmp_path / split), "--modality", "image",
                "--task", "detect", "--images", str(data / "images" / split), "--no-progress"]  # fmt: skip
        assert main(argv) == 0
    assert "train.json: 1 images listed but not found" in capsys.readouterr().out  # said by pack
    config = _detect_config(tmp_path, data)

    code = main(["detect", str(config), "train.epochs=1", f"train.output_dir={tmp_path / 'runs'}", "data.root=",
                 f"data.shards={tmp_path / 'train'}", f"data.heldout_shards={tmp_path / 'heldout'}",
                 "--no-progress"])  # fmt: skip

    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.strip().splitlines()[-1].endswith("on 2 held-out images")
    assert "data heldout: 2 images (0 without objects), 4 objects (0 crowd)" in captured.out
    assert "data train: shards (what their COCO file dropped or clipped, anymae pack said)" in captured.out
    shard = tmp_path / "train" / "shard-000000.tar"
    assert f"shard {shard}, key corrupt: cannot read image" in captured.err
    rows = [json.loads(line) for line in (tmp_path / "runs" / "det" / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("bad_samples", 0) for r in rows) >= 1


def test_segment_and_detect_refuse_a_datasets_table_naming_the_key(tmp_path: Path, capsys) -> None:
    config = _config(tmp_path, _data(tmp_path / "data", train=1, heldout=1))
    assert main(["segment", str(config), f"data.hf_dataset={tmp_path}", "--no-progress"]) != 0
    assert "data.hf_dataset: anymae segment reads folders or shards" in capsys.readouterr().err
    config = _detect_config(tmp_path, _coco_data(tmp_path / "coco", train=1, heldout=1, bad=False))
    assert main(["detect", str(config), f"data.hf_heldout={tmp_path}", "--no-progress"]) != 0
    assert "data.hf_heldout: anymae detect reads folders or shards" in capsys.readouterr().err
