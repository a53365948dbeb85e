"""Fine-tuning, linear probing and evaluation: the CLI end to end on a generated ImageFolder, and each rule of
the reference recipes (section 2) checked against a hand computation."""

from __future__ import annotations

import copy
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from PIL import Image

from anymae.core.build.classifier import build_classifier, param_groups_lars, param_groups_layer_decay
from anymae.core.build.models import build_model
from anymae.core.cli import main
from anymae.core.config import resolve_model_config
from anymae.core.data.samples import DataError
from anymae.core.evaluate.metrics import topk_correct
from anymae.core.io.checkpoint import read_checkpoint, write_checkpoint
from anymae.core.model.pos_embed import sincos_2d
from anymae.core.train.trainer import Trainer

TINY_MODEL = {
    "modality": "image",
    "tokenizer": {"img_size": 32, "patch_size": 8, "in_chans": 3},
    "embed_dim": 32,
    "depth": 3,
    "num_heads": 2,
    "decoder_embed_dim": 16,
    "decoder_depth": 1,
    "decoder_num_heads": 2,
}

SGD = "linprobe.solver=sgd"  # the linear probe's SGD loop (the demo config uses the L-BFGS solver)


def _tiny_mae():
    torch.manual_seed(0)
    return build_model(resolve_model_config(copy.deepcopy(TINY_MODEL)))


def _save_pretrained(path: Path) -> Path:
    mae = _tiny_mae()
    payload = {"format": "anymae", "config": {"model": mae.config["model"]}, "model": mae.state_dict()}
    return write_checkpoint(payload, path)


def _add_labelled_val(root: Path) -> None:
    """root/val/{cats,dogs}/ next to the fixture's flat val images (ignored by the labelled dataset)."""
    for i, cls in enumerate(["cats", "dogs", "cats", "dogs"]):
        (root / "val" / cls).mkdir(parents=True, exist_ok=True)
        colour = (200, 40 * i, 30) if cls == "cats" else (20, 40 * i, 220)
        Image.new("RGB", (40, 36), colour).save(root / "val" / cls / f"{cls}{i}.png")


def _classify_overrides(root: Path, runs: Path) -> list[str]:
    return [
        f"data.root={root}",
        "train.epochs=1",
        "train.batch_size=4",
        "train.num_workers=0",
        "train.pin_memory=false",
        "train.device=cpu",
        f"train.output_dir={runs}",
    ]


