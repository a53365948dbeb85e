"""FSDP2 (``train.distributed: fsdp``): 2 gloo ranks on CPU give the losses and weights of DDP with the same
global batch (accumulation and decoder-block recomputation included), write checkpoints in the DDP format
(``load_model`` reads them; optimizer state numbered as ``torch.optim`` numbers it), resume from them under
FSDP and under DDP with the same next steps; the optimizer-state renumbering agrees with torch both ways; one
process with ``fsdp`` trains the plain model with a warning.

The runs are real ``anymae pretrain`` processes with ``torchrun``'s environment variables, as in
``test_reliability.py``.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

from anymae.core import build_model, pretrain
from anymae.core.config import ConfigError, resolve_config
from anymae.core.distributed.context import optim_state_by_index, optim_state_by_name
from anymae.core.io.checkpoint import read_checkpoint
from anymae.core.train.optim import param_groups_weight_decay
from anymae.core.weights.loading import load_model

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="process groups as on Linux")

STEPS = 4  # 2 epochs x 2 steps: 16 samples, 2 ranks x batch 2 x accum_iter 2 = global batch 8

DRIVER = '''\
"""`anymae` that writes, at the first optimizer step, how many parameter values this rank holds (SHARD_LOG)."""
import json, os, sys

from torch.optim.optimizer import register_optimizer_step_pre_hook

from anymae.core.cli import main


def record(optimizer, args, kwargs):
    params = [p for group in optimizer.param_groups for p in group["params"]]
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in params)
    path = os.path.join(os.environ["SHARD_LOG"], "rank" + os.environ["RANK"] + ".json")
    if not os.path.exists(path):
        with open(path, "w") as f:
            json.dump({"local": local, "full": sum(p.numel() for p in params)}, f)


register_optimizer_step_pre_hook(record)
sys.exit(main(sys.argv[1:]))
'''


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import make_image, write_image

    root = tmp_path_factory.mktemp("fsdp")
    (root / "driver.py").write_text(DRIVER)
    for i in range(8):
        write_image(root / "images" / "train" / f"c{i % 2}" / f"{i}.jpg", make_image(i))
    write_image(root / "images" / "val" / "v.jpg", make_image(99))
    return root


def _config(workdir: Path, name: str, distributed: str, *, reshard_after_forward: bool = True) -> Path:
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
            "decoder_depth": 2,
            "decoder_num_heads": 2,
        },
        "data": {"root": str(workdir / "images"), "heldout_split": "val", "repeats": 2},
        "optim": {"lr": 1e-3, "warmup_epochs": 1},
        "train": {
            "epochs": 2,
            "batch_size": 2,
            "accum_iter": 2,  # FSDP: set_requires_gradient_sync(False) on the first micro-step
            "checkpoint_decoder_blocks": 1,  # recomputation inside an FSDP unit
            "distributed": distributed,
            "fsdp_reshard_after_forward": reshard_after_forward,
            "num_workers": 0,
            "device": "cpu",
            "output_dir": str(workdir / "runs"),
            "log_every_steps": 1,
            "save_every_epochs": 1,
            "save_every_steps": 1,
            "heldout_batches": 1,
            "figure_samples": 0,
        },
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_two_ranks(config: Path, *args: str, timeout: float = 120) -> None:
    """``anymae pretrain CONFIG ARGS`` as 2 processes of one gloo group; fails with their stderr. Each rank
    writes what it holds of the parameters into ``<workdir>/shards/<config name>/``."""
    port, procs = _free_port(), []
    shards = config.parent / "shards" / config.stem
    shards.mkdir(parents=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith("ANYMAE_")}
    base.update(OMP_NUM_THREADS="1", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    base.update(SHARD_LOG=str(shards))
    for rank in range(2):
        env = dict(base, RANK=str(rank), LOCAL_RANK=str(rank))
        cmd = [sys.executable, str(config.parent / "driver.py"), "pretrain", str(config), "--no-progress", *args]
        group = 0 if rank == 0 else procs[0].pid
        procs.append(subprocess.Popen(cmd, env=env, process_group=group, stderr=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(procs[0].pid, signal.SIGKILL)
            raise AssertionError(f"anymae pretrain {config.name} hung for {timeout} s") from None
        results.append((proc.returncode, err))
    assert [rc for rc, _ in results] == [0, 0], results


def _step_losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def _assert_close_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        if key.endswith("attn.qkv.bias"):
            # The key bias has an exactly zero true gradient (softmax ignores a shift shared by all keys), so
            # AdamW turns rounding noise into lr-sized steps there: only the query and value biases compare.
            dim = x.numel() // 3
            x, y = torch.cat([x[:dim], x[2 * dim :]]), torch.cat([y[:dim], y[2 * dim :]])
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-6, msg=key)


@pytest.fixture(scope="module")
def runs(workdir: Path) -> dict[str, Path]:
    """One DDP and one FSDP run of the same recipe, 2 ranks each: {"ddp": run_dir, "fsdp": run_dir}."""
    for kind in ("ddp", "fsdp"):
        _launch_two_ranks(_config(workdir, kind, kind))
    return {kind: workdir / "runs" / kind for kind in ("ddp", "fsdp")}


def _held(workdir: Path, name: str) -> list[dict[str, int]]:
    return [json.loads((workdir / "shards" / name / f"rank{r}.json").read_text()) for r in range(2)]


def test_fsdp_ranks_hold_half_the_parameters_each_and_ddp_ranks_all(workdir, runs):
    for held in _held(workdir, "ddp"):
        assert held["local"] == held["full"]
    fsdp = _held(workdir, "fsdp")
    full = fsdp[0]["full"]
    assert all(r["full"] == full for r in fsdp)
    # Every parameter is split along dim 0 over the 2 ranks (rows of odd count: one more on rank 0).
    assert sum(r["local"] for r in fsdp) == full
    for held in fsdp:
        assert 0.4 * full < held["local"] < 0.6 * full


def test_fsdp_gives_the_losses_and_weights_of_ddp_with_the_same_global_batch(runs):
    ddp, fsdp = _step_losses(runs["ddp"]), _step_losses(runs["fsdp"])
    assert sorted(ddp) == sorted(fsdp) == list(range(1, STEPS + 1))
    for step in ddp:
        assert fsdp[step] == pytest.approx(ddp[step], rel=1e-5), f"step {step}"
    final = "checkpoint-0002.pt"
    _assert_close_weights(read_checkpoint(runs["ddp"] / final)["model"], read_checkpoint(runs["fsdp"] / final)["model"])


def test_fsdp_checkpoint_has_the_ddp_layout_and_loads_with_load_model(runs):
    ddp, fsdp = (read_checkpoint(runs[kind] / "checkpoint-0002.pt") for kind in ("ddp", "fsdp"))
    assert fsdp.keys() == ddp.keys()
    assert fsdp["progress"] == ddp["progress"] and fsdp["world_size"] == 2
    # The optimizer state is numbered as torch.optim numbers it (not by parameter name), group for group.
    assert [g["params"] for g in fsdp["optimizer"]["param_groups"]] == [
        g["params"] for g in ddp["optimizer"]["param_groups"]
    ]
    assert fsdp["optimizer"]["state"].keys() == ddp["optimizer"]["state"].keys()
    for i, state in ddp["optimizer"]["state"].items():
        assert int(fsdp["optimizer"]["state"][i]["step"]) == int(state["step"]) == STEPS
        assert fsdp["optimizer"]["state"][i]["exp_avg"].shape == state["exp_avg"].shape

    model = load_model(runs["fsdp"] / "checkpoint-0002.pt")  # strict: every key matches a plain model
    for key, value in model.state_dict().items():
        assert torch.equal(value, fsdp["model"][key]), key


@pytest.mark.parametrize("kind", ["fsdp", "ddp"])
def test_an_fsdp_checkpoint_resumes_under_fsdp_and_ddp_with_the_same_next_steps(workdir, runs, kind):
    # Resumed inside epoch 1 after step 1 (its accumulation window and the sharded Adam moments in the file);
    # under FSDP with the gathered block weights kept from forward to backward, which changes memory, not numbers.
    run_dir = workdir / "runs" / f"resumed-{kind}"
    run_dir.mkdir(parents=True)
    shutil.copy(runs["fsdp"] / "checkpoint-step00000001.pt", run_dir)
    config = _config(workdir, f"resumed-{kind}", kind, reshard_after_forward=kind == "ddp")  # an fsdp-only option
    _launch_two_ranks(config, "--resume", str(run_dir / "checkpoint-step00000001.pt"))
    original, resumed = _step_losses(runs["fsdp"]), _step_losses(run_dir)
    assert sorted(resumed) == list(range(2, STEPS + 1))
    final = "checkpoint-0002.pt"
    before, after = read_checkpoint(runs["fsdp"] / final)["model"], read_checkpoint(run_dir / final)["model"]
    if kind == "fsdp":  # the same computation as the uninterrupted run: bit-exact
        assert resumed == {step: original[step] for step in resumed}
        assert all(torch.equal(before[key], after[key]) for key in before)
        return
    for step in resumed:  # DDP reduces the gradients in another order: fp32 rounding
        assert resumed[step] == pytest.approx(original[step], rel=1e-5), f"step {step}"
    _assert_close_weights(before, after)


def test_optimizer_state_numbering_matches_torch_both_ways(tiny_config_dict):
    # References: torch.optim's own state_dict() (numbered) and torch.distributed.checkpoint's (by name), for the
    # weight-decay groups of a real MAE after one step.
    model = build_model(resolve_config(tiny_config_dict).model)
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, 0.05), lr=1e-3)
    model(torch.randn(2, 3, 32, 32))[0].backward()
    optimizer.step()
    numbered, named = optimizer.state_dict(), get_optimizer_state_dict(model, optimizer)
    assert len(numbered["param_groups"]) == 2
    assert _same(optim_state_by_index(named), numbered)
    assert _same(optim_state_by_name(numbered, model, optimizer), named)
    with pytest.raises(ValueError, match="param groups of sizes"):
        optim_state_by_name(numbered, model, torch.optim.AdamW(model.parameters()))


def _same(a: object, b: object) -> bool:
    """Nested dicts/lists equal, tensors compared with torch.equal."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_fsdp_in_one_process_trains_the_plain_model_with_a_warning(tiny_config_dict):
    raw = copy.deepcopy(tiny_config_dict)
    raw["train"].update(distributed="fsdp", epochs=1)
    with pytest.warns(RuntimeWarning, match=r"train\.distributed=fsdp with one process"):
        result = pretrain(resolve_config(raw), progress=False)
    assert read_checkpoint(result.checkpoint)["progress"]["step"] == 2


def test_fsdp_with_fp16_and_fused_adamw_is_refused_naming_the_keys(tiny_config_dict):
    raw = copy.deepcopy(tiny_config_dict)
    raw["train"].update(distributed="fsdp", precision="fp16")
    raw["optim"]["fused"] = True
    with pytest.raises(ConfigError, match=r"optim\.fused=false"):
        pretrain(resolve_config(raw), progress=False)


def test_distributed_accepts_only_ddp_or_fsdp(tiny_config_dict):
    raw = copy.deepcopy(tiny_config_dict)
    raw["train"]["distributed"] = "zero3"
    with pytest.raises(ConfigError, match="distributed"):
        resolve_config(raw)
