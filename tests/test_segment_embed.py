"""``anymae embed --tokens --layers``: one array of patch tokens per chosen block, the last block's equal to the
unmasked encoder's own output once the final norm is applied (the encoder's forward, a separate code path)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_segment_command import _checkpoint, _data

from anymae.core.cli import main
from anymae.core.config import from_dict, resolve_model_config
from anymae.core.evaluate.embed import read_embeddings
from anymae.core.weights.loading import load_model
from anymae.plugins import get_registry


def test_embed_tokens_writes_one_array_per_layer_matching_the_encoders_output(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = _data(tmp_path / "data", train=0, heldout=3)
    files = sorted((data / "images" / "validation").glob("*.png"))
    checkpoint = _checkpoint(tmp_path / "pre.pt")
    out = tmp_path / "tokens.safetensors"
    argv = ["embed", str(checkpoint), *map(str, files), "-o", str(out), "--device", "cpu", "--no-progress"]
    assert main([*argv, "--tokens", "--layers", "1,3"]) == 0
    assert "layer_3: (3, 64, 16)" in capsys.readouterr().out
    found = read_embeddings(out)
    assert sorted(found.layers) == [1, 3] and found.layers[1].shape == (3, 64, 16)  # 32 px / 4 = 8x8 tokens
    model = load_model(checkpoint).eval()
    modality = get_registry().modality("image")
    model_cfg = resolve_model_config(model.config["model"])
    x = modality.load_inputs(files, from_dict(modality.data_config, {}, "data"), model_cfg.tokenizer)
    with torch.no_grad():
        encoded = model.encoder(model.tokenizer(x), None)[:, 1:]  # (N, L, D) after the final norm, no CLS
    torch.testing.assert_close(model.encoder.norm(found.layers[3]), encoded, atol=1e-5, rtol=1e-5)
    assert main([*argv, "--layers", "1"]) == 2  # --layers without --tokens
    assert "add --tokens" in capsys.readouterr().err
