"""The pre-training loop: lr rule and schedule, run folder contents, resume, accumulation, safety nets."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from anymae.core import NonFiniteLossError, build_model, pretrain, read_checkpoint, write_checkpoint
from anymae.core.config import config_to_dict, resolve_config
from anymae.core.model.mae import MaskedAutoencoder
from anymae.core.model.masking import keep_count
from anymae.core.train.optim import absolute_lr, cosine_lr, param_groups_weight_decay


# --- reference formulas, typed from the MAE recipe (reference section 2) -------------------------------
def reference_lr(blr: float, effective_batch: int) -> float:
    return blr * effective_batch / 256


def reference_schedule(epoch: float, lr: float, min_lr: float, warmup: float, epochs: float) -> float:
    if epoch < warmup:
        return lr * epoch / warmup
    t = (epoch - warmup) / (epochs - warmup)
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * t))


def _run(raw: dict[str, Any], **overrides: Any) -> Any:
    raw = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        raw.setdefault(section, {})[key] = value
    return pretrain(resolve_config(raw), progress=False)


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _constant_color_folder(root: Path, n: int = 8) -> Path:
    for i in range(n):
        color = (40 + 25 * i, 200 - 20 * i, 90 + 10 * i)
        _save(Image.new("RGB", (32, 32), color), root / "train" / f"c{i}.png")
    _save(Image.new("RGB", (32, 32), (120, 60, 30)), root / "val" / "v.png")
    return root


# --- lr rule, schedule, weight-decay groups -----------------------------------------------------------
def test_lr_rule_matches_the_paper_value():
    assert reference_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)
    assert absolute_lr(blr=1.5e-4, effective_batch=4096) == pytest.approx(2.4e-3)
    assert absolute_lr(blr=1.5e-4, effective_batch=64) == pytest.approx(reference_lr(1.5e-4, 64))


def test_absolute_lr_overrides_the_rule():
    assert absolute_lr(blr=1.5e-4, effective_batch=4096, lr=1e-3) == 1e-3


def test_schedule_warms_up_linearly_from_zero_then_half_cosine_to_min_lr():
    lr, min_lr, warmup, epochs = 2.4e-3, 1e-6, 40, 800
    kwargs = dict(lr=lr, min_lr=min_lr, warmup_epochs=warmup, epochs=epochs)
    assert cosine_lr(0.0, **kwargs) == 0.0
    assert cosine_lr(20.0, **kwargs) == pytest.approx(lr / 2)
    assert cosine_lr(warmup, **kwargs) == pytest.approx(lr)
    assert cosine_lr((warmup + epochs) / 2, **kwargs) == pytest.approx((lr + min_lr) / 2)
    assert cosine_lr(epochs, **kwargs) == pytest.approx(min_lr)
    for i in range(epochs * 4 + 1):
        epoch = i / 4
        assert cosine_lr(epoch, **kwargs) == pytest.approx(reference_schedule(epoch, lr, min_lr, warmup, epochs))


def test_schedule_without_warmup_starts_at_the_peak():
    assert cosine_lr(0.0, lr=1e-3, min_lr=0.0, warmup_epochs=0, epochs=10) == pytest.approx(1e-3)


def test_weight_decay_groups_follow_the_official_split(tiny_config_dict):
    model = build_model(resolve_config(tiny_config_dict).model)
    no_decay, decay = param_groups_weight_decay(model, 0.05)
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05
    by_id = {id(p): name for name, p in model.named_parameters()}
    no_decay_names = {by_id[id(p)] for p in no_decay["params"]}
    decay_names = {by_id[id(p)] for p in decay["params"]}
    assert no_decay_names | decay_names == set(by_id.values())
    assert not no_decay_names & decay_names
    for name, param in model.named_parameters():
        if name.endswith(".bias") or param.ndim == 1:
            assert name in no_decay_names, name
        else:
            assert name in decay_names, name
    assert "encoder.cls_token" in decay_names
    assert "decoder.mask_token" in decay_names
    assert "tokenizer.proj.weight" in decay_names
    # The fixed sin-cos tables are buffers, not parameters: nothing trains or decays them.
    assert not any("pos_embed" in name for name in by_id.values())
    assert {"encoder.pos_embed", "decoder.pos_embed"} <= {name for name, _ in model.named_buffers()}


# --- a run and what it leaves behind -------------------------------------------------------------------
def test_pretrain_writes_config_metrics_checkpoint_and_figure(tiny_config_dict):
    result = _run(tiny_config_dict)
    run_dir = result.run_dir
    assert run_dir == Path(tiny_config_dict["train"]["output_dir"]) / "tiny"

    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved == config_to_dict(resolve_config(tiny_config_dict))
    assert resolve_config(saved) == resolve_config(tiny_config_dict)

    records = _records(result.metrics)
    steps = [r for r in records if "loss" in r]
    assert steps and all(math.isfinite(r["loss"]) and "lr" in r for r in steps)
    assert [r["epoch"] for r in records if "epoch_loss" in r] == [1, 2]
    assert any("heldout_loss" in r and "baseline_loss" in r for r in records)

    assert result.checkpoint == run_dir / "checkpoint-0002.pt"
    payload = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    assert payload["format"] == "anymae"
    assert payload["progress"]["epoch"] == 2 and payload["progress"]["batch"] == 0 and payload["progress"]["step"] == 4
    assert payload["config"] == config_to_dict(resolve_config(tiny_config_dict))
    yaml.safe_dump(payload["config"])  # plain data: dumps without any Python tags

    assert result.figure == run_dir / "reconstruction.png"
    assert sorted(p.name for p in run_dir.glob("reconstruction-epoch*.png")) == [
        "reconstruction-epoch0001.png",
        "reconstruction-epoch0002.png",
    ]
    _assert_masked_panel_shows_the_input_and_the_removed_patches(result.figure, patches=4, removed=12)
    assert result.heldout_loss is not None and math.isfinite(result.heldout_loss)
    assert result.baseline_loss is not None and result.baseline_loss > 0
    assert not list(run_dir.glob("*.tmp"))


def _assert_masked_panel_shows_the_input_and_the_removed_patches(path: Path, *, patches: int, removed: int) -> None:
    """Row 0 of the image figure (columns: original | masked | ...; an 18 px header, 4 px padding, 32 px crops
    drawn 6x): each patch of the masked panel is either the original's pixels or the grey fill, entirely."""
    with Image.open(path) as figure:
        assert figure.format == "PNG"
        pixels = np.asarray(figure.convert("RGB")).astype(int)
    cell, pad, header = 32 * 6, 4, 18
    top = header + pad
    original = pixels[top : top + cell, pad : pad + cell]
    masked = pixels[top : top + cell, 2 * pad + cell : 2 * pad + 2 * cell]
    side = cell // patches
    grey = 0
    for i in range(patches):
        for j in range(patches):
            tile = masked[i * side : (i + 1) * side, j * side : (j + 1) * side]
            if (tile == 127).all():
                grey += 1
            else:
                assert (tile == original[i * side : (i + 1) * side, j * side : (j + 1) * side]).all(), (i, j)
    assert grey == removed


