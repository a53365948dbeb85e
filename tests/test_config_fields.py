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
from anymae.core.data.samples import DataError
from anymae.core.io.checkpoint import read_checkpoint
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
    recomputes the first N; the run's weights equal the plain run's (recomputation changes memory, not numbers).
    The blocks really run compiled: TorchDynamo traces them and the traced graphs compute the steps (a backend
    that runs each graph as traced, so that no inductor kernels are built: minutes on a small CPU)."""
    pretrained = pretrain(resolve_config(json.loads(json.dumps(pretrain_raw))), progress=False).checkpoint
    _add_labelled_val(tiny_image_folder)
    compiled, graph_calls, real_compile = [], [], torch.nn.Module.compile

    def traced(gm: torch.fx.GraphModule, example_inputs: Any) -> Any:
        def run(*args: Any) -> Any:
            graph_calls.append(gm)
            return gm.forward(*args)

        return run

    def compile_eagerly(self, **kwargs):
        compiled.append(self)
        real_compile(self, **{**kwargs, "backend": traced})

    monkeypatch.setattr(torch.nn.Module, "compile", compile_eagerly)
    torch._dynamo.reset()
    common = [*_classify_overrides(tiny_image_folder, tmp_path / "cls"), f"finetune.checkpoint={pretrained}"]
    plain = load_classify_config("demo_image_finetune", [*common, "train.run_name=plain"], mode="finetune")
    a = train_classifier(plain, load_model(pretrained), progress=False)
    assert compiled == [] and graph_calls == []
    wa = torch.load(a.last_checkpoint, weights_only=True)["model"]
    # Each option on its own: a recomputed block runs its forward through torch.utils.checkpoint, not compiled.
    for name, option in (("compiled", "train.compile=true"), ("recomputed", "train.checkpoint_encoder_blocks=1")):
        cfg = load_classify_config("demo_image_finetune", [*common, f"train.run_name={name}", option], mode="finetune")
        b = train_classifier(cfg, load_model(pretrained), progress=False)
        wb = torch.load(b.last_checkpoint, weights_only=True)["model"]
        assert all(torch.equal(wa[k], wb[k]) for k in wa), option
    depth = load_model(pretrained).config["model"]["depth"]
    assert len(compiled) == depth and all(type(m).__name__ == "Block" for m in compiled)
    assert graph_calls  # the traced blocks computed the compiled run's steps


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


# What setting each pre-training field does to a tiny 2-epoch run (4 steps), next to the same run without it:
# "weights" the final weights differ; "equal" they are bit-equal (the field trades speed or memory only, by
# design) and the named observation differs where there is one: "files" the run folder's file names, "loss rows"
# the logged training rows, "checks" the held-out rows, "folder" where the run is written. Each entry:
# (overrides, expected effect, overrides of both runs).
FIELD_EFFECTS: dict[str, tuple[dict[str, Any], str, dict[str, Any]]] = {
    "train.epochs": ({"train.epochs": 3}, "weights", {}),
    "train.batch_size": ({"train.batch_size": 2}, "weights", {}),
    "train.accum_iter": ({"train.accum_iter": 2}, "weights", {}),
    "train.seed": ({"train.seed": 1}, "weights", {}),
    "train.precision": ({"train.precision": "bf16"}, "weights", {}),
    "optim.blr": ({"optim.blr": 3e-2}, "weights", {"optim.lr": None}),
    "optim.lr": ({"optim.lr": 2e-3}, "weights", {}),
    "optim.min_lr": ({"optim.min_lr": 5e-4}, "weights", {}),
    "optim.weight_decay": ({"optim.weight_decay": 0.5}, "weights", {}),
    "optim.betas": ({"optim.betas": [0.5, 0.6]}, "weights", {}),
    "optim.warmup_epochs": ({"optim.warmup_epochs": 0}, "weights", {}),
    "optim.fused": ({"optim.fused": True}, "close", {}),
    "optim.step_in_backward": ({"optim.step_in_backward": True}, "close", {}),
    "train.num_workers": ({"train.num_workers": 2}, "equal", {}),
    "train.checkpoint_decoder_blocks": ({"train.checkpoint_decoder_blocks": 1}, "equal", {}),
    "train.checkpoint_encoder_blocks": ({"train.checkpoint_encoder_blocks": 1}, "equal", {}),
    "train.malloc_mmap_threshold": ({"train.malloc_mmap_threshold": 65536}, "equal", {}),
    "train.save_every_epochs": ({"train.save_every_epochs": 1}, "equal, files", {}),
    "train.save_every_steps": ({"train.save_every_steps": 1}, "equal, files", {}),
    "train.keep_last": ({"train.keep_last": 1}, "equal, files", {"train.save_every_steps": 1}),
    "train.figure_samples": ({"train.figure_samples": 0}, "equal, files", {}),
    "train.log_every_steps": ({"train.log_every_steps": 2}, "equal, loss rows", {}),
    "train.eval_every_epochs": ({"train.eval_every_epochs": 2}, "equal, checks", {}),
    "train.heldout_batches": ({"train.heldout_batches": 2}, "equal, checks", {}),
    "train.knn": ({"train.knn": False}, "equal, checks", {}),
    "train.output_dir": ({"train.output_dir": "elsewhere"}, "equal, folder", {}),
    "train.run_name": ({"train.run_name": "other"}, "equal, folder", {}),
}
# Not in the table: device (one CPU here), pin_memory (CUDA only), compile (minutes: the slow
# test_compiled_blocks_give_the_eager_loss), distributed and fsdp_reshard_after_forward (torchrun: test_fsdp.py),
# persistent_workers and prefetch_factor (loader speed), on_nonfinite and max_consecutive_skips (a NaN run above),
# max_bad_fraction (test_the_bad_fraction_limit_stops_a_run_naming_the_count below).


def _observe(raw: dict[str, Any], out: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    raw = json.loads(json.dumps(raw))
    raw["train"]["output_dir"] = str(out)
    for key, value in overrides.items():
        section, name = key.split(".")
        raw[section][name] = str(out / value) if name == "output_dir" else value
    result = pretrain(resolve_config(raw), progress=False)
    rows = [json.loads(line) for line in result.metrics.read_text().splitlines()]
    return {
        "weights": read_checkpoint(result.checkpoint)["model"],
        "files": sorted(p.name for p in result.run_dir.iterdir() if not p.name.startswith("events.")),
        "loss rows": [r["step"] for r in rows if "loss" in r],
        "checks": [{k: v for k, v in r.items() if k != "time"} for r in rows if "heldout_loss" in r],
        "folder": result.run_dir.relative_to(out),
    }


@pytest.fixture(scope="module")
def field_runs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``observe(name, overrides)``: a tiny 2-epoch pre-training (the conftest images, held-out class folders so
    the k-NN check runs, one figure sample); runs without the field under test are shared by the tests."""
    from conftest import make_image, write_image

    root = tmp_path_factory.mktemp("fields")
    for i, cls in enumerate(["cats"] * 4 + ["dogs"] * 4):
        write_image(root / "images" / "train" / cls / f"{cls}{i}.{'jpg' if i % 2 == 0 else 'png'}", make_image(i))
    _add_labelled_val(root / "images")
    for i in range(4):  # 8 held-out images: two batches of 4 for the masked-patch loss
        write_image(root / "images" / "val" / f"v{i}.png", make_image(100 + i))
    raw = {"name": "tiny", "model": {"modality": "image", "tokenizer": {"img_size": 32, "patch_size": 8},
                                     "embed_dim": 32, "depth": 1, "num_heads": 2, "decoder_embed_dim": 16,
                                     "decoder_depth": 1, "decoder_num_heads": 2},
           "data": {"root": str(root / "images"), "heldout_split": "val"},
           "optim": {"lr": 1e-3, "warmup_epochs": 1},
           "train": {"epochs": 2, "batch_size": 4, "num_workers": 0, "device": "cpu", "log_every_steps": 1,
                     "heldout_batches": 1, "figure_samples": 1}}  # fmt: skip
    cache: dict[str, dict[str, Any]] = {}

    def observe(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
        key = json.dumps(overrides, sort_keys=True)
        if key not in cache:
            cache[key] = _observe(raw, root / f"runs{len(cache)}", overrides)
        return cache[key]

    return observe


def _close_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    for k in a:
        x, y = a[k], b[k]
        if k.endswith("attn.qkv.bias"):
            # The key bias has an exactly zero true gradient (softmax ignores a shift shared by all keys), so
            # AdamW turns rounding noise into lr-sized steps there: only the query and value biases compare.
            dim = x.numel() // 3
            x, y = torch.cat([x[:dim], x[2 * dim :]]), torch.cat([y[:dim], y[2 * dim :]])
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-6, msg=k)


