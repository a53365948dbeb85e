"""2-D patch tokenizer: any H x W divisible by the patch size, any number of channels."""

from __future__ import annotations

from einops import rearrange
from torch import Tensor, nn

from anymae.core.data.files import check_input_shape
from anymae.core.model.tokenizer import Tokenizer

__all__ = ["PatchTokenizer2d"]


class PatchTokenizer2d(Tokenizer):
    """images (N, C, H, W) -> tokens (N, L, D) with L = (H/p) * (W/p), patches numbered row-major."""

    def __init__(self, *, img_size: tuple[int, int], patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        h, w = img_size
        if h % patch_size or w % patch_size:
            raise ValueError(f"image {h}x{w} is not divisible by patch {patch_size}")
        self.img_size = (h, w)
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.grid = (h // patch_size, w // patch_size)
        self.patch_dim = patch_size * patch_size * in_chans
        self.embed_dim = embed_dim
        # The Conv is a Linear over each patch (official key: patch_embed.proj).
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        # Official init: xavier-uniform of the weight viewed as a Linear (D, C*p*p); the bias keeps
        # PyTorch's default Conv init, as in the reference.
        nn.init.xavier_uniform_(self.proj.weight.view(embed_dim, -1))

    def _check(self, x: Tensor) -> None:
        check_input_shape(x, (self.in_chans, *self.img_size), what="images", axes="(N, C, H, W)")

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, C, H, W) -> (N, L, D)."""
        self._check(x)
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, D, h, w) -> (N, L, D)

    def patchify(self, x: Tensor) -> Tensor:
        """x: (N, C, H, W) -> (N, L, p*p*C), values ordered (row-in-patch, col-in-patch, channel)."""
        self._check(x)
        p = self.patch_size
        return rearrange(x, "n c (h p) (w q) -> n (h w) (p q c)", p=p, q=p)

    def unpatchify(self, patches: Tensor) -> Tensor:
        """(N, L, p*p*C) -> (N, C, H, W)."""
        p, (h, w) = self.patch_size, self.grid
        return rearrange(patches, "n (h w) (p q c) -> n c (h p) (w q)", h=h, w=w, p=p, q=p)