def test_periodic_checks_write_figures_and_tensorboard_events(tiny_config_dict):
    """train.eval_every_epochs: a held-out check (loss, baseline, figure) after epochs 2 and 4 and the last; the
    metrics rows and the figures also go to TensorBoard, where `tensorboard --logdir runs` reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = _run(tiny_config_dict, train__epochs=5, train__eval_every_epochs=2)
    checks = [r for r in _records(result.metrics) if "heldout_loss" in r]
    assert [r["epoch"] for r in checks] == [2, 4, 5]
    assert all(r["heldout_ratio"] == pytest.approx(r["heldout_loss"] / r["baseline_loss"], rel=1e-5) for r in checks)
    figures = sorted(p.name for p in result.run_dir.glob("reconstruction-epoch*.png"))
    assert figures == ["reconstruction-epoch0002.png", "reconstruction-epoch0004.png", "reconstruction-epoch0005.png"]
    assert result.figure.read_bytes() == (result.run_dir / figures[-1]).read_bytes()

    events = EventAccumulator(str(result.run_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    expected = {"train/loss", "train/lr", "train/grad_norm", "train/samples_per_s", "train/epoch_loss",
                "heldout/loss", "heldout/baseline_loss", "heldout/ratio"}  # fmt: skip
    assert expected <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("heldout/loss")] == [r["step"] for r in checks]
    assert [e.value for e in events.Scalars("heldout/loss")] == pytest.approx([r["heldout_loss"] for r in checks])
    images = events.Images("heldout/reconstruction")
    assert [e.step for e in images] == [r["step"] for r in checks]
    with Image.open(result.run_dir / figures[0]) as first:
        assert (images[0].width, images[0].height) == first.size


def test_lr_is_set_every_iteration_from_the_schedule(tiny_config_dict):
    raw = copy.deepcopy(tiny_config_dict)
    raw["optim"].update(lr=1e-3, min_lr=1e-5, warmup_epochs=1)
    raw["data"]["repeats"] = 2  # 4 iterations per epoch
    result = _run(raw, train__epochs=3)
    steps = [r for r in _records(result.metrics) if "lr" in r]
    assert [r["step"] for r in steps] == list(range(1, 13))
    for record in steps:
        # Step k (1-based) is the update of iteration k - 1, whose lr is set at fractional epoch (k - 1) / 4:
        # derived from the step counter, not from the position the loop logs.
        expected = reference_schedule((record["step"] - 1) / 4, 1e-3, 1e-5, 1, 3)
        assert record["lr"] == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert len({r["lr"] for r in steps}) == len(steps)  # changes within an epoch, not once per epoch


def test_loss_decreases_on_constant_color_images(tmp_path, tiny_config_dict):
    # Each image is one colour: the visible patches give the removed ones away, so a working loop learns it.
    raw = copy.deepcopy(tiny_config_dict)
    root = _constant_color_folder(tmp_path / "flat")
    raw["data"].update(root=str(root), repeats=8, hflip=False, heldout_split=None)
    raw["optim"].update(lr=1e-2, warmup_epochs=0.25)
    result = _run(raw, train__epochs=3, train__log_every_steps=100)
    epoch_losses = [r["epoch_loss"] for r in _records(result.metrics) if "epoch_loss" in r]
    assert len(epoch_losses) == 3
    assert epoch_losses[-1] < 0.5 * epoch_losses[0], epoch_losses
    assert result.heldout_loss is None and result.figure is None


def test_second_run_with_same_config_goes_to_a_new_folder(tiny_config_dict):
    first = _run(tiny_config_dict, train__epochs=1)
    before = first.checkpoint.read_bytes()
    second = _run(tiny_config_dict, train__epochs=1)
    assert second.run_dir != first.run_dir
    assert second.run_dir.name == "tiny-2"
    assert first.checkpoint.read_bytes() == before
    assert len(_records(first.metrics)) == len(_records(second.metrics))


def test_resume_auto_continues_the_epoch_count(tiny_config_dict):
    first = _run(tiny_config_dict, train__epochs=1)
    raw = copy.deepcopy(tiny_config_dict)
    raw["train"]["epochs"] = 3
    result = pretrain(resolve_config(raw), resume="auto", progress=False)
    assert result.run_dir == first.run_dir
    assert result.checkpoint == first.run_dir / "checkpoint-0003.pt"
    payload = read_checkpoint(result.checkpoint)
    assert payload["progress"]["epoch"] == 3 and payload["progress"]["step"] == 6
    epochs = [r["epoch"] for r in _records(result.metrics) if "epoch_loss" in r]
    assert epochs == [1, 2, 3]


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, tiny_config_dict):
    raw = copy.deepcopy(tiny_config_dict)
    raw["train"].update(epochs=3, save_every_epochs=1, heldout_batches=1)
    cfg = resolve_config(raw)
    full = pretrain(cfg, progress=False)

    # An "interrupted" run: only the epoch-1 checkpoint exists; resume it to the end of the same schedule.
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    shutil.copy(full.run_dir / "checkpoint-0001.pt", interrupted / "checkpoint-0001.pt")
    resumed = pretrain(cfg, resume=str(interrupted / "checkpoint-0001.pt"), progress=False)

    assert resumed.checkpoint == interrupted / "checkpoint-0003.pt"
    # The resumed run starts at the step after the checkpoint's (2 steps an epoch), each step logged once.
    assert [r["step"] for r in _records(resumed.metrics) if "loss" in r] == [3, 4, 5, 6]
    a = read_checkpoint(full.run_dir / "checkpoint-0003.pt")
    b = read_checkpoint(resumed.checkpoint)
    assert a["progress"] == b["progress"]
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=0, msg=f"{key} differs after resume")
    assert resumed.train_loss == full.train_loss


def test_gradient_accumulation_matches_a_larger_batch(tmp_path, tiny_config_dict, monkeypatch):
    """accum_iter=2 x batch 2 makes the same first update as accum_iter=1 x batch 4.

    The same samples and the same masks are needed in both runs: the masks are fixed (every sample keeps
    the first patches) and the crop is the whole constant image, so the only difference left is how the
    gradient is summed. SGD makes the update proportional to the gradient (AdamW's first step is ~sign(g)).
    """

    def fixed_mask(self, tokens, *, mask_ratio, noise, mask):
        n, num_tokens, _ = tokens.shape
        order = torch.arange(num_tokens, dtype=torch.float32, device=tokens.device)
        return order.expand(n, num_tokens), keep_count(num_tokens, self.mask_ratio)

    monkeypatch.setattr(MaskedAutoencoder, "_mask_noise", fixed_mask)
    monkeypatch.setattr(torch.optim, "AdamW", lambda groups, lr, betas, fused: torch.optim.SGD(groups, lr=lr))

    root = _constant_color_folder(tmp_path / "flat", n=4)
    raw = copy.deepcopy(tiny_config_dict)
    raw["data"].update(root=str(root), hflip=False, scale=[1.0, 1.0], heldout_split=None)
    raw["optim"].update(lr=0.5, warmup_epochs=0, weight_decay=0.0)
    raw["train"].update(epochs=1)

    def first_update(batch_size: int, accum_iter: int, run_name: str) -> dict[str, torch.Tensor]:
        cfg = resolve_config(
            {**raw, "train": {**raw["train"], "batch_size": batch_size, "accum_iter": accum_iter, "run_name": run_name}}
        )
        torch.manual_seed(cfg.train.seed)
        initial = build_model(cfg.model).state_dict()
        result = pretrain(cfg, progress=False)
        payload = read_checkpoint(result.checkpoint)
        assert payload["progress"]["step"] == 1
        return {k: payload["model"][k] - initial[k] for k in initial}

    big = first_update(4, 1, "big")
    accumulated = first_update(2, 2, "accum")
    assert sum(d.abs().sum().item() for d in big.values()) > 0
    for key, delta in big.items():
        torch.testing.assert_close(accumulated[key], delta, rtol=1e-4, atol=1e-6, msg=f"{key} update differs")


def test_bf16_precision_runs_on_cpu(tiny_config_dict):
    result = _run(tiny_config_dict, train__precision="bf16", train__epochs=1)
    assert math.isfinite(result.train_loss)
    assert result.checkpoint.is_file()
    payload = read_checkpoint(result.checkpoint)
    assert all(t.dtype == torch.float32 for t in payload["model"].values() if t.is_floating_point())


def test_non_finite_loss_stops_with_an_error_naming_the_step(tiny_config_dict, monkeypatch):
    real_forward = MaskedAutoencoder.forward
    calls = {"n": 0}

    def forward(self, x, **kwargs):
        loss, pred, mask = real_forward(self, x, **kwargs)
        calls["n"] += self.training  # training iterations only (the held-out checks run in eval mode)
        if self.training and calls["n"] == 3:  # the third training iteration: after two good steps
            loss = loss * float("nan")
        return loss, pred, mask

    monkeypatch.setattr(MaskedAutoencoder, "forward", forward)
    with pytest.raises(NonFiniteLossError) as exc:
        _run(tiny_config_dict)
    message = str(exc.value)
    assert "step 2" in message
    assert "nan" in message
    assert "\n" not in message


# --- atomic checkpoints --------------------------------------------------------------------------------
def test_write_checkpoint_leaves_no_temp_file(tmp_path):
    path = write_checkpoint({"x": torch.arange(3)}, tmp_path / "ckpt" / "checkpoint.pt")
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.arange(3))


def test_write_checkpoint_failing_midway_keeps_the_previous_file(tmp_path, monkeypatch):
    path = write_checkpoint({"version": torch.tensor(1)}, tmp_path / "checkpoint.pt")
    real_save = torch.save

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_checkpoint({"version": torch.tensor(2)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    assert torch.load(path, weights_only=True)["version"].item() == 1


def test_periodic_checks_report_knn_accuracy_when_the_heldout_split_has_labels(tiny_config_dict, tiny_image_folder):
    """With class folders in both splits, each check adds the weighted k-NN top-1 of the held-out CLS features
    against the training ones; the last one equals a hand-computed vote (numpy) on the final weights."""
    from PIL import Image as PILImage

    for i, cls in enumerate(["cats", "dogs", "cats", "dogs"]):  # a labelled held-out split
        (tiny_image_folder / "val" / cls).mkdir(parents=True, exist_ok=True)
        PILImage.new("RGB", (40, 36), (200, 40 * i, 30) if cls == "cats" else (20, 40 * i, 220)).save(
            tiny_image_folder / "val" / cls / f"{cls}{i}.png"
        )
    result = _run(tiny_config_dict)
    checks = [r for r in _records(result.metrics) if "heldout_loss" in r]
    assert [r["epoch"] for r in checks] == [1, 2] and all("knn_top1" in r and "knn_top5" in r for r in checks)

    from anymae.core import load_model
    from anymae.core.config import from_dict
    from anymae.plugins import get_registry

    model = load_model(result.checkpoint).eval()
    image = get_registry().modality("image")
    data = from_dict(image.data_config, tiny_config_dict["data"], "data")
    tok = from_dict(image.tokenizer_config, tiny_config_dict["model"]["tokenizer"], "model.tokenizer")
    features = {}
    for split in ("train", "heldout"):
        dataset = image.build_labelled_dataset(data, tok, split=split, augment=None)
        x = torch.stack([dataset[i][0] for i in range(len(dataset))])
        with torch.no_grad():
            cls = model.encode(x)[:, 0].numpy().astype(np.float64)  # CLS after the final norm
        features[split] = (cls / np.linalg.norm(cls, axis=1, keepdims=True), [dataset[i][1] for i in range(len(x))])
    (bank, bank_labels), (queries, labels) = features["train"], features["heldout"]
    correct = 0
    for query, label in zip(queries, labels, strict=True):
        sims = bank @ query
        votes = np.zeros(2)
        for j in np.argsort(-sims)[:20]:  # k = 20 is more than the 8 training images: all of them vote
            votes[bank_labels[j]] += np.exp(sims[j] / 0.07)
        correct += int(votes.argmax() == label)
    assert checks[-1]["knn_top1"] == pytest.approx(100.0 * correct / len(labels))
