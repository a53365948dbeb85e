"""Checks for modality authors: ``check_modality`` runs the contract every modality must satisfy.

anymae's own test-suite runs it over every registered modality; a plugin's tests can do the same::

    from anymae.testing import check_modality

    def test_my_modality_satisfies_the_contract():
        check_modality("series", tokenizer={"channels": 3, "length": 64, "patch": 8})
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from anymae.core.build.models import build_model
from anymae.core.config import ModelConfig, resolve_model_config
from anymae.core.model.composite import MultiModalMAE
from anymae.core.model.mae import MaskedAutoencoder
from anymae.core.model.masking import keep_count
from anymae.core.model.tokenizer import Tokenizer
from anymae.plugins.manager import Registry, resolve_registry

__all__ = ["check_composite", "check_modality"]


def check_modality(
    name: str,
    *,
    tokenizer: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
    registry: Registry | None = None,
    batch: int = 2,
    mask_ratio: float = 0.75,
) -> None:
    """Assert the modality ``name`` works with the core; raises ``AssertionError`` saying what broke.

    Builds a tiny MAE on the modality's tokenizer (``tokenizer``: its ``model.tokenizer`` config; ``model``:
    other ``model`` keys, e.g. ``{"masking": "tube", "cls_token": False}``) and checks:
    the patchify/unpatchify round trip, the documented shapes, the position table, masking integration
    (kept count, forced masks, fixed noise), a finite loss, a finite gradient on every trainable parameter,
    and a state-dict round trip that reproduces the loss.
    """
    registry = resolve_registry(registry)
    raw = {
        "modality": name,
        "tokenizer": tokenizer or {},
        "mask_ratio": mask_ratio,
        "norm_pix_loss": True,
        "embed_dim": 32,
        "depth": 1,
        "num_heads": 2,
        "decoder_embed_dim": 16,
        "decoder_depth": 1,
        "decoder_num_heads": 2,
        **(model or {}),
    }
    if "target" in (model or {}):
        raw["norm_pix_loss"] = raw["target"] == "norm_pix"
    cfg = resolve_model_config(raw, registry)
    torch.manual_seed(0)
    mae = build_model(cfg, registry=registry)
    assert isinstance(mae, MaskedAutoencoder), f"{name}: build_model gave a {type(mae).__name__}"
    x = _check_tokenizer(name, mae.tokenizer, batch=batch, embed_dim=cfg.embed_dim)
    _check_training_step(name, mae, x, cfg=cfg, mask_ratio=mask_ratio)
    _check_reload(name, mae, x, cfg=cfg, registry=registry)


def _check_tokenizer(name: str, tok: Tokenizer, *, batch: int, embed_dim: int) -> Tensor:
    """The patchify/unpatchify round trip, the token and position-table shapes -> an input (N, ...) of the
    right shape: whatever unpatchify makes of random patches."""
    num_tokens, patch_dim = tok.num_tokens, tok.patch_dim
    assert num_tokens == math.prod(tok.grid), f"{name}: num_tokens {num_tokens} != prod(grid {tok.grid})"
    patches = torch.randn(batch, num_tokens, patch_dim)
    x = tok.unpatchify(patches)
    assert torch.allclose(tok.patchify(x), patches), f"{name}: patchify(unpatchify(p)) != p"
    assert torch.allclose(tok.unpatchify(tok.patchify(x)), x), f"{name}: unpatchify(patchify(x)) != x"
    tokens = tok(x)
    assert tuple(tokens.shape) == (batch, num_tokens, embed_dim), f"{name}: tokens {tuple(tokens.shape)}"
    table = tok.position_table(embed_dim)
    assert tuple(table.shape) == (num_tokens, embed_dim), f"{name}: position table {tuple(table.shape)}"
    return x


def _check_training_step(
    name: str, model: MaskedAutoencoder, x: Tensor, *, cfg: ModelConfig, mask_ratio: float
) -> None:
    """Prediction and mask shapes, the kept count, a finite loss, a finite gradient on every trainable
    parameter, and a forced mask applied as given."""
    batch, num_tokens, patch_dim = x.shape[0], model.tokenizer.num_tokens, model.tokenizer.patch_dim
    loss, pred, mask = model(x)
    assert tuple(pred.shape) == (batch, num_tokens, patch_dim), f"{name}: pred {tuple(pred.shape)}"
    assert tuple(mask.shape) == (batch, num_tokens), f"{name}: mask {tuple(mask.shape)}"
    counts = mask.sum(1)
    assert (counts == counts[0]).all() and 0 < counts[0] < num_tokens, f"{name}: {counts.tolist()} removed per row"
    if cfg.masking == "random":
        removed = num_tokens - keep_count(num_tokens, mask_ratio)
        assert (counts == removed).all(), f"{name}: {counts.tolist()} removed, expected {removed} per row"
    assert torch.isfinite(loss), f"{name}: loss {loss.item()}"
    loss.backward()
    _check_gradients(model, prefix=f"{name}: ")
    forced = torch.zeros(batch, num_tokens, dtype=torch.bool)
    forced[:, : num_tokens // 2] = True
    _, _, mask_forced = model(x, mask=forced)
    assert torch.equal(mask_forced.bool(), forced), f"{name}: a forced mask was not applied"


def _check_gradients(model: nn.Module, *, prefix: str = "") -> None:
    for pname, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None, f"{prefix}parameter {pname} gets no gradient"
            assert torch.isfinite(param.grad).all(), f"{prefix}parameter {pname} has a non-finite gradient"


def _check_reload(name: str, model: MaskedAutoencoder, x: Tensor, *, cfg: ModelConfig, registry: Registry) -> None:
    """A state-dict round trip reproduces the loss under fixed noise; ``encode`` gives every token's feature."""
    model.eval()
    noise = torch.rand(x.shape[0], model.tokenizer.num_tokens)
    with torch.no_grad():
        loss_a, _, _ = model(x, noise=noise)
        twin = build_model(cfg, registry=registry).eval()
        twin.load_state_dict(model.state_dict())
        loss_b, _, _ = twin(x, noise=noise)
        features = model.encode(x)
    assert torch.allclose(loss_a, loss_b), f"{name}: state-dict round trip changed the loss"
    expected = (x.shape[0], model.encoder.num_prefix + model.tokenizer.num_tokens, cfg.embed_dim)
    assert tuple(features.shape) == expected, f"{name}: encode {tuple(features.shape)}, expected {expected}"


