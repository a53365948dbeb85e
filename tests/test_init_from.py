"""Start from released weights (issue 16): ``model.init_from`` in pre-training for every format ``load_model``
reads, and the adaptations to new channels, input sizes and patch sizes in pre-training and fine-tuning.

References are independent of the code under test: the loaded model's own loss (``load_model``, whose parity
with the official, Hugging Face, VideoMAE and AudioMAE code is tested elsewhere), hand-written official layouts,
the FlexiViT property checked with torch's own resize, the official ``interpolate_pos_embed`` written out, and
the channel rules of timm's ``adapt_input_conv`` written out by hand."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from official_layout import official_pos_embed, to_official
from timm.layers import resample_patch_embed

from anymae.core import CheckpointError, load_model
from anymae.core.build.adapt import resample_kernel
from anymae.core.build.classifier import build_classifier
from anymae.core.build.models import build_model
from anymae.core.cli import main
from anymae.core.config import ConfigError, config_to_dict, resolve_config, resolve_model_config
from anymae.core.distributed.context import setup
from anymae.core.io.checkpoint import read_checkpoint
from anymae.core.model.masking import sample_mask
from anymae.core.train.task_pretrain import PretrainTask, pretrain
from anymae.core.weights.init_from import init_model_from
from anymae.modalities.image.formats import official_state
from anymae.plugins import get_registry

TINY = {
    "modality": "image",
    "tokenizer": {"img_size": 32, "patch_size": 8, "in_chans": 3},
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 2,
    "decoder_embed_dim": 16,
    "decoder_depth": 1,
    "decoder_num_heads": 16,  # the official layout records no decoder heads; its importer assumes 16
}


def _model(raw: dict[str, Any], seed: int = 0):
    """A built model whose every parameter (LayerNorms, biases included) is perturbed away from its init."""
    torch.manual_seed(seed)
    model = build_model(resolve_model_config(copy.deepcopy(raw)))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model.eval()


def _mask(model, batch: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return sample_mask(model.masking, batch=batch, grid=model.tokenizer.grid, mask_ratio=model.mask_ratio,
                       device=torch.device("cpu"), generator=generator)  # fmt: skip


def _init(raw: dict[str, Any], source: Path | str, **extra: Any):
    """A fresh model built from ``raw`` + ``init_from=source``, initialised by :func:`init_model_from`."""
    cfg = resolve_model_config({**copy.deepcopy(raw), "init_from": str(source), **extra})
    torch.manual_seed(123)
    model = build_model(cfg)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_model_from(model, cfg)
    return model.eval(), report, fresh


def _losses_agree(a, b, x: torch.Tensor, mask: torch.Tensor) -> float:
    with torch.no_grad():
        return abs(a(x, mask=mask)[0].item() - b(x, mask=mask)[0].item())


# --- every format load_model reads -------------------------------------------------------------------------
def test_pretraining_from_an_official_full_checkpoint_starts_at_the_loaded_models_loss(tiny_config_dict, tmp_path):
    original = _model(TINY)
    path = tmp_path / "mae_pretrain_vit_tiny_full.pth"
    torch.save({"model": to_official(original)}, path)
    raw = tiny_config_dict
    raw["model"] = {**TINY, "norm_pix_loss": True, "init_from": str(path)}
    cfg = resolve_config(raw)
    ctx, device = setup("cpu")
    task = PretrainTask(cfg, registry=get_registry(), ctx=ctx, device=device)

    loaded = load_model(path, num_heads=2).eval()  # the official file's model, its own target (norm-pix)
    x = torch.randn(4, 3, 32, 32)
    mask = _mask(loaded, 4).bool()
    task.model.eval()
    with torch.no_grad():
        step0 = task.loss(task.model, {"input": x, "mask": mask})[0].item()
        assert abs(step0 - loaded(x, mask=mask)[0].item()) <= 1e-6
    assert task.init_report["adapted"] == {} and task.init_report["new"] == {}
    assert len(task.init_report["loaded"]) == len(task.model.state_dict())


def test_an_encoder_only_official_file_leaves_a_new_decoder_and_the_log_says_so(tmp_path, capsys):
    original = _model(TINY)
    path = tmp_path / "mae_pretrain_vit_tiny.pth"
    torch.save({"model": to_official(original, with_decoder=False)}, path)
    model, report, fresh = _init(TINY, path)
    log = capsys.readouterr().out
    assert "new decoder." in log and "the file has no decoder: official initialisation" in log

    state = model.state_dict()
    decoder_keys = sorted(k for k in state if k.startswith("decoder."))
    assert sorted(report["new"]) == decoder_keys and decoder_keys
    assert all(torch.equal(state[k], fresh[k]) for k in decoder_keys)  # the build's (official) initialisation
    ours = original.state_dict()
    assert all(torch.equal(state[k], ours[k]) for k in state if not k.startswith("decoder."))


def test_pretraining_from_a_hugging_face_vitmae_folder_starts_at_its_loss(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTMAEConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, image_size=32,
        patch_size=8, decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=4,
        decoder_intermediate_size=64, norm_pix_loss=True,
    )  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.ViTMAEForPreTraining(config)
    with torch.no_grad():
        for param in hf.parameters():
            param.add_(0.05 * torch.randn_like(param))
        hf.vit.embeddings.position_embeddings.copy_(official_pos_embed(4, 32))  # released folders: sin-cos tables
        hf.decoder.decoder_pos_embed.copy_(official_pos_embed(4, 16))
    hf.save_pretrained(tmp_path / "hf")
    raw = {**TINY, "decoder_num_heads": 4, "norm_eps": 1e-12, "norm_pix_loss": True}

    model, report, _ = _init(raw, tmp_path / "hf")
    loaded = load_model(tmp_path / "hf").eval()
    x = torch.randn(3, 3, 32, 32)
    assert _losses_agree(model, loaded, x, _mask(model, 3).bool()) <= 1e-6
    assert report["new"] == {} and report["adapted"] == {}


def _videomae_folder(tmp_path: Path) -> Path:
    from test_video_interop import _hf_model

    _hf_model(norm_pix_loss=True).save_pretrained(tmp_path / "videomae")
    return tmp_path / "videomae"


def test_pretraining_from_a_videomae_folder_starts_at_its_loss(tmp_path):
    folder = _videomae_folder(tmp_path)
    loaded = load_model(folder).eval()
    raw = loaded.config["model"]  # the VideoMAE architecture, as a user's config would spell it
    model, report, _ = _init({k: v for k, v in raw.items() if k != "init_from"}, folder)
    x = torch.randn(2, 3, 4, 32, 32)
    mask = _mask(loaded, 2).bool()  # tube masking, as VideoMAE
    assert _losses_agree(model, loaded, x, mask) <= 1e-6
    assert report["new"] == {} and report["adapted"] == {}


AUDIO = {
    "modality": "audio",
    "tokenizer": {"target_length": 64, "num_mel_bins": 128, "patch_size": 16},  # AudioMAE's 128 mel bins
    "embed_dim": 32, "depth": 2, "num_heads": 2, "mask_ratio": 0.8, "norm_pix_loss": True,
    "decoder": "local", "decoder_embed_dim": 16, "decoder_depth": 2, "decoder_num_heads": 16,
}  # fmt: skip


@pytest.mark.parametrize("with_decoder", [True, False])
def test_pretraining_from_an_audiomae_file_starts_at_its_loss_or_with_a_new_decoder(tmp_path, with_decoder, capsys):
    original = _model(AUDIO)
    state, _ = official_state(original)  # AudioMAE's layout (the export is checked against AudioMAE elsewhere)
    if not with_decoder:
        state = {k: v for k, v in state.items() if not k.startswith(("decoder", "mask_token"))}
    path = tmp_path / "audiomae.pth"
    torch.save({"model": state, "epoch": 32}, path)
    model, report, fresh = _init(AUDIO, path)
    if with_decoder:
        x = torch.randn(2, 1, 64, 128)
        assert _losses_agree(model, load_model(path, num_heads=2).eval(), x, _mask(model, 2).bool()) <= 1e-6
        assert report["new"] == {}
    else:
        assert sorted(report["new"]) == sorted(k for k in fresh if k.startswith("decoder."))
        assert "the file has no decoder" in capsys.readouterr().out


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_run_continued_from_a_trained_anymae_checkpoint_starts_at_its_loss_level(tiny_config_dict, tmp_path):
    raw = tiny_config_dict
    raw["data"]["heldout_split"] = None  # the first logged step is what this test reads
    raw["train"].update(epochs=1, batch_size=8)
    cfg = resolve_config(copy.deepcopy(raw))
    ctx, device = setup("cpu")
    task = PretrainTask(cfg, registry=get_registry(), ctx=ctx, device=device)
    # Train the model on 64 augmented views of the training images (a tight loop: seconds), save it as anymae does.
    views = torch.stack([task.train_set[i % len(task.train_set)] for i in range(64)])  # (64, 3, 32, 32)
    model = task.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(80):
        loss = model(views[(step * 8) % 64 : (step * 8) % 64 + 8])[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        trained_loss = model.eval()(views, mask_ratio=0.75)[0].item()
    checkpoint = _anymae_file(model, tmp_path / "trained.pt")

    raw["train"]["run_name"] = "fresh"
    fresh_first = _metrics(pretrain(resolve_config(copy.deepcopy(raw)), progress=False).run_dir)[0]["loss"]
    raw["train"]["run_name"] = "continued"
    raw["model"]["init_from"] = str(checkpoint)
    continued = pretrain(resolve_config(raw), progress=False)
    continued_first = _metrics(continued.run_dir)[0]["loss"]
    assert trained_loss < 0.6 * fresh_first, (trained_loss, fresh_first)  # training moved it far from a fresh model
    # The continued run's first step is at the trained level (other crops and masks: not the same number).
    assert abs(continued_first - trained_loss) < 0.25 * (fresh_first - trained_loss), (continued_first, trained_loss)
    payload = read_checkpoint(continued.checkpoint)
    assert payload["init_from"]["source"] == str(checkpoint) and len(payload["init_from"]["loaded"]) == len(
        model.state_dict()
    )
    assert payload["run_config"]["model"]["init_from"] == str(checkpoint)


def test_resume_restores_its_own_weights_even_when_the_init_file_is_gone(tiny_config_dict, tmp_path):
    original = _model(TINY)
    path = tmp_path / "init.pth"
    torch.save({"model": to_official(original)}, path)
    raw = tiny_config_dict
    raw["model"] = {**TINY, "init_from": str(path)}
    raw["data"]["heldout_split"] = None
    raw["train"].update(epochs=1)
    whole = copy.deepcopy(raw)
    whole["train"].update(epochs=2, run_name="whole")
    left_alone = read_checkpoint(pretrain(resolve_config(whole), progress=False).checkpoint)["model"]
    first = pretrain(resolve_config(copy.deepcopy(raw)), progress=False)
    path.unlink()
    raw["train"].update(epochs=2)
    resumed = pretrain(resolve_config(raw), resume=str(first.checkpoint), progress=False)
    payload = read_checkpoint(resumed.checkpoint)
    assert payload["progress"]["epoch"] == 2
    # The resumed run's weights are the 2-epoch run's, bit for bit: the first epoch started from the file.
    assert payload["model"].keys() == left_alone.keys()
    assert all(torch.equal(payload["model"][k], left_alone[k]) for k in left_alone)
    assert payload["init_from"]["source"] == str(path)  # the record survives the resume
    with pytest.raises(ConfigError, match=r"model\.init_from=.*no such file"):
        pretrain(resolve_config(raw), progress=False)


# --- channels --------------------------------------------------------------------------------------------
def _rgb_checkpoint(tmp_path: Path, raw: dict[str, Any] = TINY) -> tuple[Any, Path]:
    original = _model(raw)
    path = tmp_path / "rgb.pth"
    torch.save({"model": to_official(original)}, path)
    return original, path


def _anymae_file(model, path: Path) -> Path:
    """An anymae checkpoint of ``model`` (what ``anymae pretrain`` writes, less the training state): its config
    records the heads, which the command line's finetune needs for a width outside the official table."""
    torch.save({"format": "anymae", "config": {"model": model.config["model"]}, "model": model.state_dict()}, path)
    return path


