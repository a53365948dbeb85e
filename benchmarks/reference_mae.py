"""The baseline anymae is timed against: a plain eager fp32 image MAE and its training step.

Written straight from ``/work/shared/reference/mae-recipes.md`` (section 1) and independent of anymae's code,
with the habits of the official release (timm 0.3.2 era) kept on purpose, because they are what a user of the
reference code runs:

- timm ``Block``s with fused attention turned off (timm 0.3.2 had no ``scaled_dot_product_attention``);
- gathers through ``index.unsqueeze(-1).repeat(1, 1, D)`` (a materialized index copy) and
  ``mask_token.repeat(...)``;
- the decoder head on all ``1 + L`` tokens (the CLS slot is dropped after the head);
- ``torch.optim.AdamW`` with its for-loop implementation (``foreach=False``, no ``fused``), no autocast,
  no ``torch.compile``.

Parameter names follow the official checkpoint layout (reference section 5), so a state dict of this
model loads into anymae through :func:`anymae.modalities.image.interop.from_official_mae` and back.
"""

from __future__ import annotations

from functools import partial

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

__all__ = ["ReferenceMAE", "reference_optimizer", "reference_step", "sincos_table_2d"]


def sincos_table_2d(grid: int, width: int, *, cls_slot: bool = True) -> Tensor:
    """(1 [+1] + grid*grid, width): first half encodes the column x, second half the row y (reference section 1)."""
    quarter = width // 4
    omega = 1.0 / 10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (D/4,)
    index = torch.arange(grid * grid, dtype=torch.float64)
    ys, xs = index.div(grid, rounding_mode="floor"), index.remainder(grid)  # row-major numbering
    ax, ay = xs[:, None] * omega, ys[:, None] * omega  # (L, D/4) each
    table = torch.cat([ax.sin(), ax.cos(), ay.sin(), ay.cos()], dim=1)  # (L, D)
    if cls_slot:
        table = torch.cat([torch.zeros(1, width, dtype=torch.float64), table], dim=0)
    return table.float()[None]


class _PatchEmbed(nn.Module):
    """Conv2d(C, D, p, stride p): images (N, C, H, W) -> (N, L, D). Key: ``patch_embed.proj``."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ReferenceMAE(nn.Module):
    """The paper's image MAE (ViT encoder on visible patches, 8-block decoder), eager fp32."""

    def __init__(
        self,
        *,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_pix_loss: bool = False,
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"image {img_size} is not divisible by patch {patch_size}")
        self.patch_size = patch_size
        self.grid = img_size // patch_size
        self.norm_pix_loss = norm_pix_loss
        norm = partial(nn.LayerNorm, eps=1e-6)

        self.patch_embed = _PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Fixed sin-cos tables held as frozen parameters, as the official model does.
        self.pos_embed = nn.Parameter(sincos_table_2d(self.grid, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(depth)
        )
        self.norm = norm(embed_dim)

        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(sincos_table_2d(self.grid, decoder_embed_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm)
            for _ in range(decoder_depth)
        )
        self.decoder_norm = norm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size * patch_size * in_chans)

        # timm 0.3.2 (the official pin) computed attention as softmax(q k^T) v in plain ops.
        for block in (*self.blocks, *self.decoder_blocks):
            block.attn.fused_attn = False
        self._init_weights()

    def _init_weights(self) -> None:
        """Linear: xavier-uniform / zero bias; LayerNorm 1 / 0; patch Conv as a Linear; tokens N(0, 0.02)."""
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def patchify(self, imgs: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, L, p*p*C), values ordered (row-in-patch, col-in-patch, channel)."""
        n, c, h, w = imgs.shape
        p = self.patch_size
        x = imgs.reshape(n, c, h // p, p, w // p, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(n, (h // p) * (w // p), p * p * c)

    def random_masking(self, x: Tensor, mask_ratio: float, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (N, L, D) -> kept (N, L_vis, D), mask (N, L) with 1 = removed, ids_restore (N, L)."""
        n, length, dim = x.shape
        len_keep = int(length * (1 - mask_ratio))
        ids_shuffle = torch.argsort(noise, dim=1)  # small noise is kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x_masked = torch.gather(x, 1, ids_keep.unsqueeze(-1).repeat(1, 1, dim))  # (N, L_vis, D)
        mask = torch.ones(n, length, device=x.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)  # (N, L), original order
        return x_masked, mask, ids_restore

    def forward_encoder(self, imgs: Tensor, mask_ratio: float, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]  # (N, L, D), positions before masking
        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)  # (N, 1 + L_vis, D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x: Tensor, ids_restore: Tensor) -> Tensor:
        x = self.decoder_embed(x)  # (N, 1 + L_vis, D_dec)
        n, length = ids_restore.shape
        mask_tokens = self.mask_token.repeat(n, length + 1 - x.shape[1], 1)  # (N, L - L_vis, D_dec)
        body = torch.cat([x[:, 1:, :], mask_tokens], dim=1)  # shuffled order
        body = torch.gather(body, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))  # (N, L, D_dec)
        x = torch.cat([x[:, :1, :], body], dim=1) + self.decoder_pos_embed  # (N, 1 + L, D_dec)
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_pred(self.decoder_norm(x))  # (N, 1 + L, P): the head runs on every token
        return x[:, 1:, :]

    def forward_loss(self, imgs: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)  # unbiased
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(dim=-1)  # (N, L)
        return (loss * mask).sum() / mask.sum()

    def forward(self, imgs: Tensor, mask_ratio: float = 0.75, noise: Tensor | None = None) -> tuple[Tensor, ...]:
        """imgs (N, C, H, W) -> (loss, pred (N, L, P), mask (N, L)); ``noise (N, L)`` fixes the mask."""
        if noise is None:
            noise = torch.rand(imgs.shape[0], self.grid * self.grid, device=imgs.device)
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask


def reference_optimizer(model: nn.Module, *, lr: float = 1.5e-4, weight_decay: float = 0.05) -> torch.optim.AdamW:
    """AdamW (0.9, 0.95), no decay on 1-D parameters and biases, for-loop implementation (``foreach=False``)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim == 1 or name.endswith(".bias") else decay).append(param)
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), foreach=False)


def reference_step(
    model: ReferenceMAE, optimizer: torch.optim.Optimizer, imgs: Tensor, *, mask_ratio: float = 0.75
) -> Tensor:
    """One pre-training step: forward, backward, AdamW update; returns the (detached) loss."""
    loss, _, _ = model(imgs, mask_ratio)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()  # torch 2 default: set_to_none=True
    return loss.detach()
