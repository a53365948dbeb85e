"""Runs that survive: SIGKILL + resume is bit-exact (one process and 2 gloo ranks), SIGTERM checkpoints and
exits for a requeue, non-finite losses stop or skip on every rank without a hang, 2 ranks equal one process
with the same global batch, checkpoint writes survive SIGKILL, keep-last-N rotation, bad-sample counters.

Training runs are real ``anymae pretrain`` processes (the console entry point, ``torchrun``'s environment
variables for 2 ranks) driven by a small script that injects the fault from inside at a chosen forward call.
"""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml

from anymae.core.io.checkpoint import read_checkpoint

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="signals and process groups as on Linux")

DRIVER = '''\
"""`anymae` with a fault injected at forward call CHAOS_AT on rank CHAOS_RANK: kill | term | nan."""
import os, signal, sys

from anymae.core.cli import main
from anymae.core.model.mae import MaskedAutoencoder

action, at = os.environ.get("CHAOS_ACTION"), [int(a) for a in os.environ.get("CHAOS_AT", "0").split(",")]
if action and os.environ.get("RANK", "0") == os.environ.get("CHAOS_RANK", "0"):
    real, calls = MaskedAutoencoder.forward, [0]

    def forward(self, x, **kwargs):
        calls[0] += self.training
        if self.training and calls[0] in at and action == "kill":
            os.killpg(0, signal.SIGKILL)  # the whole job at once, as when a node dies
        if self.training and calls[0] in at and action == "term":
            os.kill(os.getpid(), signal.SIGTERM)
        loss, pred, mask = real(self, x, **kwargs)
        if self.training and calls[0] in at and action == "nan":
            loss = loss * float("nan")
        return loss, pred, mask

    MaskedAutoencoder.forward = forward
sys.exit(main(sys.argv[1:]))
'''

EPOCHS, STEPS_PER_EPOCH = 3, 4  # 16 samples (8 images x 2 repeats), global batch 4


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import make_image, write_image

    root = tmp_path_factory.mktemp("reliability")
    for i in range(8):
        write_image(root / "images" / "train" / f"c{i % 2}" / f"{i}.jpg", make_image(i))
    write_image(root / "images" / "val" / "v.jpg", make_image(99))
    (root / "driver.py").write_text(DRIVER)
    return root