def _with(raw: dict[str, Any], **tokenizer: Any) -> dict[str, Any]:
    return {**raw, "tokenizer": {**raw["tokenizer"], **tokenizer}}


def test_one_band_init_sums_the_rgb_kernels_so_a_grey_image_gives_the_rgb_tokens(tmp_path):
    original, path = _rgb_checkpoint(tmp_path)
    model, report, _ = _init(_with(TINY, in_chans=1), path)
    assert "3 -> 1" in report["adapted"]["tokenizer.proj.weight"]
    assert "decoder.pred.weight" in report["new"] and "decoder.pred.bias" in report["new"]  # P = 64 vs 192
    grey = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.tokenizer(grey), original.tokenizer(grey.expand(-1, 3, -1, -1)))


def test_thirteen_band_init_repeats_the_rgb_kernels_scaled_by_3_over_13(tmp_path):
    original, path = _rgb_checkpoint(tmp_path)
    model, report, _ = _init(_with(TINY, in_chans=13), path)
    w = original.tokenizer.proj.weight.detach()
    expected = torch.stack([w[:, i % 3] for i in range(13)], dim=1) * 3 / 13  # timm's rule, written out
    torch.testing.assert_close(model.tokenizer.proj.weight.detach(), expected)
    assert "3 -> 13" in report["adapted"]["tokenizer.proj.weight"]