def check_composite(
    parts: dict[str, dict[str, Any]],
    *,
    model: dict[str, Any] | None = None,
    registry: Registry | None = None,
    batch: int = 2,
) -> None:
    """Assert a composite of the modalities in ``parts`` works with the core; raises ``AssertionError``.

    ``parts``: ``model.parts`` (part name -> ``{"modality": ..., "tokenizer": {...}, "masking": ..., ...}``);
    ``model``: other ``model`` keys. Builds a tiny composite and checks: each part's mask slice keeps the count
    its strategy and ratio give, a forced joint mask is applied, a part removed from every sample changes nothing
    of the others' predictions whatever its input, a finite loss equal to the weighted sum of the parts' losses, a
    finite gradient on every trainable parameter, ``encode`` on every single part and on all of them, and a
    state-dict round trip that reproduces the loss.
    """
    registry = resolve_registry(registry)
    raw = {"modality": "composite", "parts": parts, "embed_dim": 32, "depth": 1, "num_heads": 2,
           "decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2, **(model or {})}  # fmt: skip
    cfg = resolve_model_config(raw, registry)
    torch.manual_seed(0)
    composite = build_model(cfg, registry=registry)
    assert isinstance(composite, MultiModalMAE), f"build_model gave a {type(composite).__name__}"
    x = {}
    for name, part in composite.parts.items():
        x[name] = part.tokenizer.unpatchify(torch.randn(batch, part.num_tokens, part.tokenizer.patch_dim))
    mask = composite.draw_mask(batch, generator=torch.Generator().manual_seed(0))
    _check_part_masks(composite, mask, cfg=cfg)
    _check_composite_step(composite, x, mask)
    composite.eval()
    with torch.no_grad():
        _check_dropped_part(composite, x, mask)
        _check_composite_features(composite, x, cfg=cfg)
        twin = build_model(cfg, registry=registry).eval()
        twin.load_state_dict(composite.state_dict())
        assert torch.allclose(composite(x, mask=mask).loss, twin(x, mask=mask).loss), "state-dict round trip"


def _check_part_masks(composite: MultiModalMAE, mask: Tensor, *, cfg: ModelConfig) -> None:
    """Each part's slice of a joint mask removes the same count in every row (the strategy's count for random)."""
    for name, part in composite.parts.items():
        removed = composite.part_mask(mask, name).sum(1)
        if cfg.parts[name].masking == "random":
            expected = part.num_tokens - keep_count(part.num_tokens, part.mask_ratio)
            assert (removed == expected).all(), f"part {name}: {removed.tolist()} removed, expected {expected}"
        assert (removed == removed[0]).all() and 0 < removed[0] < part.num_tokens, f"part {name}: {removed.tolist()}"


def _check_composite_step(composite: MultiModalMAE, x: dict[str, Tensor], mask: Tensor) -> None:
    """A forced joint mask, each part's prediction shape, the loss as the weighted sum, finite gradients."""
    batch = mask.shape[0]
    out = composite(x, mask=mask)
    assert torch.equal(out.mask.bool(), mask), "a forced joint mask was not applied"
    for name, part in composite.parts.items():
        shape = (batch, part.num_tokens, part.tokenizer.patch_dim)
        got = tuple(out.pred[name].shape)
        assert got == shape, f"part {name}: pred {got}, expected {shape}"
    weighted = sum(composite.parts[n].loss_weight * out.losses[n] for n in composite.parts)
    assert torch.isfinite(out.loss), f"composite loss {out.loss.item()}"
    assert torch.allclose(out.loss.detach(), weighted), f"loss {out.loss.item()} != weighted sum {float(weighted)}"
    out.loss.backward()
    _check_gradients(composite)


def _check_dropped_part(composite: MultiModalMAE, x: dict[str, Tensor], mask: Tensor) -> None:
    """The first part removed from every sample changes nothing of the others' predictions, whatever its input."""
    first, *rest = list(composite.parts)
    dropped = composite.drop(mask, [first])
    a = composite(x, mask=dropped)
    b = composite({**x, first: torch.randn_like(x[first])}, mask=dropped)
    for name in rest:
        assert torch.allclose(a.pred[name], b.pred[name], atol=1e-5), f"dropped part {first} still changes {name}"


def _check_composite_features(composite: MultiModalMAE, x: dict[str, Tensor], *, cfg: ModelConfig) -> None:
    """``encode`` of every single part and of all of them: one feature per token, plus the prefix."""
    batch = next(iter(x.values())).shape[0]
    for name, part in composite.parts.items():
        features = composite.encode({name: x[name]})
        expected = (batch, composite.encoder.num_prefix + part.num_tokens, cfg.embed_dim)
        assert tuple(features.shape) == expected, f"encode({name}) {tuple(features.shape)}, expected {expected}"
    features = composite.encode(x)
    expected = (batch, composite.encoder.num_prefix + composite.num_tokens, cfg.embed_dim)
    assert tuple(features.shape) == expected, f"encode(all) {tuple(features.shape)}, expected {expected}"