def _config(workdir: Path, name: str, **train: Any) -> Path:
    raw = {
        "name": name,
        "model": {
            "modality": "image",
            "tokenizer": {"img_size": 16, "patch_size": 4},
            "norm_pix_loss": True,
            "embed_dim": 32,
            "depth": 2,
            "num_heads": 2,
            "decoder_embed_dim": 16,
            "decoder_depth": 1,
            "decoder_num_heads": 2,
        },
        "data": {"root": str(workdir / "images"), "heldout_split": "val", "repeats": 2},
        "optim": {"lr": 1e-3, "warmup_epochs": 1},
        "train": {
            "epochs": EPOCHS,
            "batch_size": 4,
            "num_workers": 0,
            "device": "cpu",
            "output_dir": str(workdir / "runs"),
            "log_every_steps": 1,
            "save_every_epochs": 1,
            "heldout_batches": 1,
            "figure_samples": 0,
            **train,
        },
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(workdir: Path, config: Path, *args: str, ranks: int = 1, timeout: float = 300, **chaos: str):
    """Run ``anymae pretrain CONFIG ARGS`` as ``ranks`` processes (one process group); -> [(rc, stderr)]."""
    port, procs = _free_port(), []
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ANYMAE_", "CHAOS_"))}
    base.update(OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parent), **chaos)
    for rank in range(ranks):
        env = dict(base)
        if ranks > 1:
            env.update(WORLD_SIZE=str(ranks), RANK=str(rank), LOCAL_RANK=str(rank))
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        cmd = [sys.executable, str(workdir / "driver.py"), "pretrain", str(config), "--no-progress", *args]
        group = 0 if rank == 0 else procs[0].pid
        procs.append(subprocess.Popen(cmd, env=env, process_group=group, stderr=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(procs[0].pid, signal.SIGKILL)
            raise AssertionError(f"anymae pretrain hung for {timeout} s") from None
        results.append((proc.returncode, err))
    return results


def _step_losses(run_dir: Path) -> dict[int, float]:
    """Per-step loss from metrics.jsonl, where every step appears exactly once (a resumed run drops the rows
    written after its checkpoint before it logs those steps again)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert len(steps) == len(set(steps)), steps
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def _assert_resumed_after(run_dir: Path, started: float, step: int) -> None:
    """The rows written by the run resumed at time ``started`` begin at ``step`` + 1: it continued from the
    checkpoint of step ``step``, not from an older one (whose resume would give the same final bytes)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    before = [r["step"] for r in records if "loss" in r and r["time"] < started]
    after = [r["step"] for r in records if "loss" in r and r["time"] >= started]
    assert before == list(range(1, step + 1)) and after[0] == step + 1, (before, after)


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(checkpoint)["model"]


def _assert_same_run(a: Path, b: Path) -> None:
    """Bit-exact: every step's loss and every final weight."""
    assert _step_losses(a) == _step_losses(b)
    assert len(_step_losses(a)) == EPOCHS * STEPS_PER_EPOCH
    wa, wb = _weights(a / f"checkpoint-{EPOCHS:04d}.pt"), _weights(b / f"checkpoint-{EPOCHS:04d}.pt")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"{key} differs"


@pytest.fixture(scope="module")
def uninterrupted(workdir: Path) -> dict[int, Path]:
    """Reference runs, one per process count: {1: run_dir, 2: run_dir}."""
    runs = {}
    for ranks, batch in ((1, 4), (2, 2)):
        config = _config(workdir, f"full{ranks}", batch_size=batch)
        assert [rc for rc, _ in _launch(workdir, config, ranks=ranks)] == [0] * ranks
        runs[ranks] = workdir / "runs" / f"full{ranks}"
    return runs


@pytest.mark.parametrize("ranks", [1, 2])
def test_sigkill_mid_epoch_then_resume_auto_is_bit_exact(workdir, uninterrupted, ranks):
    # Killed at forward call 7 (epoch 2, batch 3) right after the step-6 checkpoint; resumed with data
    # workers although the reference had none: per-sample seeds make the worker count irrelevant.
    config = _config(workdir, f"killed{ranks}", batch_size=4 // ranks, save_every_steps=2, num_workers=2)
    results = _launch(workdir, config, ranks=ranks, CHAOS_ACTION="kill", CHAOS_AT="7")
    assert all(rc == -signal.SIGKILL for rc, _ in results), results
    run_dir = workdir / "runs" / f"killed{ranks}"
    assert sorted(p.name for p in run_dir.glob("checkpoint-*.pt")) == [
        "checkpoint-0001.pt",
        "checkpoint-step00000002.pt",
        "checkpoint-step00000006.pt",
    ]
    started = time.time()
    assert [rc for rc, _ in _launch(workdir, config, "--resume", "auto", ranks=ranks)] == [0] * ranks
    _assert_same_run(uninterrupted[ranks], run_dir)
    _assert_resumed_after(run_dir, started, 6)


def test_two_ranks_match_one_process_with_the_same_global_batch(uninterrupted):
    one, two = _step_losses(uninterrupted[1]), _step_losses(uninterrupted[2])
    assert one.keys() == two.keys()
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5), f"step {step}"
    wa = _weights(uninterrupted[1] / f"checkpoint-{EPOCHS:04d}.pt")
    wb = _weights(uninterrupted[2] / f"checkpoint-{EPOCHS:04d}.pt")
    for key in wa:
        a, b = wa[key], wb[key]
        if key.endswith("attn.qkv.bias"):
            # The key bias has an exactly zero true gradient (softmax ignores a shift shared by all keys), so
            # AdamW turns rounding noise into lr-sized steps there: only the query and value biases compare.
            dim = a.numel() // 3
            a, b = torch.cat([a[:dim], a[2 * dim :]]), torch.cat([b[:dim], b[2 * dim :]])
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=key)


def test_sigterm_on_one_rank_checkpoints_every_rank_at_the_next_step_and_the_requeued_run_continues(
    workdir, uninterrupted
):
    config = _config(workdir, "term", batch_size=2)
    results = _launch(workdir, config, ranks=2, CHAOS_ACTION="term", CHAOS_AT="6", CHAOS_RANK="1")
    assert [rc for rc, _ in results] == [75, 75], results
    assert "SIGTERM: stopped at step 6 (epoch 2, batch 2/4)" in results[0][1]
    assert "--resume auto" in results[0][1]
    run_dir = workdir / "runs" / "term"
    assert (run_dir / "checkpoint-step00000006.pt").is_file()
    started = time.time()
    assert [rc for rc, _ in _launch(workdir, config, "--resume", "auto", ranks=2)] == [0, 0]
    _assert_same_run(uninterrupted[2], run_dir)
    _assert_resumed_after(run_dir, started, 6)


def test_nan_loss_on_one_rank_stops_every_rank_naming_the_step_and_checkpoint(workdir):
    config = _config(workdir, "nan", batch_size=2)
    results = _launch(workdir, config, ranks=2, CHAOS_ACTION="nan", CHAOS_AT="6", CHAOS_RANK="1")
    assert [rc for rc, _ in results] == [1, 1], results
    for _, err in results:
        assert "step 5 (epoch 2, batch 2)" in err and "checkpoint-0001.pt" in err, err
        assert "Traceback" not in err


def test_skip_mode_drops_non_finite_steps_on_every_rank_and_aborts_after_k_in_a_row(workdir):
    config = _config(workdir, "skip", batch_size=2, on_nonfinite="skip", max_consecutive_skips=2)
    results = _launch(workdir, config, ranks=2, CHAOS_ACTION="nan", CHAOS_AT="3", CHAOS_RANK="1")
    assert [rc for rc, _ in results] == [0, 0], results
    records = [json.loads(line) for line in (workdir / "runs" / "skip" / "metrics.jsonl").read_text().splitlines()]
    assert records[-2]["skipped_steps"] == 1 and records[-2]["step"] == EPOCHS * STEPS_PER_EPOCH - 1

    config = _config(workdir, "skip2", batch_size=2, on_nonfinite="skip", max_consecutive_skips=2)
    results = _launch(workdir, config, ranks=2, CHAOS_ACTION="nan", CHAOS_AT="3,4", CHAOS_RANK="0")
    assert [rc for rc, _ in results] == [1, 1], results
    assert "2 steps in a row had a non-finite loss" in results[0][1]


def test_keep_last_rotation_and_bad_sample_counters(workdir):
    bad_images = workdir / "with_bad"
    for i in range(8):
        path = bad_images / "train" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        if i < 2:
            path.write_bytes(b"not a jpeg at all")
        else:
            path.write_bytes((workdir / "images" / "train" / f"c{i % 2}" / f"{i}.jpg").read_bytes())
    config = _config(workdir, "rotate", batch_size=2, save_every_steps=1, keep_last=2, max_bad_fraction=0.3)
    raw = yaml.safe_load(config.read_text())
    raw["data"].update(root=str(bad_images), heldout_split=None)
    config.write_text(yaml.safe_dump(raw))
    results = _launch(workdir, config, ranks=2)
    assert [rc for rc, _ in results] == [0, 0], results
    run_dir = workdir / "runs" / "rotate"
    assert sorted(p.name for p in run_dir.glob("checkpoint-*.pt")) == [
        "checkpoint-0003.pt",
        "checkpoint-step00000011.pt",
    ]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    per_epoch = [r["epoch_bad_samples"] for r in records if "epoch_bad_samples" in r]
    # 2 of 8 files are bad, each listed twice (repeats: 2): every epoch visits all 16 entries.
    assert per_epoch == [4, 4, 4]
    assert records[-1]["bad_samples"] == 12
    assert "0.jpg" in results[0][1] and "1.jpg" in results[0][1]  # warnings name the bad files

    raw["train"]["max_bad_fraction"] = 0.2
    config.write_text(yaml.safe_dump(raw))
    results = _launch(workdir, config, ranks=2)
    assert [rc for rc, _ in results] == [1, 1], results
    assert "more than train.max_bad_fraction=0.2" in results[0][1]


WRITER = """\
import importlib.util, sys, time
from pathlib import Path

import torch

spec = importlib.util.spec_from_file_location("ckpt", sys.argv[1])
ckpt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ckpt)
folder = Path(sys.argv[2])
payload = {"weights": torch.randn(2_000_000)}
for n in range(1, 10_000):
    payload["n"] = n
    path = ckpt.write_checkpoint(payload, folder / f"checkpoint-step{n:08d}.pt")
    for old in sorted(folder.glob("checkpoint-*.pt"))[:-2]:  # keep-last-2, newest kept
        old.unlink()
"""


def test_sigkill_during_checkpoint_writes_never_loses_the_latest_complete_checkpoint(tmp_path):
    from anymae.core.io import checkpoint
    from anymae.core.train import run as run_layer

    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    folder = tmp_path / "ckpts"
    folder.mkdir()
    rng = random.Random(0)
    newest = 0
    run = SimpleNamespace(name="ckpts", train=SimpleNamespace(output_dir=str(tmp_path), run_name=None))
    for _ in range(20):
        proc = subprocess.Popen([sys.executable, str(script), checkpoint.__file__, str(folder)])
        deadline = time.time() + 60
        while not list(folder.glob("checkpoint-*.pt")) and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.4))  # somewhere inside a write, a rotation or between them
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert run_layer.list_checkpoints(folder), "no complete checkpoint left"
        latest = read_checkpoint(run_layer.resume_path("auto", run, pattern="checkpoint-*.pt"))  # --resume auto picks
        assert latest["n"] >= 1 and latest["weights"].numel() == 2_000_000
        for path in folder.glob("checkpoint-*.pt"):  # every file under a final name is whole
            assert read_checkpoint(path)["weights"].numel() == 2_000_000
        assert latest["n"] == max(read_checkpoint(p)["n"] for p in folder.glob("checkpoint-*.pt"))
        newest = latest["n"]
        for path in folder.iterdir():  # the next trial starts from a clean folder
            path.unlink()
    assert newest >= 1