def test_band_selection_takes_the_named_file_channels(tmp_path):
    original = _model(_with(TINY, in_chans=13))
    path = tmp_path / "s2.pth"
    torch.save({"model": to_official(original)}, path)
    model, report, _ = _init(_with(TINY, in_chans=4), path, init_bands=[3, 2, 1, 7])
    torch.testing.assert_close(model.tokenizer.proj.weight.detach(), original.tokenizer.proj.weight[:, [3, 2, 1, 7]])
    assert "band selection" in report["adapted"]["tokenizer.proj.weight"]
    shapes = r"tokenizer\.proj\.weight: file \(32, 13, 8, 8\) vs model \(32, 4, 8, 8\)"
    with pytest.raises(CheckpointError, match=shapes):
        _init(_with(TINY, in_chans=4), path)  # 13 -> 4 has no rule of its own: a band list is needed


@pytest.mark.parametrize("bands", [[3, 2, 1, 7], [12]])
def test_classifier_init_bands_take_the_named_channels_of_the_pretrained_kernel(bands):
    """``finetune.init_bands`` / ``linprobe.init_bands``: input channel i of the classifier starts from channel
    bands[i] of the pre-trained patch kernel, the rest of the weights unchanged; a 4-band crop of a 13-band image
    through the classifier's tokenizer gives the pre-trained tokenizer's tokens of that image with the other
    bands zeroed."""
    pretrained = _model(_with(TINY, in_chans=13))
    classifier = build_classifier(pretrained, num_classes=3, global_pool=True,
                                  tokenizer_overrides={"in_chans": len(bands)}, init_bands=tuple(bands))  # fmt: skip
    w = pretrained.tokenizer.proj.weight.detach()  # (D, 13, p, p)
    torch.testing.assert_close(classifier.tokenizer.proj.weight.detach(), w[:, bands], rtol=0, atol=0)
    torch.testing.assert_close(classifier.tokenizer.proj.bias.detach(), pretrained.tokenizer.proj.bias.detach())
    image = torch.rand(2, 13, 32, 32)
    only = torch.zeros_like(image)
    only[:, bands] = image[:, bands]
    with torch.no_grad():
        torch.testing.assert_close(classifier.tokenizer(image[:, bands]), pretrained.tokenizer(only))


