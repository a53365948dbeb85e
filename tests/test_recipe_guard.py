"""The recipe/data mismatch line (anymae.core.train.recipe_guard): its numbers are worked out here by hand from the
bundled configs' values, and a fine-tuning run through the CLI prints it once."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from anymae.core.build.models import build_model
from anymae.core.cli import main
from anymae.core.config import load_classify_config, resolve_model_config
from anymae.core.io.checkpoint import write_checkpoint
from anymae.core.train.recipe_guard import recipe_warning


def test_imagenet_recipe_on_imagenet_is_quiet() -> None:
    # ImageNet-1k: 1,281,167 images, effective batch 32 x 32 GPUs = 1024: 1251 steps an epoch, 125,100 in all,
    # warm-up 5 of 100 epochs (5%).
    cfg = load_classify_config("mae_vit_base_finetune")
    assert recipe_warning(cfg, 1_281_167, world_size=32) is None


def test_imagenet_recipe_on_a_small_folder_names_the_numbers() -> None:
    # 1300 images at batch 32 on one process: 1300 // 32 = 40 steps an epoch, x 10 epochs = 400 steps;
    # warm-up 5 epochs = 50% of 10; mixup 0.8 / cutmix 1.0 on 400 < 1000 steps.
    cfg = load_classify_config("mae_vit_base_finetune", ["train.epochs=10"])
    assert recipe_warning(cfg, 1300) == (
        "recipe check: 400 optimizer steps (10 epochs x 40 steps of 1300 items); warm-up 5 epochs = 50% of the run "
        "(over 10%); mixup 0.8 / cutmix 1 are ImageNet-scale regularisers (that recipe: 100 epochs x 1251 steps) "
        "on under 1000 steps: for small data see configs/demo_image_finetune.yaml"
    )


def test_steps_count_accumulation_processes_and_balanced_draws() -> None:
    # AudioMAE AS-2M: epoch_samples 200000 balanced draws, batch 64 x accum 4 x 2 processes = 512 a step:
    # 200000 // 512 = 390 steps an epoch; 1 of 3 epochs of warm-up is 33%.
    cfg = load_classify_config(
        "audiomae_vit_base_as2m_finetune",
        ["train.epochs=3", "train.batch_size=64", "train.accum_iter=4", "optim.warmup_epochs=1", "finetune.mixup=0"],
    )
    assert cfg.finetune.epoch_samples == 200_000 and cfg.finetune.cutmix == 0
    line = recipe_warning(cfg, 5, world_size=2)  # the items' count is not the epoch's draws here
    assert line == (
        "recipe check: 1170 optimizer steps (3 epochs x 390 steps of 200000 items); warm-up 1 epochs = 33% of the "
        "run (over 10%): for small data see configs/demo_audio_finetune.yaml"
    )


def test_warm_up_of_exactly_a_tenth_and_mixing_over_1000_steps_pass() -> None:
    # 2 of 20 epochs of warm-up is 10% (not over it); 32 x 20 = 640 steps without mixing.
    cfg = load_classify_config("demo_video_finetune", ["train.epochs=20", "optim.warmup_epochs=2"])
    assert recipe_warning(cfg, 512) is None
    # mixing on 1000 steps (50 epochs x 20 steps) is not under 1000.
    cfg = load_classify_config("mae_vit_base_finetune", ["train.epochs=50", "train.batch_size=32"])
    assert recipe_warning(cfg, 640) is None
    assert recipe_warning(cfg, 639) is not None  # 19 steps an epoch: 950


def test_linear_probe_points_to_its_own_small_data_config() -> None:
    cfg = load_classify_config("demo_image_linprobe", ["preset=lars"])  # 1 of 5 epochs of warm-up (20%)
    assert recipe_warning(cfg, 640) == (
        "recipe check: 50 optimizer steps (5 epochs x 10 steps of 640 items); warm-up 1 epochs = 20% of the run "
        "(over 10%): for small data see configs/demo_image_linprobe.yaml"
    )


def _tiny_checkpoint(path: Path) -> Path:
    raw = {
        "modality": "image",
        "tokenizer": {"img_size": 16, "patch_size": 8, "in_chans": 3},
        "embed_dim": 16,
        "depth": 1,
        "num_heads": 2,
        "decoder_embed_dim": 16,
        "decoder_depth": 1,
        "decoder_num_heads": 2,
    }
    mae = build_model(resolve_model_config(raw))
    return write_checkpoint(
        {"format": "anymae", "config": {"model": mae.config["model"]}, "model": mae.state_dict()}, path
    )


@pytest.mark.parametrize("warmup, printed", [(1, True), (0, False)])
def test_finetune_prints_the_line_once(tmp_path: Path, capsys, warmup: int, printed: bool) -> None:
    for split, count in (("train", 8), ("val", 2)):
        for cls, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
            (tmp_path / "data" / split / cls).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (16, 16), colour).save(tmp_path / "data" / split / cls / f"{i}.png")
    ckpt = _tiny_checkpoint(tmp_path / "mae.pt")
    main([
        "finetune", "demo_image_finetune", "--no-progress", f"finetune.checkpoint={ckpt}",
        f"data.root={tmp_path / 'data'}", "finetune.mixup=0", "finetune.cutmix=0", "finetune.auto_augment=null",
        "train.epochs=2", "train.batch_size=4", "train.num_workers=0", "train.pin_memory=false",
        "train.device=cpu", f"optim.warmup_epochs={warmup}", f"train.output_dir={tmp_path / 'runs'}",
    ])  # fmt: skip
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("recipe check:")]
    # 16 images // 4 = 4 steps an epoch, x 2 epochs = 8; warm-up 1 of 2 epochs = 50%.
    expected = "recipe check: 8 optimizer steps (2 epochs x 4 steps of 16 items); warm-up 1 epochs = 50% of the run"
    assert [line.startswith(expected) for line in lines] == ([True] if printed else [])


@pytest.mark.parametrize("recipe", ["finetune", "linprobe"])
def test_image_data_hflip_false_turns_off_the_classifier_training_flip(tmp_path: Path, recipe: str) -> None:
    """The small-data option for classes a mirror image changes: ``data.hflip: false`` (issue 21). A red-left /
    blue-right image keeps red on the left in every crop without the flip; with it, some crops show it mirrored."""
    import torch

    from anymae.modalities.image.modality import ImageDataConfig, ImageModality, ImageTokenizerConfig

    pixels = Image.new("RGB", (32, 32), (0, 0, 255))
    pixels.paste((255, 0, 0), (0, 0, 16, 32))
    for cls in ("a", "b"):  # classification needs two classes; item 0 is a/0.png
        (tmp_path / "train" / cls).mkdir(parents=True)
        pixels.save(tmp_path / "train" / cls / "0.png")
    augment = {"recipe": recipe, "auto_augment": None, "reprob": 0.0}
    mirrored = {}
    for hflip in (True, False):
        data = ImageDataConfig(root=str(tmp_path), train_split="train", mean=(0, 0, 0), std=(1, 1, 1), hflip=hflip)
        tok = ImageTokenizerConfig(img_size=16, patch_size=8, in_chans=3)
        dataset = ImageModality().build_labelled_dataset(data, tok, split="train", augment=augment)
        torch.manual_seed(0)
        redness = [(lambda x: x[0] - x[2])(dataset[0][0]) for _ in range(40)]  # R - B per pixel, (16, 16)
        mirrored[hflip] = sum(bool(r[:, 0].mean() < r[:, -1].mean() - 0.5) for r in redness)
    assert mirrored[False] == 0 and mirrored[True] > 0


@pytest.mark.parametrize("recipe", ["finetune", "linprobe"])
def test_image_data_classify_scale_sets_the_training_crop(tmp_path: Path, recipe: str) -> None:
    """``data.classify_scale`` is the RandomResizedCrop area range of classifier training (official 0.08-1): at
    (1, 1) of a square image every crop is the whole image, so the sample is the file's pixels / 255 exactly
    (no flip, no RandAugment, no erasing); at the default some crops are smaller."""
    import numpy as np
    import torch

    from anymae.modalities.image.modality import ImageDataConfig, ImageModality, ImageTokenizerConfig

    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    for cls in ("a", "b"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        Image.fromarray(pixels).save(tmp_path / "train" / cls / "0.png")
    expected = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    augment = {"recipe": recipe, "auto_augment": None, "reprob": 0.0}
    tok = ImageTokenizerConfig(img_size=16, patch_size=8, in_chans=3)
    whole = {}
    for scale in ((1.0, 1.0), None):
        extra = {} if scale is None else {"classify_scale": scale}
        data = ImageDataConfig(root=str(tmp_path), mean=(0, 0, 0), std=(1, 1, 1), hflip=False, **extra)
        dataset = ImageModality().build_labelled_dataset(data, tok, split="train", augment=augment)
        torch.manual_seed(0)
        whole[scale] = sum(torch.allclose(dataset[0][0], expected, atol=1e-6) for _ in range(20))
    assert whole[(1.0, 1.0)] == 20 and whole[None] < 20
