"""MaskedAutoencoder: tokenizer -> random masking -> visible-only encoder -> mask-token decoder -> masked loss.

The forward pass is split into the paper's stages (``forward_encoder``, ``forward_decoder``,
``forward_loss``) and follows the official conventions: ``pred (N, L, P)`` in the tokenizer's patch order
and a float ``mask (N, L)`` with 1 = removed.
"""

from __future__ import annotations

from typing import Any, TypedDict, Unpack

import torch
from torch import Tensor, nn

from anymae.core.model.decoder import LearnedMaskToken
from anymae.core.model.encoder import MaskedEncoder
from anymae.core.model.loss import masked_mse
from anymae.core.model.masking import (
    MaskingStrategy,
    SampleMasker,
    gather_tokens,
    keep_count,
    noise_from_mask,
    random_masking,
    shuffle_from_noise,
)
from anymae.core.model.targets import PixelTarget, Target
from anymae.core.model.tokenizer import Tokenizer

__all__ = ["MaskChoice", "MaskedAutoencoder", "init_linear_and_norm", "target_to_pixels"]


class MaskChoice(TypedDict, total=False):
    """How a forward pass masks (the keywords of :meth:`MaskedAutoencoder.forward_encoder`)."""

    mask_ratio: float | None  # default: the model's
    noise: Tensor | None  # (N, L): keep the tokens of smallest noise
    mask: Tensor | None  # (N, L) bool, True = removed