def test_pretrain_finetune_linprobe_eval_through_the_cli(
    tmp_path: Path, tiny_config_dict: dict[str, Any], tiny_image_folder: Path, capsys: pytest.CaptureFixture
) -> None:
    tiny_config_dict["train"]["epochs"] = 1
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict))
    assert main(["pretrain", str(config), "--no-progress"]) == 0
    pretrained = next((tmp_path / "runs" / "tiny").glob("checkpoint-*.pt"))
    _add_labelled_val(tiny_image_folder)
    runs = tmp_path / "cls"
    common = _classify_overrides(tiny_image_folder, runs)

    assert main(["finetune", "demo_image_finetune", f"finetune.checkpoint={pretrained}", *common, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"epoch 1: top-1 \d+\.\d+%  top-5 100\.00%", out)  # 2 classes: top-5 counts every row
    finetuned = read_checkpoint(runs / "demo_image_finetune" / "checkpoint-best.pt")
    assert finetuned["config"]["classes"] == ["cats", "dogs"]
    assert "fc_norm.weight" in finetuned["model"] and "encoder.norm.weight" not in finetuned["model"]

    assert (
        main(
            [
                "linprobe",
                "demo_image_linprobe",
                f"linprobe.checkpoint={pretrained}",
                "linprobe.solver=sgd",
                *common,
                "--no-progress",
            ]
        )
        == 0
    )
    probe_path = runs / "demo_image_linprobe" / "checkpoint-best.pt"
    probed = read_checkpoint(probe_path)["model"]
    original = read_checkpoint(pretrained)["model"]
    # The frozen encoder is bit-identical to the pre-trained one; the head moved away from its init.
    for key, value in original.items():
        if key.startswith(("encoder.", "tokenizer.")):
            assert torch.equal(probed[key], value), key
    assert set(probed) >= {"head_bn.running_mean", "head.weight"}
    assert not torch.equal(probed["head_bn.running_mean"], torch.zeros_like(probed["head_bn.running_mean"]))

    capsys.readouterr()
    assert main(["eval", str(probe_path), "--device", "cpu"]) == 0
    line = capsys.readouterr().out.strip()
    recorded = read_checkpoint(probe_path)["eval"]
    assert line.startswith("heldout: 4 samples") and f"top-1 {recorded['acc1']:.2f}%" in line
    assert main(["eval", str(probe_path), "--device", "cpu", "--split", "train"]) == 0
    assert capsys.readouterr().out.startswith("train: 8 samples")
    # data.KEY=VALUE overrides change the stored data section: here the held-out split is the training folder.
    assert main(["eval", str(probe_path), "--device", "cpu", "data.heldout_split=train"]) == 0
    assert capsys.readouterr().out.startswith("heldout: 8 samples")
    assert main(["eval", str(probe_path), "train.epochs=2"]) == 1
    assert "data.KEY=VALUE overrides only" in capsys.readouterr().err


def test_layer_decay_scales_equal_the_reference_formula() -> None:
    depth, decay = TINY_MODEL["depth"], 0.65
    model = build_classifier(_tiny_mae(), num_classes=5, global_pool=True, drop_path=0.1)
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=decay)
    seen = {}
    for group in groups:
        for name in group["names"]:
            seen[name] = (group["lr_scale"], group["weight_decay"])
    assert sorted(seen) == sorted(n for n, _ in model.named_parameters())
    for name, param in model.named_parameters():
        # Reference section 2, typed by hand: cls/pos/patch embedding 0, block i -> i + 1, the rest depth + 1.
        if name in ("encoder.cls_token", "tokenizer.proj.weight", "tokenizer.proj.bias"):
            lid = 0
        elif name.startswith("encoder.blocks."):
            lid = int(name.split(".")[2]) + 1
        else:
            assert name.startswith(("fc_norm.", "head.")), name
            lid = depth + 1
        scale, wd = seen[name]
        assert scale == pytest.approx(decay ** (depth + 1 - lid)), name
        assert wd == (0.0 if param.ndim == 1 or name == "encoder.cls_token" else 0.05), name
    assert seen["head.weight"][0] == 1.0 and seen["encoder.cls_token"][0] == pytest.approx(decay**4)


def test_lars_excludes_1d_params_and_matches_the_official_update() -> None:
    from timm.optim import Lars

    model = build_classifier(_tiny_mae(), num_classes=4, global_pool=False, head_bn=True, head_init_std=0.01)
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("head.")
    matrices, vectors = param_groups_lars(model, weight_decay=0.0)
    assert [p.ndim for p in matrices["params"]] == [2] and [p.ndim for p in vectors["params"]] == [1]
    assert vectors["weight_decay"] == 0.0 and not vectors["always_adapt"] and matrices["always_adapt"]

    torch.manual_seed(1)
    weight, bias = model.head.weight, model.head.bias
    weight.grad, bias.grad = torch.randn_like(weight), torch.randn_like(bias)
    w0, b0, lr, trust = weight.detach().clone(), bias.detach().clone(), 0.5, 0.001
    Lars([matrices, vectors], lr=lr, momentum=0.9, trust_coeff=trust).step()
    # Official LARS, first step (momentum buffer starts at the update): 2-D params scaled by the trust ratio.
    ratio = trust * w0.norm() / weight.grad.norm()
    assert torch.allclose(weight.detach(), w0 - lr * ratio * weight.grad, atol=1e-7)
    assert torch.allclose(bias.detach(), b0 - lr * bias.grad)  # 1-D: plain SGD


def test_finetune_from_a_checkpoint_with_a_different_grid() -> None:
    mae = _tiny_mae()
    model = build_classifier(mae, num_classes=3, global_pool=True, tokenizer_overrides={"img_size": 48})
    assert model.tokenizer.grid == (6, 6)
    table = model.encoder.pos_embed[0]  # (1 + 36, D)
    assert torch.equal(table[1:], sincos_2d((6, 6), 32)) and torch.equal(table[0], torch.zeros(32))
    assert torch.equal(model.tokenizer.proj.weight, mae.tokenizer.proj.weight)
    assert torch.equal(model.encoder.blocks[2].mlp.fc2.weight, mae.encoder.blocks[2].mlp.fc2.weight)
    assert model(torch.randn(2, 3, 48, 48)).shape == (2, 3)