def test_init_bands_without_init_from_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="init_bands"):
        resolve_model_config({**TINY, "init_bands": [0]})


def _write_bands(root: Path, *, count: int = 13) -> Path:
    """root/{train,val}/{fields,water}/*.npy: (13, 32, 32) uint16 arrays, the two classes told apart by level."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for label, level in (("fields", 1000), ("water", 5000)):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                array = level + rng.integers(0, 3000, size=(count, 32, 32))
                np.save(folder / f"{label}{i}.npy", array.astype(np.uint16))
    return root


@pytest.mark.parametrize("bands", [1, 13])
def test_an_rgb_checkpoint_is_continued_and_fine_tuned_on_1_and_13_band_inputs(tiny_config_dict, tmp_path, bands):
    path = _anymae_file(_model(TINY), tmp_path / "rgb.pt")
    root = _write_bands(tmp_path / "s2")
    selected = [3] if bands == 1 else list(range(13))
    raw = tiny_config_dict
    raw["model"] = {**_with(TINY, in_chans=bands), "init_from": str(path)}
    raw["data"] = {"root": str(root), "heldout_split": "val", "bands": selected, "value_range": [0, 10000],
                   "mean": [0.3] * bands, "std": [0.1] * bands}  # fmt: skip
    raw["train"].update(epochs=1)
    result = pretrain(resolve_config(raw), progress=False)
    payload = read_checkpoint(result.checkpoint)
    assert f"3 -> {bands}" in payload["init_from"]["adapted"]["tokenizer.proj.weight"]

    common = [
        f"data.root={root}", "data.heldout_split=val", f"data.bands={selected}", "data.value_range=[0, 10000]",
        f"data.mean={[0.3] * bands}", f"data.std={[0.1] * bands}", "train.batch_size=2", "train.num_workers=0",
        "train.pin_memory=false", "train.device=cpu", "train.epochs=1", f"train.output_dir={tmp_path / 'cls'}",
        "finetune.auto_augment=null", "--no-progress",
    ]  # fmt: skip
    # Fine-tuned from the RGB file itself, its channels adapted here (the continued run needs no adaptation).
    ft = ["finetune", "demo_image_finetune", f"finetune.checkpoint={path}", f"finetune.tokenizer.in_chans={bands}",
          "train.run_name=from_rgb"]  # fmt: skip
    assert main([*ft, *common]) == 0
    saved = read_checkpoint(tmp_path / "cls" / "from_rgb" / "checkpoint-last.pt")
    assert f"3 -> {bands}" in saved["config"]["init"]["adapted"]["tokenizer.proj.weight"]


# --- patch size ---------------------------------------------------------------------------------------------
P16 = _with(TINY, img_size=32, patch_size=16)


def test_patch_16_to_8_keeps_the_token_of_a_constant_patch(tmp_path):
    original = _model(P16)
    classifier = build_classifier(original, num_classes=3, global_pool=True, tokenizer_overrides={"patch_size": 8})
    assert "patch 16x16 -> 8x8" in classifier.config["init"]["adapted"]["tokenizer.proj.weight"]
    for value in (0.0, 0.7, -1.3):
        flat = torch.full((1, 3, 32, 32), value)
        big = original.tokenizer(flat)[0, 0]  # one 16x16 constant patch
        small = classifier.tokenizer(flat)  # sixteen 8x8 constant patches
        torch.testing.assert_close(small[0], big.expand_as(small[0]), atol=1e-5, rtol=1e-5)


def test_halving_the_patch_is_timms_pseudo_inverse_of_a_2x2_average():
    weight = torch.randn(8, 3, 16, 16)
    expected = resample_patch_embed(weight, [8, 8], interpolation="bilinear", antialias=False)  # = 2x2 averaging
    torch.testing.assert_close(resample_kernel(weight, (8, 8))[0], expected, atol=1e-4, rtol=1e-4)


def test_enlarging_the_patch_keeps_every_token_of_the_resized_patch():
    """FlexiViT: <x, w> = <resize(x), w'> for every patch x when enlarging (bicubic, antialiased resize)."""
    weight = torch.randn(8, 3, 8, 8, dtype=torch.float64).float()
    bigger, _ = resample_kernel(weight, (12, 12))
    x = torch.randn(5, 3, 8, 8)
    resized = F.interpolate(x, size=(12, 12), mode="bicubic", antialias=True)  # torch's resize, not timm's
    torch.testing.assert_close(
        torch.einsum("nchw,dchw->nd", resized, bigger), torch.einsum("nchw,dchw->nd", x, weight), atol=1e-3, rtol=1e-3
    )