class MaskedAutoencoder(nn.Module):
    """An MAE for any modality whose tokenizer implements :class:`Tokenizer`.

    ``decoder=None`` gives an encoder-only model (e.g. loaded from ``mae_pretrain_vit_base.pth``): it can
    ``encode`` but not compute the reconstruction loss. ``target`` turns patches into the regression target
    (:class:`PixelTarget` or the paper's norm-pix). ``pred_masked_only`` runs the decoder head on removed
    tokens only (VideoMAE does; the loss is the same).
    """

    def __init__(
        self,
        *,
        tokenizer: Tokenizer,
        encoder: MaskedEncoder,
        decoder: nn.Module | None,
        masking: MaskingStrategy = random_masking,
        mask_ratio: float = 0.75,
        target: Target | None = None,
        pred_masked_only: bool = False,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.decoder = decoder
        self.masking = masking
        self.mask_ratio = mask_ratio
        self.target = PixelTarget() if target is None else target
        self.pred_masked_only = pred_masked_only
        # Plain data describing how to rebuild this model (saved in checkpoints); not used by forward.
        self.config: dict[str, Any] = dict(config or {})
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Official MAE init: xavier-uniform Linear weights (qkv fused), zero biases, LayerNorm 1/0,
        cls and mask tokens N(0, 0.02). The tokenizer initialises itself (e.g. its Conv as a Linear)."""
        mask_token = self.decoder.mask_token if isinstance(self.decoder, LearnedMaskToken) else None
        for token in (self.encoder.cls_token, mask_token):
            if token is not None:
                nn.init.normal_(token, std=0.02)
        for part in (self.encoder, self.decoder):
            if part is not None:
                part.apply(init_linear_and_norm)

    def sample_masker(self) -> SampleMasker:
        """The data pipeline's per-sample mask: the model's strategy at its ratio."""
        return SampleMasker(self.masking, self.tokenizer.grid, self.mask_ratio)

    def decoders(self) -> list[nn.Module]:
        return [] if self.decoder is None else [self.decoder]

    # --- the paper's stages -----------------------------------------------------------------------------
    def forward_encoder(
        self,
        x: Tensor,
        *,
        mask_ratio: float | None = None,
        noise: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x -> latent (N, num_prefix + L_vis, D), mask (N, L) float 1 = removed, ids_restore (N, L)."""
        tokens = self.tokenizer(x)  # (N, L, D)
        noise, len_keep = self._mask_noise(tokens, mask_ratio=mask_ratio, noise=noise, mask=mask)
        ids_keep, ids_restore, mask_out = shuffle_from_noise(noise, len_keep)
        latent = self.encoder(tokens, ids_keep)  # (N, num_prefix + L_vis, D)
        return latent, mask_out, ids_restore

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor, select: Tensor | None = None) -> Tensor:
        """latent (N, num_prefix + L_vis, D), ids_restore (N, L) -> pred (N, L, P), or (N, L_sel, P) for the
        token ids ``select`` (N, L_sel)."""
        if self.decoder is None:
            raise RuntimeError(
                "this model has no decoder (it was built or loaded encoder-only); "
                "use model.encode(x) for features, or load a checkpoint that has decoder weights"
            )
        if select is None:
            return self.decoder(latent, ids_restore)
        return self.decoder(latent, ids_restore, select)

    def forward_target(self, x: Tensor) -> Tensor:
        """x -> target (N, L, P): the tokenizer's patches through the model's target (e.g. norm-pix)."""
        return self.target(self.tokenizer.patchify(x), tokenizer=self.tokenizer)

    def pred_to_pixels(self, x: Tensor, pred: Tensor, mask: Tensor | None = None) -> Tensor:
        """A prediction (N, L, P) in target space -> patch values (N, L, P) (:func:`target_to_pixels`)."""
        return target_to_pixels(self.target, self.tokenizer, x, pred, mask)

    def forward_loss(self, x: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Mean over removed tokens of the per-token MSE between pred (N, L, P) and the target."""
        return masked_mse(pred, self.forward_target(x), mask)

    def forward(self, x: Tensor, **masking: Unpack[MaskChoice]) -> tuple[Tensor, Tensor, Tensor]:
        """x -> (loss, pred (N, L, P), mask (N, L) float, 1 = removed).

        ``masking`` is :meth:`forward_encoder`'s: ``mask_ratio``; ``noise (N, L)`` fixes the mask exactly as the
        official code does for the same noise; ``mask (N, L)`` bool, True = removed, the same count per row,
        forces a given mask. With ``pred_masked_only`` the head runs on removed tokens only and ``pred`` is 0 at
        kept tokens.
        """
        latent, mask_out, ids_restore = self.forward_encoder(x, **masking)
        if not self.pred_masked_only:
            pred = self.forward_decoder(latent, ids_restore)
            return self.forward_loss(x, pred, mask_out), pred, mask_out
        # Removed tokens in ascending token order (VideoMAE's order): a stable sort puts kept (0) first.
        num_removed = int(mask_out[0].sum())
        removed = torch.argsort(mask_out, dim=1, stable=True)[:, mask_out.shape[1] - num_removed :]  # (N, L_rem)
        pred_removed = self.forward_decoder(latent, ids_restore, removed)  # (N, L_rem, P)
        target = gather_tokens(self.forward_target(x), removed)  # (N, L_rem, P)
        loss = ((pred_removed - target) ** 2).mean()  # every row removes the same count: = masked_mse
        pred = pred_removed.new_zeros(*mask_out.shape, pred_removed.shape[-1])
        pred.scatter_(1, removed.unsqueeze(-1).expand_as(pred_removed), pred_removed)
        return loss, pred, mask_out

    def encode(self, x: Tensor) -> Tensor:
        """Features with no masking: x -> (N, num_prefix + L, D), CLS first if any, after the final LayerNorm.

        Deterministic in ``eval()`` mode (no random masking is ever applied here).
        """
        return self.encoder(self.tokenizer(x), None)

    # --- helpers ------------------------------------------------------------------------------------------
    def _mask_noise(
        self, tokens: Tensor, *, mask_ratio: float | None, noise: Tensor | None, mask: Tensor | None
    ) -> tuple[Tensor, int]:
        n, num_tokens, _ = tokens.shape
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        if noise is not None and mask is not None:
            raise ValueError("give either noise or mask, not both")
        if mask is not None:
            if tuple(mask.shape) != (n, num_tokens):
                raise ValueError(f"mask has shape {tuple(mask.shape)}, expected (N, L) = ({n}, {num_tokens})")
            return noise_from_mask(mask.to(tokens.device))
        if noise is not None:
            if tuple(noise.shape) != (n, num_tokens):
                raise ValueError(f"noise has shape {tuple(noise.shape)}, expected (N, L) = ({n}, {num_tokens})")
            return noise.to(tokens.device), keep_count(num_tokens, ratio)
        return self.masking(batch=n, grid=self.tokenizer.grid, mask_ratio=ratio, device=tokens.device)


def init_linear_and_norm(module: nn.Module) -> None:
    """The official init of one module: xavier-uniform Linear weights, zero biases, LayerNorm 1/0."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def target_to_pixels(
    target: Target, tokenizer: Tokenizer, x: Tensor, pred: Tensor, mask: Tensor | None = None
) -> Tensor:
    """A prediction (N, L, P) in ``target``'s space -> patch values (N, L, P).

    Without ``mask`` every token is mapped back with its own true patch's statistics (the MAE paper's
    figures, VideoMAE's visualization). With ``mask (N, L)``, 1 = removed, removed tokens are mapped back
    from the visible patches only: once with each visible patch as the reference, averaged. For a target
    that de-normalizes as ``pred * std + mean`` (norm-pix, VideoMAE's per-channel target) that is the
    visible patches' average mean and std, so the result never reads a removed patch.
    """
    patches = tokenizer.patchify(x)  # (N, L, P)
    true_stats = target.to_pixels(pred, patches, tokenizer=tokenizer)
    if mask is None:
        return true_stats
    num_visible = int((mask[0] == 0).sum())  # every row keeps the same count
    if num_visible == 0:
        raise ValueError("mask removes every token: no visible patch to take statistics from")
    visible_ids = torch.argsort(mask, dim=1, stable=True)[:, :num_visible]  # (N, L_vis), kept (0) first
    visible = gather_tokens(patches, visible_ids)  # (N, L_vis, P)
    visible_stats = torch.zeros_like(true_stats)  # (N, L, P)
    for j in range(num_visible):
        reference = visible[:, j : j + 1].expand_as(patches)  # visible patch j in every position
        visible_stats += target.to_pixels(pred, reference, tokenizer=tokenizer) / num_visible
    return torch.where(mask.bool().unsqueeze(-1), visible_stats, true_stats)
