"""anymae export CKPT --hf DIR: a folder that transformers loads with from_pretrained and that predicts what the
anymae model predicts (transformers' own ViTMAEForPreTraining is the reference)."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from conftest import tiny_mae

from anymae.core import load_model
from anymae.core.cli import main
from anymae.core.io.checkpoint import CHECKPOINT_FORMAT, write_checkpoint


def _trained_like(model) -> None:
    with torch.no_grad():  # random init leaves biases and LayerNorms trivial: make every tensor count
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_an_exported_folder_loads_in_transformers_and_predicts_what_anymae_predicts(tmp_path, capsys, norm_pix_loss):
    torch.manual_seed(3)
    model = tiny_mae(depth=2, norm_pix_loss=norm_pix_loss, norm_eps=1e-6)
    _trained_like(model)
    run_dir = tmp_path / "runs" / "tiny-run"
    run_config = {"name": "tiny-run", "model": model.config["model"], "train": {"epochs": 7}}
    checkpoint = write_checkpoint(
        {"format": CHECKPOINT_FORMAT, "config": model.config, "run_config": run_config, "model": model.state_dict()},
        run_dir / "checkpoint-0007.pt",
    )
    rows = [{"step": 6, "epoch": 6, "heldout_loss": 0.61, "baseline_loss": 1.0}, {"step": 7, "loss": 0.5},
            {"step": 7, "epoch": 7, "heldout_loss": 0.52, "baseline_loss": 1.0}]  # fmt: skip
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    folder = tmp_path / "hf"
    assert main(["export", str(checkpoint), "--hf", str(folder)]) == 0
    assert "transformers reloads it" in capsys.readouterr().out

    hf = transformers.ViTMAEForPreTraining.from_pretrained(folder).eval()
    assert hf.config.norm_pix_loss == norm_pix_loss and hf.config.layer_norm_eps == 1e-6
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    noise = torch.rand(3, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = hf(pixel_values=x, noise=noise)
        loss, pred, mask = model(x, noise=noise)
    assert torch.equal(out.mask, mask)
    assert (out.logits - pred).abs().max().item() <= 1e-5
    assert abs(out.loss.item() - loss.item()) <= 1e-5
    card = (folder / "README.md").read_text()
    assert card.splitlines()[5] == "# tiny-run"
    assert "- heldout_loss: 0.52" in card and "- heldout_loss: 0.61" not in card  # the last check's figures
    assert '"epochs": 7' in card  # the training config
    # ... and anymae reads its own export back as a Hugging Face folder
    again = load_model(folder).eval()
    with torch.no_grad():
        assert (again.encode(x) - model.encode(x)).abs().max().item() <= 1e-6


def test_export_hf_refuses_what_vitmae_cannot_hold(tmp_path, capsys):
    model = tiny_mae(cls_token=False)
    checkpoint = write_checkpoint(
        {"format": CHECKPOINT_FORMAT, "config": model.config, "model": model.state_dict()}, tmp_path / "mae.pt"
    )
    assert main(["export", str(checkpoint), "--hf", str(tmp_path / "hf")]) == 1
    assert "model.cls_token=False (ViTMAE: True)" in capsys.readouterr().err
