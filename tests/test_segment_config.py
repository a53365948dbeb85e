"""Every ``train.*``, ``optim.*`` and ``segment.*`` field means something in ``anymae segment``: a short run reads it,
or setting it to anything but its default is refused when the config is read, naming the field; the data section
is validated against the modality's segmentation data config, and a model section must match the checkpoint."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from test_config_fields import _one_nan_loss, _Reads
from test_segment_command import _config, _data

import anymae.modalities.image
from anymae.core.config import ConfigError, SegmentHeadConfig, SegmentOptimConfig, TrainConfig, load_segment_config
from anymae.core.config.segment import SEGMENT_UNSUPPORTED
from anymae.core.io.checkpoint import CheckpointError, read_checkpoint
from anymae.core.model.heads import SegmentationHead, resize_bilinear
from anymae.core.train import task_segment, trainer
from anymae.core.train.task_segment import segment_from_config
from anymae.plugins import hookimpl

REFUSED_VALUES = {"train.distributed": "fsdp", "train.fsdp_reshard_after_forward": "false",
                  "train.checkpoint_decoder_blocks": "1", "train.heldout_batches": "2", "train.knn": "false",
                  "segment.rel_pos_bias": "true"}  # fmt: skip


def test_every_train_optim_and_segment_field_is_read_by_a_segment_run_or_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tmp_path, _data(tmp_path / "data"))
    overrides = [f"train.output_dir={tmp_path / 'runs'}", "train.epochs=1", "train.save_every_steps=1",
                 "train.keep_last=1", "segment.layers=[0,1,2,3]", "segment.aux_weight=0.4",
                 "segment.crop=32", "train.on_nonfinite=skip", "train.num_workers=1",
                 "train.prefetch_factor=2"]  # fmt: skip
    cfg = load_segment_config(config, overrides)
    reads = _Reads()
    reads.patch_plain_copies(monkeypatch)
    monkeypatch.setattr(task_segment, "config_to_dict", reads.paused_copy(task_segment.config_to_dict))
    for section in ("train", "optim", "segment"):
        reads.watch(section, getattr(cfg, section))
    calls = _one_nan_loss(monkeypatch, task_segment.SegmentTask)  # the second step is skipped
    result = segment_from_config(cfg, progress=False)
    assert result.images == 4 and calls["n"] == 2
    assert [p.name for p in result.run_dir.glob("checkpoint-step*.pt")] == ["checkpoint-step00000001.pt"]
    for section, cls in (("train", TrainConfig), ("optim", SegmentOptimConfig), ("segment", SegmentHeadConfig)):
        unread = {f.name for f in dataclasses.fields(cls)} - reads.seen[section]
        refused = {key.split(".")[1] for key in SEGMENT_UNSUPPORTED if key.startswith(f"{section}.")}
        assert unread <= refused, f"{section} fields neither read nor refused: {sorted(unread - refused)}"
    assert trainer.Trainer  # the loop the run went through


@pytest.mark.parametrize("key", sorted(SEGMENT_UNSUPPORTED))
def test_segment_refuses_each_setting_it_cannot_honour_naming_it(tmp_path: Path, key: str) -> None:
    config = _config(tmp_path, _data(tmp_path / "data", train=1, heldout=1))
    with pytest.raises(ConfigError, match=key.split(".")[1]):
        load_segment_config(config, [f"{key}={REFUSED_VALUES[key]}"])


def test_segment_data_and_model_sections_are_checked_when_read(tmp_path: Path) -> None:
    config = _config(tmp_path, _data(tmp_path / "data", train=1, heldout=1))
    with pytest.raises(ConfigError, match=r"unknown config key 'data.cat_max'; did you mean 'cat_max_ratio'"):
        load_segment_config(config, ["data.cat_max=0.5"])
    with pytest.raises(ConfigError, match="num_classes is required"):
        load_segment_config(config, ["data.num_classes=0"])
    with pytest.raises(ConfigError, match=r"model.mask_ratio=0.5 is not used by anymae segment"):
        load_segment_config(config, ["model.mask_ratio=0.5"])
    cfg = load_segment_config(config, ["model.embed_dim=32", "model.num_heads=2"])
    with pytest.raises(CheckpointError, match=r"model.embed_dim: 32 here, 16 in the file"):
        segment_from_config(cfg, progress=False)


class CentreHead(SegmentationHead):
    """A plugin's head: a 1x1 convolution on the last map, its width ``hidden`` an option of its own."""

    def __init__(self, *, in_channels: int, num_classes: int, patch_size: int, hidden: int = 4) -> None:
        super().__init__()
        self.num_maps, self.aux_weight, self.patch_size = 1, 0.0, patch_size
        self.conv = torch.nn.Sequential(
            torch.nn.Conv2d(in_channels, hidden, 1), torch.nn.Conv2d(hidden, num_classes, 1)
        )

    def forward(self, features):
        return resize_bilinear(self.conv(features[-1]), self.output_size(features[-1])), None


class HeadPlugin:
    @hookimpl
    def anymae_register_segmentation_heads(self, register):
        register("centre", CentreHead)


def test_a_plugin_registers_a_segmentation_head_that_configs_name(tmp_path: Path, anymae_registry) -> None:
    registry = anymae_registry(anymae.modalities.image, ("heads", HeadPlugin()))
    assert set(registry.segmentation_heads) == {"linear", "upernet", "centre"}
    config = _config(tmp_path, _data(tmp_path / "data", train=4, heldout=1))
    with pytest.raises(ConfigError, match=r"segment\.channels: the 'centre' head has no such option"):
        load_segment_config(config, ["segment.head=centre"], registry=registry)
    with pytest.raises(ConfigError, match=r"unknown segmentation head 'center'.*did you mean 'centre'"):
        load_segment_config(config, ["segment.head=center", "segment.channels=null"], registry=registry)
    cfg = load_segment_config(config, ["segment.head=centre", "segment.channels=null", "train.epochs=1",
                                       f"train.output_dir={tmp_path}"], registry=registry)  # fmt: skip
    result = segment_from_config(cfg, progress=False)
    model = read_checkpoint(result.last_checkpoint)
    assert model["config"]["segmenter"]["head"] == "centre" and model["config"]["segmenter"]["layers"] == [3]
    assert model["model"]["head.conv.0.weight"].shape == (4, 16, 1, 1)
