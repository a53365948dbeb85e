"""Declared seams: the one choice of the modality that reads a model's data, the one way labelled splits are
asked for, the mask token a decoder declares, and the L-BFGS probe's count of unreadable training files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_mae
from PIL import Image
from torch import Tensor, nn

from anymae.core.build.composite_data import CompositeModality
from anymae.core.build.data_source import labelled_data, modality_for
from anymae.core.config import ConfigError, load_classify_config, resolve_model_config
from anymae.core.model.decoder import DecoderArgs
from anymae.core.train.probe import train_probe
from anymae.plugins import hookimpl
from anymae.plugins.manager import load_registry

_PARTS = {
    "video": {"modality": "video", "tokenizer": {"num_frames": 4, "img_size": 16, "patch_size": 8, "tubelet_size": 2}},
    "audio": {"modality": "audio", "tokenizer": {"target_length": 32, "num_mel_bins": 16, "patch_size": 8}},
}


def _composite_config() -> dict:
    return {"modality": "composite", "parts": _PARTS, "embed_dim": 16, "depth": 1, "num_heads": 2,
            "decoder_embed_dim": 8, "decoder_depth": 1, "decoder_num_heads": 2}  # fmt: skip


def test_modality_for_a_one_modality_model_is_the_registered_modality() -> None:
    registry = load_registry()
    cfg = resolve_model_config({"modality": "audio"}, registry)

    assert modality_for(cfg, registry=registry) is registry.modalities["audio"].obj


def test_modality_for_a_composite_reads_the_named_parts_with_their_own_modalities() -> None:
    registry = load_registry()
    cfg = resolve_model_config(_composite_config(), registry)

    every = modality_for(cfg, registry=registry)
    audio = modality_for(cfg, registry=registry, parts=["audio"])

    assert isinstance(every, CompositeModality) and list(every.modalities) == ["video", "audio"]
    assert every.modalities["video"] is registry.modalities["video"].obj
    assert list(audio.modalities) == ["audio"] and audio.configs["audio"].tokenizer.target_length == 32
    with pytest.raises(KeyError, match="'image'"):
        modality_for(cfg, registry=registry, parts=["image"])


def test_labelled_data_validates_tokenizer_overrides_against_the_modalitys_config() -> None:
    registry = load_registry()
    cfg = resolve_model_config({"modality": "image", "tokenizer": {"img_size": 32, "patch_size": 8}}, registry)

    plain = labelled_data(cfg, None, registry=registry)
    larger = labelled_data(cfg, None, registry=registry, tokenizer_overrides={"img_size": 48})

    assert (plain.tokenizer.img_size, plain.tokenizer.patch_size) == (32, 8)
    assert (larger.tokenizer.img_size, larger.tokenizer.patch_size) == (48, 8)
    with pytest.raises(ConfigError, match="img_sise"):
        labelled_data(cfg, None, registry=registry, tokenizer_overrides={"img_sise": 48})


class _OwnMaskTokenDecoder(nn.Module):
    """A plugin decoder that is no MaskTokenDecoder but declares a learned ``mask_token`` (the hookspec's name)."""

    def __init__(self, **args: DecoderArgs) -> None:
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, args["embed_dim"]))
        self.pred = nn.Linear(args["in_dim"], args["out_dim"])

    def forward(self, latent: Tensor, ids_restore: Tensor, select: Tensor | None = None) -> Tensor:
        raise NotImplementedError


class _DecoderPlugin:
    @hookimpl
    def anymae_register_decoders(self, register) -> None:
        register("own_mask_token", _OwnMaskTokenDecoder)


def test_a_plugin_decoders_declared_mask_token_gets_the_official_init() -> None:
    from anymae.core.build.models import build_model

    registry = load_registry(plugins=[("own", _DecoderPlugin())])
    cfg = resolve_model_config(
        {"tokenizer": {"img_size": 16, "patch_size": 8}, "embed_dim": 16, "depth": 1, "num_heads": 2,
         "decoder": "own_mask_token", "decoder_embed_dim": 4096},
        registry,
    )  # fmt: skip
    torch.manual_seed(0)
    token = build_model(cfg, registry=registry).decoder.mask_token.detach()

    assert float(token.abs().max()) > 0  # left at zero if the init missed it
    assert abs(float(token.std()) - 0.02) < 0.002  # N(0, 0.02) over 4096 values: std within 10%


def _crops(root: Path, *, per_class: int) -> Path:
    """Two classes of 16x16 crops (a bright and a dark noise texture), training and held-out splits."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name, base in (("bright", 200), ("dark", 40)):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = np.clip(base + rng.normal(0, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def _probe(checkpoint: Path, root: Path, runs: Path) -> object:
    cfg = load_classify_config(
        "demo_image_linprobe",
        [f"linprobe.checkpoint={checkpoint}", f"data.root={root}", "data.heldout_split=val", "linprobe.l2=[0.01]",
         "train.batch_size=4", "train.num_workers=0", "train.max_bad_fraction=0.2", "train.device=cpu",
         f"train.output_dir={runs}"],
        mode="linprobe",
    )  # fmt: skip
    from anymae.core.weights.loading import load_model

    return train_probe(cfg, load_model(checkpoint), progress=False)


def test_lbfgs_probe_names_skips_and_counts_an_unreadable_training_image(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from anymae.core.io.checkpoint import export_safetensors, read_checkpoint

    checkpoint = export_safetensors(tiny_mae(), tmp_path / "mae.safetensors")
    broken = _crops(tmp_path / "broken", per_class=5)
    without = tmp_path / "without"
    shutil.copytree(broken, without)
    (without / "train" / "dark" / "2.png").unlink()  # the reference: the same data without that file
    (broken / "train" / "dark" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")  # a truncated PNG

    reference = _probe(checkpoint, without, tmp_path / "runs-without")
    capsys.readouterr()
    with pytest.warns(UserWarning, match="2.png"):
        result = _probe(checkpoint, broken, tmp_path / "runs-broken")

    assert result.skipped == 1
    assert "(1 unreadable training files skipped)" in capsys.readouterr().out
    saved = read_checkpoint(result.best_checkpoint)
    assert saved["probe"]["skipped"] == 1
    ours, theirs = saved["model"], read_checkpoint(reference.best_checkpoint)["model"]
    for key in ("head_bn.running_mean", "head_bn.running_var", "head.weight", "head.bias"):
        assert torch.allclose(ours[key], theirs[key], atol=1e-6), key
