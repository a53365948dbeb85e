"""One command for the first start and every restart: ``anymae pretrain CFG --resume auto`` starts a new run when
nothing is there to resume and continues otherwise, in the same run folder; killed with SIGKILL at random moments
and started again (by hand, by a requeueing job script, by ``torchrun --max-restarts``) it ends with exactly the
weights of the run left alone.

The runs are real ``anymae`` processes, started through a small driver that kills its own process with SIGKILL
at a chosen training micro-step (``KILL_AT``), or once per test (``KILL_ONCE``: a marker file) under torchrun.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from anymae.core.io.checkpoint import read_checkpoint

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="signals as on Linux")

DRIVER = '''\
"""`anymae` killed with SIGKILL at training micro-step KILL_AT of this process (KILL_ONCE: only while the
marker file KILL_ONCE does not exist yet; the kill creates it)."""
import os, signal, sys
from pathlib import Path

from anymae.core.cli import main
from anymae.core.train.trainer import Trainer

at, once = int(os.environ.get("KILL_AT", "0")), os.environ.get("KILL_ONCE")
if at and not (once and Path(once).exists()):
    real, calls = Trainer.train_step, [0]

    def train_step(self, batch, it, **kwargs):
        calls[0] += 1
        if calls[0] == at:
            if once:
                Path(once).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, batch, it, **kwargs)

    Trainer.train_step = train_step
sys.exit(main(sys.argv[1:]))
'''

EPOCHS, SAVE_EVERY = 3, 3  # 12 images, batch 2: 6 steps an epoch; a checkpoint every 3 steps and every epoch
FINAL = f"checkpoint-{EPOCHS:04d}.pt"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import make_image, write_image

    root = tmp_path_factory.mktemp("restarts")
    for i in range(12):
        write_image(root / "images" / "train" / f"c{i % 2}" / f"{i}.jpg", make_image(i))
    write_image(root / "images" / "val" / "v.jpg", make_image(99))
    (root / "driver.py").write_text(DRIVER)
    return root


def _config(workdir: Path, output: str) -> Path:
    raw = {
        "name": "restarts",
        "model": {
            "modality": "image",
            "tokenizer": {"img_size": 16, "patch_size": 4},
            "norm_pix_loss": True,
            "embed_dim": 16,
            "depth": 1,
            "num_heads": 2,
            "decoder_embed_dim": 8,
            "decoder_depth": 1,
            "decoder_num_heads": 2,
        },
        "data": {"root": str(workdir / "images"), "heldout_split": "val"},
        "optim": {"lr": 1e-3, "warmup_epochs": 1},
        "train": {
            "epochs": EPOCHS,
            "batch_size": 2,
            "num_workers": 0,
            "device": "cpu",
            "knn": False,
            "output_dir": str(workdir / output),
            "save_every_steps": SAVE_EVERY,
            "save_every_epochs": 1,
            "log_every_steps": 1,
            "heldout_batches": 1,
            "figure_samples": 0,
        },
    }
    path = workdir / f"{output}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANYMAE_", "KILL_"))}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def _pretrain(workdir: Path, config: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    """The user's one command, ``anymae pretrain CONFIG --resume auto``."""
    cmd = [sys.executable, str(workdir / "driver.py"), "pretrain", str(config), "--resume", "auto", "--no-progress"]
    return subprocess.run(cmd, env=_env(**extra), capture_output=True, text=True, timeout=300)