@pytest.mark.parametrize("field", list(FIELD_EFFECTS))
def test_setting_a_field_changes_what_the_run_does_as_its_comment_says(field, field_runs):
    overrides, effect, both = FIELD_EFFECTS[field]
    base = field_runs("base", both)
    assert base["checks"] and "knn_top1" in base["checks"][-1]
    other = field_runs(field, {**both, **overrides})
    wa, wb = base["weights"], other["weights"]
    assert wa.keys() == wb.keys()
    if effect == "weights":
        assert any(not torch.equal(wa[k], wb[k]) for k in wa), f"{field} left every weight unchanged"
        return
    if effect == "close":
        _close_weights(wa, wb)
        return
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{field}: {k} differs"
    for observed in effect.split(", ")[1:]:
        assert base[observed] != other[observed], f"{field} left {observed} unchanged: {base[observed]}"


def test_the_bad_fraction_limit_stops_a_run_naming_the_count(tiny_config_dict, tiny_image_folder):
    """train.max_bad_fraction: 1 unreadable file of 8 (0.125) passes at 0.2 and stops the run at 0.1."""
    (tiny_image_folder / "train" / "cats" / "cats0.jpg").write_bytes(b"not an image")
    tiny_config_dict["train"].update(epochs=1, max_bad_fraction=0.2)
    pretrain(resolve_config(json.loads(json.dumps(tiny_config_dict))), progress=False)
    tiny_config_dict["train"].update(max_bad_fraction=0.1, run_name="strict")
    with pytest.raises(DataError, match=r"1 of 8 training samples were unreadable in epoch 1.*max_bad_fraction=0.1"):
        pretrain(resolve_config(tiny_config_dict), progress=False)
