"""Every ``train.*`` and ``optim.*`` field means something in every command: a short run of ``pretrain``,
``finetune`` and ``linprobe`` reads it, or setting it to anything but its default is refused when the config is
read, with an error naming the field. The runs also exercise the loop's options in every command: a non-finite
loss skipped (``on_nonfinite: skip``), step checkpoints rotated by ``keep_last``, best and last kept apart."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

import pytest
import torch
from test_finetune import _add_labelled_val, _classify_overrides

from anymae.core.config import (
    ClassifyOptimConfig,
    ConfigError,
    OptimConfig,
    TrainConfig,
    apply_overrides,
    load_classify_config,
    resolve_config,
)
from anymae.core.train import probe, task_classify, task_pretrain, trainer
from anymae.core.train.task_classify import ClassifyTask, train_classifier
from anymae.core.train.task_pretrain import PretrainTask, pretrain
from anymae.core.weights.loading import load_model


class _Reads:
    """Records which dataclass fields of the wrapped config sections are read, except while the whole config
    is copied into plain data (config.yaml, checkpoints), which reads every field and honours none."""

    def __init__(self) -> None:
        self.seen: dict[str, set[str]] = {}
        self.paused = False

    def watch(self, section: str, obj: Any) -> None:
        names = {f.name for f in dataclasses.fields(obj)}
        seen, reads = self.seen.setdefault(section, set()), self

        class Recording(type(obj)):  # type: ignore[misc]
            def __getattribute__(self, name: str) -> Any:
                if name in names and not reads.paused:
                    seen.add(name)
                return object.__getattribute__(self, name)

        obj.__class__ = Recording

    def paused_copy(self, real: Any) -> Any:
        def paused(cfg: Any) -> Any:
            self.paused = True
            try:
                return real(cfg)
            finally:
                self.paused = False

        return paused

    def patch_plain_copies(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for module in (trainer, task_pretrain, task_classify, probe):
            monkeypatch.setattr(module, "config_to_dict", self.paused_copy(module.config_to_dict))


def _one_nan_loss(monkeypatch: pytest.MonkeyPatch, task_cls: type) -> dict[str, int]:
    """The task's second training loss becomes NaN (a step the run must skip under on_nonfinite: skip)."""
    real, calls = task_cls.loss, {"n": 0}

    def loss(self, net, batch):
        value, n = real(self, net, batch)
        calls["n"] += 1
        return (value * float("nan") if calls["n"] == 2 else value), n

    monkeypatch.setattr(task_cls, "loss", loss)
    return calls


def _other_value(section_cls: type, name: str) -> Any:
    """A valid value different from the field's default (what a user who sets the field would write)."""
    default = next(f for f in dataclasses.fields(section_cls) if f.name == name).default
    hint = typing.get_type_hints(section_cls)[name]
    if typing.get_origin(hint) is typing.Literal:
        return next(a for a in typing.get_args(hint) if a != default)
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    if isinstance(default, float):
        return default / 2 if default else 0.5
    if isinstance(default, tuple):
        return [v * 0.9 for v in default]
    if default is None:
        return 2
    raise AssertionError(f"no alternative value for {section_cls.__name__}.{name}={default!r}")


def _unread_fields_are_refused(reads: _Reads, sections: dict[str, type], load: Any) -> list[tuple[str, str]]:
    """For each field the run did not read: setting it must raise a ConfigError naming it."""
    unread = [
        (s, f.name) for s, cls in sections.items() for f in dataclasses.fields(cls) if f.name not in reads.seen[s]
    ]
    for section, name in unread:
        value = _other_value(sections[section], name)
        with pytest.raises(ConfigError, match=name) as exc:
            load([f"{section}.{name}={json.dumps(value)}"])
        assert "unknown config key" not in str(exc.value)
    return unread


@pytest.fixture
def pretrain_raw(tiny_config_dict: dict[str, Any]) -> dict[str, Any]:
    raw = tiny_config_dict
    raw["train"].update(epochs=1, batch_size=2, save_every_steps=1, keep_last=2, on_nonfinite="skip")
    raw["optim"]["warmup_epochs"] = 0
    return raw


def test_every_train_and_optim_field_is_read_or_refused_by_pretrain(pretrain_raw, monkeypatch):
    cfg = resolve_config(json.loads(json.dumps(pretrain_raw)))
    reads = _Reads()
    reads.patch_plain_copies(monkeypatch)
    reads.watch("train", cfg.train)
    reads.watch("optim", cfg.optim)
    _one_nan_loss(monkeypatch, PretrainTask)
    with pytest.warns(RuntimeWarning, match="skipping this step"):
        result = pretrain(cfg, progress=False)
    records = [json.loads(line) for line in result.metrics.read_text().splitlines()]
    assert [r["skipped_steps"] for r in records if "skipped_steps" in r] == [1]  # 4 windows, 1 skipped
    steps = sorted(p.name for p in result.run_dir.glob("checkpoint-*.pt"))
    assert steps == ["checkpoint-0001.pt", "checkpoint-step00000002.pt"]  # keep_last 2 of steps 1, 2 and the end

    def load(overrides):
        return resolve_config(apply_overrides(json.loads(json.dumps(pretrain_raw)), overrides))

    sections = {"train": TrainConfig, "optim": OptimConfig}
    unread = _unread_fields_are_refused(reads, sections, load)
    assert unread == [("train", "fsdp_reshard_after_forward"), ("train", "prefetch_factor")]


