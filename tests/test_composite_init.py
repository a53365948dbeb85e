"""A composite started from one single-modality MAE per part (``model.parts.<name>.init_from``): which tensor of
which file lands where, what stays fresh, and the refusals that name the part."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from anymae.core.build.models import build_model
from anymae.core.config import ConfigError, resolve_config, resolve_model_config
from anymae.core.io.checkpoint import CheckpointError
from anymae.core.weights.init_from import init_model_from

WIDTHS = {"embed_dim": 32, "num_heads": 2, "decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2}
IMAGE = {"img_size": 32, "patch_size": 8}
AUDIO = {"target_length": 64, "num_mel_bins": 32, "patch_size": 16}


def save_mae(path: Path, modality: str, tokenizer: dict[str, Any], *, depth: int, seed: int) -> Any:
    """A single-modality MAE at a seeded init, saved as an anymae checkpoint -> the model."""
    torch.manual_seed(seed)
    model = build_model(resolve_model_config({"modality": modality, "tokenizer": tokenizer, "depth": depth, **WIDTHS}))
    torch.save({"format": "anymae", "config": {"model": model.config["model"]}, "model": model.state_dict()}, path)
    return model


def composite_cfg(tmp_path: Path, **model: Any) -> Any:
    parts = {"image": {"tokenizer": IMAGE, "init_from": str(tmp_path / "image.pt")},
             "audio": {"tokenizer": AUDIO, "init_from": str(tmp_path / "audio.pt")}}  # fmt: skip
    return resolve_model_config({"modality": "composite", "parts": parts, "depth": 1, "part_depth": 1, **WIDTHS,
                                 **model})  # fmt: skip


def test_each_part_starts_from_its_own_file_and_the_shared_encoder_from_the_first(tmp_path):
    image = save_mae(tmp_path / "image.pt", "image", IMAGE, depth=2, seed=1)
    audio = save_mae(tmp_path / "audio.pt", "audio", AUDIO, depth=2, seed=2)
    cfg = composite_cfg(tmp_path)
    torch.manual_seed(3)
    model = build_model(cfg)
    fresh_embed = model.parts["audio"].modality_embed.detach().clone()
    report = init_model_from(model, cfg, log=False)
    assert set(report["parts"]) == {"image", "audio"}
    for name, source in (("image", image), ("audio", audio)):
        part = model.parts[name]
        for mine, theirs in ((part.tokenizer, source.tokenizer), (part.blocks[0], source.encoder.blocks[0]),
                             (part.decoder, source.decoder)):  # fmt: skip
            for (key, a), b in zip(mine.state_dict().items(), theirs.state_dict().values(), strict=True):
                assert torch.equal(a, b), f"{name}: {key}"
    # The shared block, norm and CLS: the first part's file (image), its block 1 after the part's block 0.
    for a, b in zip(model.encoder.blocks[0].state_dict().values(), image.encoder.blocks[1].state_dict().values(),
                    strict=True):  # fmt: skip
        assert torch.equal(a, b)
    assert torch.equal(model.encoder.norm.weight, image.encoder.norm.weight)
    assert torch.equal(model.encoder.cls_token, image.encoder.cls_token)
    assert torch.equal(model.parts["audio"].modality_embed, fresh_embed)  # no file has one
    assert any("shared encoder comes from image's file" in n for n in report["parts"]["audio"]["notes"])


def test_a_joint_decoder_stays_fresh_and_the_files_decoders_are_noted_unused(tmp_path):
    save_mae(tmp_path / "image.pt", "image", IMAGE, depth=2, seed=1)
    save_mae(tmp_path / "audio.pt", "audio", AUDIO, depth=2, seed=2)
    cfg = composite_cfg(tmp_path, joint_decoder=True)
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    report = init_model_from(model, cfg, log=False)
    assert all(torch.equal(v, model.decoder.state_dict()[k]) for k, v in before.items())
    assert any("model.joint_decoder" in n for n in report["parts"]["image"]["notes"])


def test_a_file_of_another_modality_or_depth_is_refused_naming_the_part_before_any_write(tmp_path):
    save_mae(tmp_path / "image.pt", "image", IMAGE, depth=2, seed=1)
    save_mae(tmp_path / "audio.pt", "image", IMAGE, depth=2, seed=2)  # an image MAE where the audio part wants audio
    cfg = composite_cfg(tmp_path)
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"model\.parts\.audio\.init_from=.*holds a image model"):
        init_model_from(model, cfg, log=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    save_mae(tmp_path / "audio.pt", "audio", AUDIO, depth=2, seed=2)
    save_mae(tmp_path / "image.pt", "image", IMAGE, depth=3, seed=1)  # one block more than part + shared
    with pytest.raises(
        CheckpointError, match=r"model\.parts\.image\.init_from: .*encoder\.blocks\.2\..*in the file, not"
    ):
        init_model_from(model, cfg, log=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    save_mae(tmp_path / "image.pt", "image", IMAGE, depth=2, seed=1)
    torch.manual_seed(2)  # the audio file's MLPs half as wide: refused after the image part was loaded, and undone
    narrow = build_model(resolve_model_config({"modality": "audio", "tokenizer": AUDIO, "depth": 2, "mlp_ratio": 2.0,
                                               **WIDTHS}))  # fmt: skip
    torch.save({"format": "anymae", "config": {"model": narrow.config["model"]}, "model": narrow.state_dict()},
               tmp_path / "audio.pt")  # fmt: skip
    with pytest.raises(CheckpointError, match=r"model\.parts\.audio\.init_from: .*blocks\.0\.mlp\.fc1\.weight"):
        init_model_from(model, cfg, log=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    save_mae(tmp_path / "audio.pt", "audio", {**AUDIO, "num_mel_bins": 64}, depth=2, seed=2)  # 2x the tokens: fine
    init_model_from(model, cfg, log=False)  # the tokenizer's kernel is the same, the position table is rebuilt


def test_composite_init_keys_are_checked_when_read(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.init_from: a composite starts each part from its own file"):
        resolve_config({"model": {"modality": "composite", "parts": {"image": {}, "audio": {}}, "init_from": "x"}})
    with pytest.raises(ConfigError, match=r"model\.parts\.audio: init_bands must be"):
        resolve_model_config({"modality": "composite", "parts": {"image": {}, "audio": {"init_bands": [0]}}})