def test_a_patch_16_checkpoint_is_fine_tuned_at_patch_8(tmp_path, tiny_image_folder):
    path = _anymae_file(_model(P16), tmp_path / "p16.pt")
    common = [
        f"data.root={tiny_image_folder}", "data.heldout_split=val", "train.batch_size=2", "train.num_workers=0",
        "train.pin_memory=false", "train.device=cpu", "train.epochs=1", f"train.output_dir={tmp_path / 'cls'}",
        "finetune.auto_augment=null", "finetune.tokenizer.patch_size=8", "--no-progress",
    ]  # fmt: skip
    _add_val_classes(tiny_image_folder)
    assert main(["finetune", "demo_image_finetune", f"finetune.checkpoint={path}", *common]) == 0
    saved = read_checkpoint(tmp_path / "cls" / "demo_image_finetune" / "checkpoint-last.pt")
    assert saved["config"]["model"]["tokenizer"]["patch_size"] == 8
    assert "patch 16x16 -> 8x8" in saved["config"]["init"]["adapted"]["tokenizer.proj.weight"]


def _add_val_classes(root: Path) -> None:
    """The tiny folder's val/ is flat; fine-tuning needs class folders there too."""
    for cls in ("cats", "dogs"):
        (root / "val" / cls).mkdir(exist_ok=True)
        for src in sorted((root / "train" / cls).iterdir())[:1]:
            (root / "val" / cls / src.name).write_bytes(src.read_bytes())
    for loose in (root / "val").glob("*.*"):
        loose.unlink()