def test_an_unwritable_output_directory_fails_before_training(workdir):
    blocker = workdir / "not-a-dir"
    blocker.write_text("a file where the output folder should be")
    config = _config(workdir, "unwritable", output_dir=str(blocker / "runs"))
    [(rc, err)] = _launch(workdir, config)
    assert rc == 1 and "train.output_dir: cannot write to" in err and "Traceback" not in err


def test_a_failing_checkpoint_write_names_the_file_and_keeps_the_previous_one(tiny_config_dict, monkeypatch):
    from anymae.core import pretrain
    from anymae.core.config import resolve_config
    from anymae.core.io import checkpoint as checkpoint_module
    from anymae.core.io.checkpoint import CheckpointError

    raw = copy.deepcopy(tiny_config_dict)
    raw["train"].update(epochs=2, save_every_epochs=1)
    real_save, calls = torch.save, []

    def full_disk(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*checkpoint-0002.pt: No space left") as exc:
        pretrain(resolve_config(raw), progress=False)
    assert "checkpoint-0001.pt is intact" in str(exc.value)
    first = Path(str(exc.value).split("the previous checkpoint ")[1].split(" is intact")[0])
    assert read_checkpoint(first)["progress"]["epoch"] == 1
    assert not list(first.parent.glob(".checkpoint-*"))  # no temp file left behind
