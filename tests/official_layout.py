"""The official MAE layout written by hand from reference section 5, for the interop and convert tests: key names
typed in from the reference and the sin-cos tables computed with numpy, independently of anymae's code."""

from __future__ import annotations

import numpy as np
import torch

OFFICIAL_NAMES = [  # anymae prefix -> official prefix (reference section 5)
    ("tokenizer.proj.", "patch_embed.proj."),
    ("encoder.cls_token", "cls_token"),
    ("encoder.blocks.", "blocks."),
    ("encoder.norm.", "norm."),
    ("decoder.mask_token", "mask_token"),
    ("decoder.embed.", "decoder_embed."),
    ("decoder.blocks.", "decoder_blocks."),
    ("decoder.norm.", "decoder_norm."),
    ("decoder.pred.", "decoder_pred."),
    ("fc_norm.", "fc_norm."),
    ("head_bn.", "head.0."),  # the official linear probe's head: Sequential(BatchNorm1d, Linear)
    ("head.", "head."),
]


def official_pos_embed(grid: int, dim: int) -> torch.Tensor:
    """(1, 1 + grid*grid, dim): zero CLS row, column index in the first half, row index in the second."""

    def half(pos: np.ndarray) -> np.ndarray:
        w = 10000.0 ** (-np.arange(dim // 4, dtype=np.float64) / (dim / 4))
        angles = np.outer(pos.astype(np.float64), w)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    index = np.arange(grid * grid)
    table = np.concatenate([half(index % grid), half(index // grid)], axis=1)
    return torch.from_numpy(np.concatenate([np.zeros((1, dim)), table])[None]).float()


def to_official(model, *, with_decoder: bool = True) -> dict[str, torch.Tensor]:
    """An anymae image model's state renamed by hand to the official layout, with numpy sin-cos tables for
    its (square) grid."""
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("decoder.") and not with_decoder:
            continue
        match = next(((o, t) for o, t in OFFICIAL_NAMES if key.startswith(o)), None)
        if match is None:
            raise AssertionError(f"no official name for {key}")
        state[match[1] + key[len(match[0]) :]] = value.clone()
    grid = model.tokenizer.grid[0]
    state["pos_embed"] = official_pos_embed(grid, model.encoder.embed_dim)
    if with_decoder:
        state["decoder_pos_embed"] = official_pos_embed(grid, model.decoder.embed.out_features)
    return state