def test_global_pool_and_cls_features_follow_the_reference() -> None:
    mae = _tiny_mae().eval()
    x = torch.randn(2, 3, 32, 32)
    pooled = build_classifier(mae, num_classes=3, global_pool=True).eval()
    # By hand from the pre-trained parts: CLS + positions, the blocks, no final norm, mean of patches, LayerNorm.
    enc = mae.encoder
    tokens = torch.cat(
        [(enc.cls_token + enc.pos_embed[:, :1]).expand(2, -1, -1), mae.tokenizer(x) + enc.pos_embed[:, 1:]], 1
    )
    for block in enc.blocks:
        tokens = block(tokens)
    expected = torch.nn.functional.layer_norm(tokens[:, 1:].mean(1), (32,), eps=1e-6)
    assert torch.allclose(pooled.forward_features(x), expected, atol=1e-5)
    cls = build_classifier(mae, num_classes=3, global_pool=False).eval()
    assert torch.allclose(cls.forward_features(x), mae.encode(x)[:, 0], atol=1e-6)
    assert pooled.head.weight.std().item() == pytest.approx(2e-5, rel=0.2)


def test_topk_matches_a_hand_computation() -> None:
    logits = torch.tensor(
        [
            [0.1, 0.9, 0.0, 0.0, 0.0, 0.0],  # label 1: top-1 hit
            [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],  # label 4: 5th best: top-5 hit only
            [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],  # label 5: last: neither
            [0.0, 0.0, 0.3, 0.9, 0.1, 0.2],  # label 2: 2nd best: top-5 hit
        ]
    )
    labels = torch.tensor([1, 4, 5, 2])
    assert topk_correct(logits, labels) == [1, 3]
    assert topk_correct(logits[:, :3], torch.tensor([1, 0, 2, 0])) == [2, 4]  # k capped at 3 classes
    from timm.utils import accuracy

    assert [v.item() * 4 / 100 for v in accuracy(logits, labels, topk=(1, 5))] == pytest.approx([1, 3])


