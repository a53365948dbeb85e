"""Helpers for plugin tests: real distributions written to a folder, and small in-memory plugins.

``write_distribution`` lays out what ``pip install`` would leave in site-packages (modules plus a
``<name>-<version>.dist-info`` folder with METADATA and entry_points.txt), so that putting the folder on
``sys.path`` makes ``importlib.metadata`` discover the plugin exactly as it discovers anymae's own.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from anymae.core.model.modality import Modality
from anymae.plugins import hookimpl

__all__ = [
    "BROKEN_PLUGIN_SOURCE",
    "TOYSEQ_PLUGIN_SOURCE",
    "masking_plugin",
    "modality_plugin",
    "stub_modality",
    "write_distribution",
]


def write_distribution(
    root: Path, *, name: str, version: str, modules: dict[str, str], entry_points: dict[str, str]
) -> Path:
    """Write modules ``{module_name: source}`` and ``<name>-<version>.dist-info`` under ``root``.

    ``entry_points`` maps entry-point names to object references in the ``anymae`` group.
    """
    root.mkdir(parents=True, exist_ok=True)
    for module_name, source in modules.items():
        (root / f"{module_name}.py").write_text(source)
    dist_info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{ep} = {target}\n" for ep, target in entry_points.items())
    (dist_info / "entry_points.txt").write_text(f"[anymae]\n{lines}")
    return dist_info


class _StubModality(Modality):
    """A modality that only has a name: enough for registration tests, never built."""

    tokenizer_config = dict
    data_config = dict

    def build_tokenizer(self, config: Any, *, embed_dim: int) -> Any:
        raise NotImplementedError

    def build_dataset(self, data: Any, tokenizer: Any, *, split: str) -> Any:
        raise NotImplementedError

    def load_inputs(self, paths: Any, data: Any, tokenizer: Any) -> Any:
        raise NotImplementedError

    def render_reconstruction(self, **kwargs: Any) -> Any:
        raise NotImplementedError


def stub_modality(name: str) -> Modality:
    """An instance of a fresh Modality subclass called ``name``."""
    return type(f"Stub{name.title()}Modality", (_StubModality,), {"name": name})()


def modality_plugin(*modalities: Modality) -> SimpleNamespace:
    """An in-memory plugin registering ``modalities``."""

    @hookimpl
    def anymae_register_modalities(register: Callable[[Any], None]) -> None:
        for modality in modalities:
            register(modality)

    return SimpleNamespace(anymae_register_modalities=anymae_register_modalities)


def masking_plugin(**strategies: Callable[..., Any]) -> SimpleNamespace:
    """An in-memory plugin registering masking strategies ``name=strategy``."""

    @hookimpl
    def anymae_register_masking(register: Callable[[str, Any], None]) -> None:
        for name, strategy in strategies.items():
            register(name, strategy)

    return SimpleNamespace(anymae_register_masking=anymae_register_masking)


# A plugin whose import fails, as one with a missing optional dependency would.
BROKEN_PLUGIN_SOURCE = '''\
"""A plugin that cannot be imported."""

raise ImportError("broken_plugin needs libfoo, which is not installed")
'''

# A complete third-party modality plugin, written the way a plugin author would: 1-D sequences
# (N, C, T) cut into patches of length p along T, synthetic data, and an "every_other" masking strategy.
TOYSEQ_PLUGIN_SOURCE = '''\
"""toyseq: an anymae plugin for 1-D sequences (N, C, T), with synthetic sine-wave data."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from anymae.core import Modality, Tokenizer
from anymae.plugins import hookimpl


@dataclass
class SeqTokenizerConfig:
    length: int = 32  # T
    patch_size: int = 4  # p
    in_chans: int = 2  # C

    def __post_init__(self) -> None:
        if self.length % self.patch_size:
            raise ValueError(f"sequence {self.length} (length) is not divisible by patch {self.patch_size}")


@dataclass
class SeqDataConfig:
    num_train: int = 16
    num_heldout: int = 4  # 0: no held-out split
    seed: int = 0


class SeqTokenizer(Tokenizer):
    """sequences (N, C, T) -> tokens (N, L, D) with L = T/p."""

    def __init__(self, *, length: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.length, self.patch_size, self.in_chans = length, patch_size, in_chans
        self.grid = (length // patch_size,)
        self.patch_dim = patch_size * in_chans
        self.embed_dim = embed_dim
        self.proj = nn.Conv1d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).transpose(1, 2)  # (N, D, L) -> (N, L, D)

    def patchify(self, x: Tensor) -> Tensor:
        return rearrange(x, "n c (l p) -> n l (p c)", p=self.patch_size)  # (N, L, P)

    def unpatchify(self, patches: Tensor) -> Tensor:
        return rearrange(patches, "n l (p c) -> n c (l p)", p=self.patch_size)  # (N, C, T)


def every_other_masking(*, batch, grid, mask_ratio, device, generator=None):
    """Keep tokens 0, 2, 4, ...; ``mask_ratio`` is ignored (always about half is removed)."""
    num_tokens = grid[0]
    noise = (torch.arange(num_tokens, device=device) % 2).float().repeat(batch, 1)  # (N, L)
    return noise, num_tokens - num_tokens // 2


def sine_waves(count: int, cfg: SeqTokenizerConfig, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, cfg.length)  # (T,)
    freq = 1 + 4 * torch.rand(count, cfg.in_chans, 1, generator=g)
    phase = 6.28 * torch.rand(count, cfg.in_chans, 1, generator=g)
    return torch.sin(6.28 * freq * t + phase)  # (N, C, T)


class SeqModality(Modality):
    name = "toyseq"
    tokenizer_config = SeqTokenizerConfig
    data_config = SeqDataConfig

    def build_tokenizer(self, config: SeqTokenizerConfig, *, embed_dim: int) -> SeqTokenizer:
        return SeqTokenizer(
            length=config.length, patch_size=config.patch_size, in_chans=config.in_chans, embed_dim=embed_dim
        )

    def build_dataset(self, data: SeqDataConfig, tokenizer: SeqTokenizerConfig, *, split: str):
        if split == "train":
            return TensorDataset(sine_waves(data.num_train, tokenizer, data.seed))
        if data.num_heldout == 0:
            return None
        return TensorDataset(sine_waves(data.num_heldout, tokenizer, data.seed + 1))

    def load_inputs(self, paths: Sequence[str | Path], data: SeqDataConfig, tokenizer: Any) -> Tensor:
        return torch.stack([torch.load(p) for p in paths])

    def render_reconstruction(self, *, inputs, pred, mask, tokenizer, data, path, caption="") -> Path:
        rows = torch.cat([inputs[:, 0], tokenizer.unpatchify(pred)[:, 0]])  # (2N, T)
        rows = (rows - rows.min()) / (rows.max() - rows.min() + 1e-6)
        Image.fromarray((rows.numpy() * 255).astype(np.uint8)).save(path)
        return Path(path)


@hookimpl
def anymae_register_modalities(register: Callable[[Any], None]) -> None:
    register(SeqModality())


@hookimpl
def anymae_register_masking(register: Callable[[str, Any], None]) -> None:
    register("every_other", every_other_masking)
'''
