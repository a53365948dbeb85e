"""The bundled ImageNet recipes hold the reference values (reference section 2: paper Tables 8-10 and the
official release notes), typed in here by hand so that a drifting config fails."""

from __future__ import annotations

import pytest

from anymae.core.config import ClassifyConfig, ConfigError, load_classify_config, load_config

SIZES = ("base", "large", "huge")
# Encoders (reference section 1): patch, width, depth, heads.
ARCH = {"base": (16, 768, 12, 12), "large": (16, 1024, 24, 16), "huge": (14, 1280, 32, 16)}
# Fine-tuning: epochs, drop path, (blr, layer decay) released, (blr, layer decay) paper Table 9.
FINETUNE = {
    "base": (100, 0.1, (5e-4, 0.65), (1e-3, 0.75)),
    "large": (50, 0.2, (1e-3, 0.75), (1e-3, 0.75)),
    "huge": (50, 0.3, (1e-3, 0.75), (1e-3, 0.75)),
}
# Data-parallel processes each config's comment assumes (per-GPU batch x GPUs x accum = the paper's batch).
GPUS = {"pretrain": 64, "finetune": 32, "linprobe": 32}


def _effective_batch(cfg, kind: str) -> int:
    return cfg.train.batch_size * cfg.train.accum_iter * GPUS[kind]


@pytest.mark.parametrize("size", SIZES)
def test_pretrain_recipe_matches_table_8(size: str) -> None:
    cfg = load_config(f"mae_vit_{size}_pretrain")
    m, o, t = cfg.model, cfg.optim, cfg.train
    patch, width, depth, heads = ARCH[size]
    assert (m.tokenizer.patch_size, m.embed_dim, m.depth, m.num_heads, m.mlp_ratio) == (patch, width, depth, heads, 4)
    assert m.tokenizer.size == (224, 224)
    assert (m.decoder_embed_dim, m.decoder_depth, m.decoder_num_heads) == (512, 8, 16)
    assert m.mask_ratio == 0.75 and m.norm_pix_loss and m.target == "norm_pix" and m.masking == "random"
    assert m.norm_eps == 1e-6
    assert (o.blr, o.lr, o.weight_decay, o.betas, o.warmup_epochs) == (1.5e-4, None, 0.05, (0.9, 0.95), 40)
    assert t.epochs == 800 and _effective_batch(cfg, "pretrain") == 4096
    assert o.blr * _effective_batch(cfg, "pretrain") / 256 == pytest.approx(2.4e-3)
    assert cfg.data.scale == (0.2, 1.0) and cfg.data.hflip
    assert t.save_every_epochs == 20


@pytest.mark.parametrize("preset", ["release", "paper"])
@pytest.mark.parametrize("size", SIZES)
def test_finetune_recipe_matches_reference(size: str, preset: str) -> None:
    cfg = load_classify_config(f"mae_vit_{size}_finetune", [f"preset={preset}"], mode="finetune")
    f, o, t = cfg.finetune, cfg.optim, cfg.train
    epochs, drop_path, released, paper = FINETUNE[size]
    assert (o.blr, f.layer_decay) == (released if preset == "release" else paper)
    assert (t.epochs, f.drop_path) == (epochs, drop_path)
    assert _effective_batch(cfg, "finetune") == 1024
    assert (o.optimizer, o.betas, o.weight_decay, o.warmup_epochs, o.min_lr) == ("adamw", (0.9, 0.999), 0.05, 5, 1e-6)
    assert (f.mixup, f.cutmix, f.mixup_prob, f.mixup_switch_prob, f.mixup_mode) == (0.8, 1.0, 1.0, 0.5, "batch")
    assert (f.label_smoothing, f.auto_augment) == (0.1, "rand-m9-mstd0.5-inc1")
    assert (f.reprob, f.remode, f.recount) == (0.25, "pixel", 1)
    assert f.global_pool and f.head_init_std == 2e-5 and f.eval_crop_pct == 0.875
    assert cfg.preset == preset and cfg.finetune.modality == "image"


def test_finetune_preset_default_is_release_and_unknown_preset_is_named() -> None:
    cfg = load_classify_config("mae_vit_base_finetune", mode="finetune")
    assert (cfg.optim.blr, cfg.finetune.layer_decay) == (5e-4, 0.65)
    with pytest.raises(ConfigError, match="preset 'papr'"):
        load_classify_config("mae_vit_base_finetune", ["preset=papr"], mode="finetune")


@pytest.mark.parametrize("size", SIZES)
def test_linprobe_recipe_matches_table_10(size: str) -> None:
    cfg = load_classify_config(f"mae_vit_{size}_linprobe", mode="linprobe")
    p, o, t = cfg.linprobe, cfg.optim, cfg.train
    assert not p.global_pool  # CLS token
    assert (o.optimizer, o.blr, o.weight_decay, o.momentum, o.trust_coeff) == ("lars", 0.1, 0.0, 0.9, 0.001)
    assert (t.epochs, o.warmup_epochs) == (90, 10)
    assert _effective_batch(cfg, "linprobe") == 16384
    assert o.blr * _effective_batch(cfg, "linprobe") / 256 == pytest.approx(6.4)
    assert p.eval_crop_pct == 0.875


@pytest.mark.parametrize("name", ["demo_image_finetune", "demo_image_linprobe"])
def test_demo_classify_configs_validate(name: str) -> None:
    mode = name.rsplit("_", 1)[1]
    cfg = load_classify_config(name, mode=mode)
    assert cfg.mode == mode and cfg.head.checkpoint.startswith("runs/demo_image/")
    if mode == "finetune":
        assert cfg.optim.optimizer == "adamw"
    else:  # the small-data solver by default, the paper's LARS recipe one preset away
        assert cfg.head.solver == "lbfgs"
        lars = load_classify_config(name, ["preset=lars"], mode=mode)
        assert (lars.head.solver, lars.optim.optimizer) == ("sgd", "lars")


def test_load_config_reads_classify_configs_and_pretrain_refuses_them(capsys: pytest.CaptureFixture) -> None:
    from anymae.core.cli import main

    assert isinstance(load_config("mae_vit_large_linprobe"), ClassifyConfig)
    assert main(["pretrain", "mae_vit_large_linprobe"]) == 1
    assert "is a linprobe config: run `anymae linprobe mae_vit_large_linprobe`" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="needs a 'finetune' section"):
        load_classify_config("mae_vit_large_linprobe", mode="finetune")