def test_wrong_key_and_missing_checkpoint_are_one_line_errors(
    tmp_path: Path, tiny_image_folder: Path, capsys: pytest.CaptureFixture
) -> None:
    common = _classify_overrides(tiny_image_folder, tmp_path / "cls")
    assert main(["finetune", "demo_image_finetune", "finetune.drop_pth=0.2", *common]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "finetune.drop_pth" in err and "drop_path" in err
    missing = tmp_path / "nope.pt"
    assert (
        main(["linprobe", "demo_image_linprobe", f"linprobe.checkpoint={missing}", "linprobe.solver=sgd", *common]) == 1
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(missing) in err and "does not exist" in err
    assert main(["eval", str(missing)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(missing) in err
    assert main(["finetune", "demo_image_finetune", "train.distributed=fsdp", *common]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.distributed='fsdp'" in err and "DDP only" in err


def test_finetune_under_two_processes_counts_every_eval_sample_once(tmp_path: Path, tiny_image_folder: Path) -> None:
    pretrained = _save_pretrained(tmp_path / "pre.pt")
    _add_labelled_val(tiny_image_folder)
    runs = tmp_path / "cls"
    overrides = [
        o if o != "train.batch_size=4" else "train.batch_size=2" for o in _classify_overrides(tiny_image_folder, runs)
    ]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank)}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        cmd = [sys.executable, "-m", "anymae.core.cli", "finetune", "demo_image_finetune",
               f"finetune.checkpoint={pretrained}", *overrides, "--no-progress"]  # fmt: skip
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:]
    assert "finished: top-1" in outs[0][0] and outs[1][0] == ""  # only rank 0 reports
    records = [json.loads(line) for line in (runs / "demo_image_finetune" / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval_n"] for r in records if "eval_n" in r] == [4.0]  # 4 labelled val images, 2 per rank
    names = sorted(p.name for p in (runs / "demo_image_finetune").iterdir())
    assert [n for n in names if not n.startswith("events.out.tfevents.")] == [
        "checkpoint-best.pt", "checkpoint-last.pt", "config.yaml", "metrics.jsonl"]  # fmt: skip
    assert len(names) == 5  # and one TensorBoard event file, written by rank 0 only


def test_a_modality_without_labelled_data_says_so_by_name() -> None:
    from anymae.core.model.modality import Modality

    class Toy(Modality):
        name = "toyseq"
        tokenizer_config = dict
        data_config = dict
        build_tokenizer = build_dataset = load_inputs = render_reconstruction = None

    with pytest.raises(DataError, match="modality 'toyseq' does not provide labelled data"):
        Toy().build_labelled_dataset({}, {}, split="train", augment=None)


def test_finetune_randaugment_posterize_at_magnitude_10_gives_black_not_an_error() -> None:
    from anymae.modalities.image.classification import finetune_transform

    augment = {"auto_augment": "rand-m9-mstd0.5-inc1", "reprob": 0.25, "remode": "pixel", "recount": 1}
    transform = finetune_transform((32, 32), augment=augment, mean=(0.5,) * 3, std=(0.5,) * 3)
    ops = [op for step in transform.transforms for op in getattr(step, "ops", []) if op.name == "PosterizeIncreasing"]
    assert len(ops) == 1
    op = ops[0]
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0.0  # 4 - int(10 / 10 * 4) = 0 bits kept
    out = op(Image.new("RGB", (8, 8), (200, 120, 40)))
    assert out.getextrema() == ((0, 0), (0, 0), (0, 0))


def test_an_interrupted_finetune_resumes_to_the_uninterrupted_result(
    tmp_path: Path, tiny_image_folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Killed after epoch 2 of 3 and resumed with --resume auto: the same final weights, bit for bit (mixup,
    drop path and the data draw from RNG states and per-sample seeds the checkpoint restores)."""

    pretrained = _save_pretrained(tmp_path / "pre.pt")
    _add_labelled_val(tiny_image_folder)

    def args(runs: Path) -> list[str]:
        overrides = _classify_overrides(tiny_image_folder, runs)
        return ["finetune", "demo_image_finetune", f"finetune.checkpoint={pretrained}", *overrides, "train.epochs=3",
                "optim.warmup_epochs=1", "--no-progress"]  # fmt: skip

    assert main(args(tmp_path / "a")) == 0
    original = Trainer.run_epoch

    def dies_in_epoch_3(self, epoch: int) -> None:
        if epoch == 2:
            raise RuntimeError("killed")
        original(self, epoch)

    monkeypatch.setattr(Trainer, "run_epoch", dies_in_epoch_3)
    with pytest.raises(RuntimeError, match="killed"):
        main(args(tmp_path / "b"))
    assert read_checkpoint(tmp_path / "b" / "demo_image_finetune" / "checkpoint-last.pt")["progress"]["epoch"] == 2
    monkeypatch.setattr(Trainer, "run_epoch", original)
    capsys.readouterr()
    assert main([*args(tmp_path / "b"), "--resume", "auto"]) == 0
    assert "resuming finetune from" in capsys.readouterr().out
    a = read_checkpoint(tmp_path / "a" / "demo_image_finetune" / "checkpoint-last.pt")
    b = read_checkpoint(tmp_path / "b" / "demo_image_finetune" / "checkpoint-last.pt")
    assert a["progress"] == b["progress"] and a["progress"]["epoch"] == 3 and a["eval"] == b["eval"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert main([*args(tmp_path / "b"), "--resume", str(tmp_path / "pre.pt")]) == 1  # a pre-training file
    assert "not an anymae finetune training checkpoint" in capsys.readouterr().err


def test_eval_every_epochs_evaluates_every_nth_epoch_and_the_last(
    tmp_path: Path, tiny_image_folder: Path, capsys: pytest.CaptureFixture
) -> None:
    pretrained = _save_pretrained(tmp_path / "pre.pt")
    _add_labelled_val(tiny_image_folder)
    common = _classify_overrides(tiny_image_folder, tmp_path / "runs")
    argv = ["linprobe", "demo_image_linprobe", f"linprobe.checkpoint={pretrained}", SGD, *common, "train.epochs=3",
            "train.eval_every_epochs=2", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "epoch 1: train loss" in out and re.search(r"epoch 2: top-1", out) and re.search(r"epoch 3: top-1", out)
    lines = (tmp_path / "runs" / "demo_image_linprobe" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records if "eval_acc1" in r] == [2, 3]


def test_sigterm_stops_a_finetune_inside_an_epoch_and_the_resumed_run_is_exact(
    tmp_path: Path, tiny_image_folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """SIGTERM during batch 2 of 4: the step finishes, checkpoint-last.pt records epoch 1 batch 3, the command exits
    with 75, and --resume auto ends bit-identical to an uninterrupted run."""
    import signal

    from anymae.core.train import trainer

    pretrained = _save_pretrained(tmp_path / "pre.pt")
    _add_labelled_val(tiny_image_folder)

    def args(runs: Path) -> list[str]:
        overrides = _classify_overrides(tiny_image_folder, runs)
        return ["finetune", "demo_image_finetune", f"finetune.checkpoint={pretrained}", *overrides, "train.epochs=2",
                "train.batch_size=2", "train.log_every_steps=1", "--no-progress"]  # fmt: skip

    assert main(args(tmp_path / "a")) == 0
    real_all_sum, calls = trainer.all_sum, []

    def all_sum_then_sigterm(values, ctx, device):
        calls.append(1)
        if len(calls) == 2:  # during batch 2 of epoch 1; the flag is read at batch 3's collective
            os.kill(os.getpid(), signal.SIGTERM)
        return real_all_sum(values, ctx, device)

    monkeypatch.setattr(trainer, "all_sum", all_sum_then_sigterm)
    assert main(args(tmp_path / "b")) == 75
    assert "SIGTERM: stopped at step 3 (epoch 1, batch 3/4)" in capsys.readouterr().err
    saved = read_checkpoint(tmp_path / "b" / "demo_image_finetune" / "checkpoint-last.pt")
    progress = saved["progress"]
    assert (progress["epoch"], progress["batch"], progress["step"], len(progress["epoch_losses"])) == (0, 3, 3, 3)
    monkeypatch.setattr(trainer, "all_sum", real_all_sum)
    started = time.time()
    assert main([*args(tmp_path / "b"), "--resume", "auto"]) == 0
    rows = [
        json.loads(line) for line in (tmp_path / "b" / "demo_image_finetune" / "metrics.jsonl").read_text().splitlines()
    ]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == list(range(1, 9))  # 2 epochs of 4 steps, each logged once
    assert next(r["step"] for r in rows if "loss" in r and r["time"] >= started) == 4  # resumed after step 3
    assert "epoch 1, batch 4 of 2 epochs" in capsys.readouterr().out
    a = read_checkpoint(tmp_path / "a" / "demo_image_finetune" / "checkpoint-last.pt")
    b = read_checkpoint(tmp_path / "b" / "demo_image_finetune" / "checkpoint-last.pt")
    assert a["eval"] == b["eval"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_finetune_gradient_accumulation_matches_a_larger_batch(tmp_path: Path, tiny_image_folder: Path) -> None:
    """accum_iter=2 x batch 2 makes the same updates as accum_iter=1 x batch 4 (the same samples, seeded alike;
    no mixup, drop path or erasing, which draw per batch): the one loop's accumulation in fine-tuning."""
    pretrained = _save_pretrained(tmp_path / "pre.pt")
    _add_labelled_val(tiny_image_folder)
    plain = ["finetune.mixup=0", "finetune.cutmix=0", "finetune.drop_path=0", "finetune.reprob=0", "train.epochs=2",
             "finetune.auto_augment=null", "finetune.label_smoothing=0", "optim.warmup_epochs=0"]  # fmt: skip
    weights = {}
    for name, batch, accum in (("big", 4, 1), ("accum", 2, 2)):
        common = _classify_overrides(tiny_image_folder, tmp_path / name)
        argv = ["finetune", "demo_image_finetune", f"finetune.checkpoint={pretrained}", *common, *plain,
                f"train.batch_size={batch}", f"train.accum_iter={accum}", "optim.lr=1e-3", "--no-progress"]  # fmt: skip
        assert main(argv) == 0
        weights[name] = read_checkpoint(tmp_path / name / "demo_image_finetune" / "checkpoint-last.pt")["model"]
    moved = 0
    initial = read_checkpoint(tmp_path / "pre.pt")["model"]
    for key, value in weights["big"].items():
        torch.testing.assert_close(weights["accum"][key], value, rtol=1e-4, atol=1e-6, msg=key)
        moved += key in initial and not torch.equal(value, initial[key])
    assert moved > 10  # the encoder was fine-tuned, not only the head