@pytest.mark.parametrize("mode", ["finetune", "linprobe"])
def test_every_train_and_optim_field_is_read_or_refused_by_classifiers(
    mode, tmp_path: Path, tiny_image_folder: Path, pretrain_raw, monkeypatch
):
    pretrained = pretrain(resolve_config(json.loads(json.dumps(pretrain_raw))), progress=False).checkpoint
    _add_labelled_val(tiny_image_folder)
    common = [
        *_classify_overrides(tiny_image_folder, tmp_path / "cls"),
        f"{mode}.checkpoint={pretrained}",
        "train.batch_size=2",
        "train.save_every_steps=1",
        "train.keep_last=1",
        "train.log_every_steps=1",
        "train.on_nonfinite=skip",
        "optim.warmup_epochs=0",
        *(["linprobe.solver=sgd"] if mode == "linprobe" else []),
    ]

    def load(overrides):
        return load_classify_config(f"demo_image_{mode}", [*common, *overrides], mode=mode)

    cfg = load([])
    reads = _Reads()
    reads.patch_plain_copies(monkeypatch)
    reads.watch("train", cfg.train)
    reads.watch("optim", cfg.optim)
    _one_nan_loss(monkeypatch, ClassifyTask)
    with pytest.warns(RuntimeWarning, match="skipping this step"):
        result = train_classifier(cfg, load_model(pretrained), progress=False)
    records = [json.loads(line) for line in result.metrics.read_text().splitlines()]
    assert [r["skipped_steps"] for r in records if "skipped_steps" in r] == [1]
    assert {r["step"] for r in records if "loss" in r} == {1, 2, 3}  # 4 windows, 1 skipped
    names = sorted(p.name for p in result.run_dir.glob("checkpoint-*.pt"))
    assert names == ["checkpoint-best.pt", "checkpoint-last.pt", "checkpoint-step00000002.pt"]  # keep_last 1

    sections = {"train": TrainConfig, "optim": ClassifyOptimConfig}
    unread = {name for _, name in _unread_fields_are_refused(reads, sections, load)}
    expected = {"distributed", "fsdp_reshard_after_forward", "heldout_batches", "figure_samples", "prefetch_factor",
                "knn"}  # fmt: skip
    expected |= {"momentum", "trust_coeff"} if cfg.optim.optimizer == "adamw" else {"betas"}
    assert unread == expected
    # Read by the trainer's generic checks, and refused for classifiers when the config is read:
    for name in ["checkpoint_decoder_blocks", *(["checkpoint_encoder_blocks"] if mode == "linprobe" else [])]:
        with pytest.raises(ConfigError, match=f"train.{name}=1 is not supported by anymae {mode}"):
            load([f"train.{name}=1"])


def test_compile_and_block_recomputation_apply_to_classifiers(tmp_path, tiny_image_folder, pretrain_raw, monkeypatch):
    """train.compile compiles each encoder block of a fine-tuned classifier and train.checkpoint_encoder_blocks
    recomputes the first N; the run's weights equal the plain run's (recomputation changes memory, not numbers)."""
    pretrained = pretrain(resolve_config(json.loads(json.dumps(pretrain_raw))), progress=False).checkpoint
    _add_labelled_val(tiny_image_folder)
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compiled.append(self))  # no inductor build
    common = [*_classify_overrides(tiny_image_folder, tmp_path / "cls"), f"finetune.checkpoint={pretrained}"]
    plain = load_classify_config("demo_image_finetune", [*common, "train.run_name=plain"], mode="finetune")
    options = ["train.run_name=options", "train.compile=true", "train.checkpoint_encoder_blocks=1"]
    with_options = load_classify_config("demo_image_finetune", [*common, *options], mode="finetune")
    a = train_classifier(plain, load_model(pretrained), progress=False)
    assert compiled == []
    b = train_classifier(with_options, load_model(pretrained), progress=False)
    depth = load_model(pretrained).config["model"]["depth"]
    assert len(compiled) == depth and all(type(m).__name__ == "Block" for m in compiled)
    wa = torch.load(a.last_checkpoint, weights_only=True)["model"]
    wb = torch.load(b.last_checkpoint, weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_every_train_and_optim_field_is_read_or_refused_by_the_lbfgs_probe(
    tmp_path: Path, tiny_image_folder: Path, pretrain_raw, monkeypatch
):
    """linprobe.solver=lbfgs (features once, a fit to convergence) has no epochs and no optimizer: what it does
    not read is refused when the config is read, through the Python API as through the CLI."""
    pretrained = pretrain(resolve_config(json.loads(json.dumps(pretrain_raw))), progress=False).checkpoint
    _add_labelled_val(tiny_image_folder)
    common = [f"data.root={tiny_image_folder}", f"train.output_dir={tmp_path / 'cls'}", "train.device=cpu",
              "train.num_workers=0", "train.batch_size=4", f"linprobe.checkpoint={pretrained}"]  # fmt: skip

    def load(overrides):
        return load_classify_config("demo_image_linprobe", [*common, *overrides], mode="linprobe")

    cfg = load([])
    assert cfg.linprobe.solver == "lbfgs"
    reads = _Reads()
    reads.patch_plain_copies(monkeypatch)
    reads.watch("train", cfg.train)
    reads.watch("optim", cfg.optim)
    result = train_classifier(cfg, load_model(pretrained), progress=False)
    assert result.best_checkpoint.is_file() and isinstance(result, probe.ProbeResult)
    unread = {
        f"{s}.{n}"
        for s, n in _unread_fields_are_refused(reads, {"train": TrainConfig, "optim": ClassifyOptimConfig}, load)
    }
    assert {f"optim.{f.name}" for f in dataclasses.fields(ClassifyOptimConfig)} <= unread  # no optimizer at all
    assert {"train.epochs", "train.eval_every_epochs", "train.compile"} <= unread
    assert "train.batch_size" not in unread and "train.max_bad_fraction" not in unread