def test_pretraining_at_a_new_patch_size_rebuilds_the_decoder_head(tmp_path, capsys):
    original = _model(P16)
    path = tmp_path / "p16.pth"
    torch.save({"model": to_official(original)}, path)
    model, report, fresh = _init(_with(TINY, patch_size=8), path)
    assert set(report["new"]) == {"decoder.pred.weight", "decoder.pred.bias"}
    assert torch.equal(model.decoder.pred.weight, fresh["decoder.pred.weight"])
    assert any("position tables rebuilt for the token grid (4, 4) (the file's: (2, 2))" in n for n in report["notes"])
    log = capsys.readouterr().out
    assert "decoder head rebuilt for 192 values per patch (the file's: 768)" in log


# --- input size ---------------------------------------------------------------------------------------------
def test_a_learned_table_is_resized_as_the_official_interpolate_pos_embed():
    original = _model(TINY)  # grid 4 x 4
    learned = torch.randn(1, 17, 32)
    from anymae.core.build.adapt import make_pos_embed_learned

    make_pos_embed_learned(original.encoder)
    with torch.no_grad():
        original.encoder.pos_embed.copy_(learned)
    classifier = build_classifier(original, num_classes=2, global_pool=True, tokenizer_overrides={"img_size": 48})
    # The official interpolate_pos_embed: CLS row kept, the grid part (1, D, 4, 4) -> (1, D, 6, 6) bicubic.
    grid = learned[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    resized = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)
    expected = torch.cat([learned[:, :1], resized.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)
    torch.testing.assert_close(classifier.encoder.pos_embed.detach(), expected)


def test_a_new_input_size_in_pretraining_is_named_and_keeps_every_weight(tmp_path):
    original, path = _rgb_checkpoint(tmp_path)
    model, report, _ = _init(_with(TINY, img_size=48), path)
    assert report["new"] == {} and report["adapted"] == {}
    assert "model.tokenizer.img_size: 32 in the file, 48 here" in report["notes"]
    theirs = original.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items())


# --- mismatches ---------------------------------------------------------------------------------------------
def test_a_mismatched_file_fails_before_any_training_step_naming_keys_and_shapes(tiny_config_dict, tmp_path):
    video = load_model(_videomae_folder(tmp_path))
    raw_video = {k: v for k, v in video.config["model"].items() if k != "init_from"}
    other_tubelet = {**raw_video, "tokenizer": {**raw_video["tokenizer"], "tubelet_size": 1}}
    shapes = r"tokenizer\.proj\.weight: file \(32, 3, 2, 8, 8\) vs model \(32, 3, 1, 8, 8\)"
    with pytest.raises(CheckpointError, match=shapes):
        _init(other_tubelet, tmp_path / "videomae")

    _, path = _rgb_checkpoint(tmp_path)
    raw = tiny_config_dict
    raw["model"] = {**TINY, "embed_dim": 64, "init_from": str(path)}
    with pytest.raises(CheckpointError, match=r"model\.embed_dim: the file's model has 32, the config 64"):
        pretrain(resolve_config(raw), progress=False)
    assert not (Path(raw["train"]["output_dir"]) / "tiny").exists()  # no run folder: nothing was trained


def test_an_anymae_file_must_agree_on_heads_it_records(tmp_path, tiny_config_dict):
    raw = tiny_config_dict
    raw["train"].update(epochs=1)
    first = pretrain(resolve_config(copy.deepcopy(raw)), progress=False)
    model_raw = {**config_to_dict(resolve_model_config(raw["model"])), "num_heads": 4}
    with pytest.raises(CheckpointError, match=r"model\.num_heads: the file's model has 2, the config 4"):
        _init({k: v for k, v in model_raw.items() if k not in ("init_from", "init_bands")}, first.checkpoint)