def _step_losses(run_dir: Path) -> dict[int, float]:
    """Each logged step's loss; every step appears once (a restart drops the rows written after its checkpoint)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert len(steps) == len(set(steps)), steps
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = read_checkpoint(a)["model"], read_checkpoint(b)["model"]
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"{key} differs"


@pytest.fixture(scope="module")
def left_alone(workdir: Path) -> Path:
    """The reference: the same command, started once into an empty output folder and left alone."""
    done = _pretrain(workdir, _config(workdir, "alone"))
    assert done.returncode == 0, done.stderr
    run_dir = workdir / "alone" / "restarts"
    assert "--resume auto: no checkpoint in" in done.stdout and str(run_dir) in done.stdout, done.stdout
    return run_dir / FINAL


def test_resume_auto_with_nothing_to_resume_starts_a_new_run_then_continues_in_the_same_folder(
    tiny_config_dict: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from anymae.core.config import resolve_config
    from anymae.core.train.task_pretrain import pretrain

    cfg = resolve_config(tiny_config_dict)
    first = pretrain(cfg, resume="auto", progress=False)
    run_dir = Path(tiny_config_dict["train"]["output_dir"]) / "tiny"
    out = capsys.readouterr().out
    starts = [line for line in out.splitlines() if line.startswith("--resume auto:")]
    assert starts == [f"--resume auto: no checkpoint in {run_dir} yet; starting a new pretrain run there"], out
    assert first.run_dir == run_dir
    assert sorted(p.name for p in run_dir.glob("checkpoint-*.pt")) == ["checkpoint-0002.pt"]

    more = resolve_config({**tiny_config_dict, "train": {**tiny_config_dict["train"], "epochs": 3}})
    second = pretrain(more, resume="auto", progress=False)
    out = capsys.readouterr().out
    assert "--resume auto: no checkpoint" not in out
    assert f"resuming pretrain from {run_dir / 'checkpoint-0002.pt'} (step 4): epoch 3 of 3 epochs" in out, out
    assert second.run_dir == run_dir and sorted(p.name for p in run_dir.parent.iterdir()) == ["tiny"]
    assert (run_dir / "checkpoint-0003.pt").is_file()


def test_one_command_killed_ten_times_at_random_moments_ends_with_the_weights_of_the_run_left_alone(
    workdir: Path, left_alone: Path
) -> None:
    config = _config(workdir, "killed")
    run_dir = workdir / "killed" / "restarts"
    moments = random.Random(3)  # kills at micro-steps 2, 2, 3, 4, 1, 1, 4, 3, 2, 2 of each new process
    had_checkpoint = []  # at each kill: was there a checkpoint to resume from yet
    for _ in range(10):
        # The kill lands at one of the next SAVE_EVERY + 1 micro-steps of the new process: before its next
        # step checkpoint or just after it; the first kills come before the run's first checkpoint.
        killed = _pretrain(workdir, config, KILL_AT=str(moments.randint(1, SAVE_EVERY + 1)))
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        had_checkpoint.append(any(run_dir.glob("checkpoint-*.pt")))
    assert False in had_checkpoint and True in had_checkpoint, had_checkpoint
    assert not (run_dir / FINAL).exists()
    done = _pretrain(workdir, config)
    assert done.returncode == 0, done.stderr
    assert "resuming pretrain from" in done.stdout
    assert sorted(p.name for p in (workdir / "killed").iterdir()) == ["restarts"]  # one run folder throughout
    _assert_same_weights(left_alone, run_dir / FINAL)
    assert _step_losses(run_dir) == _step_losses(left_alone.parent)


def test_torchrun_max_restarts_with_a_killed_worker_ends_with_the_weights_of_the_run_left_alone(
    workdir: Path, left_alone: Path
) -> None:
    config = _config(workdir, "torchrun")
    marker = workdir / "torchrun-killed"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "--max-restarts", "3",
           "--master-port", "0", str(workdir / "driver.py"), "pretrain", str(config), "--resume", "auto",
           "--no-progress"]  # fmt: skip
    # Killed at its 8th micro-step (step 8): after the step-3 and the epoch-1 (step 6) checkpoints.
    done = subprocess.run(cmd, env=_env(KILL_AT="8", KILL_ONCE=str(marker)), capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert marker.exists(), "the worker was never killed"
    assert "resuming pretrain from" in done.stdout and "checkpoint-0001.pt (step 6)" in done.stdout, done.stdout
    _assert_same_weights(left_alone, workdir / "torchrun" / "restarts" / FINAL)


def test_a_composite_killed_mid_epoch_and_resumed_ends_with_the_weights_of_the_run_left_alone(workdir: Path) -> None:
    from test_composite import composite_raw, write_pairs

    root = workdir / "pairs"
    write_pairs(root, 8)
    write_pairs(root, 4, split="heldout")
    runs = {}
    for name, kill_at in (("composite-alone", None), ("composite-killed", 3)):
        raw = composite_raw(workdir / name, root, batch_size=2, save_every_steps=1, knn=False, figure_samples=0)
        config = workdir / f"{name}.yaml"
        config.write_text(yaml.safe_dump(raw))
        if kill_at:  # 4 steps an epoch: killed in epoch 1 after the step-2 checkpoint
            killed = _pretrain(workdir, config, KILL_AT=str(kill_at))
            assert killed.returncode == -signal.SIGKILL, killed.stderr
        done = _pretrain(workdir, config)
        assert done.returncode == 0, done.stderr
        runs[name] = workdir / name / "runs" / "av"
    assert "checkpoint-step00000002.pt (step 2): epoch 1, batch 3" in done.stdout, done.stdout
    final = "checkpoint-0002.pt"
    _assert_same_weights(runs["composite-alone"] / final, runs["composite-killed"] / final)
