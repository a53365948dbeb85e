"""``train.precision``: what autocast does to the matmuls of a training step, seen from inside the model."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from torch import nn

from anymae.core.config import resolve_config
from anymae.core.train.task_pretrain import pretrain


def _linear_output_dtypes(raw: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> set[torch.dtype]:
    """The dtypes of every nn.Linear output in the training steps of a tiny pre-training run."""
    seen: set[torch.dtype] = set()
    real = nn.Linear.forward

    def forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        out = real(self, x)
        if self.training and torch.is_grad_enabled():
            seen.add(out.dtype)
        return out

    monkeypatch.setattr(nn.Linear, "forward", forward)
    pretrain(resolve_config(json.loads(json.dumps(raw))), progress=False)
    monkeypatch.setattr(nn.Linear, "forward", real)
    return seen


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_training_matmuls_run_in_the_configured_precision(tiny_config_dict, monkeypatch, precision, dtype):
    tiny_config_dict["train"].update(epochs=1, precision=precision)
    assert _linear_output_dtypes(tiny_config_dict, monkeypatch) == {dtype}
