"""Block features as 2-D maps, checked against timm's ``VisionTransformer.forward_intermediates``.

timm's ViT with ``dynamic_img_size=True`` is an independent implementation of the same reading: patch tokens after
the chosen blocks (``norm=False``), CLS dropped, NCHW maps, its position table resampled with
``resample_abs_pos_embed`` when the image is not the size it was built for.
"""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from anymae.core.model.encoder import MaskedEncoder
from anymae.core.model.features import block_features, evenly_spaced_blocks
from anymae.modalities.image.tokenizer import PatchTokenizer2d

PATCH, DIM, DEPTH, HEADS = 8, 32, 4, 4
PRETRAIN_SIZE = (32, 32)


def _encoder_and_timm() -> tuple[PatchTokenizer2d, MaskedEncoder, VisionTransformer]:
    torch.manual_seed(0)
    tokenizer = PatchTokenizer2d(img_size=PRETRAIN_SIZE, patch_size=PATCH, in_chans=3, embed_dim=DIM)
    encoder = MaskedEncoder(
        embed_dim=DIM, depth=DEPTH, num_heads=HEADS, mlp_ratio=4.0, pos_table=tokenizer.position_table(DIM)
    )
    for p in encoder.parameters():  # non-trivial values everywhere (LayerNorm weights included)
        torch.nn.init.normal_(p, std=0.2)
    reference = VisionTransformer(
        img_size=PRETRAIN_SIZE, patch_size=PATCH, embed_dim=DIM, depth=DEPTH, num_heads=HEADS, num_classes=0,
        dynamic_img_size=True,
    )  # fmt: skip
    state = {f"blocks.{k}": v for k, v in encoder.blocks.state_dict().items()}
    state |= {"cls_token": encoder.cls_token.data, "pos_embed": encoder.pos_embed.clone()}
    state |= {f"patch_embed.{k}": v for k, v in tokenizer.state_dict().items()}
    state |= {f"norm.{k}": v for k, v in encoder.norm.state_dict().items()}
    missing, unexpected = reference.load_state_dict(state, strict=False)
    assert not unexpected and all(not k.startswith(("blocks", "patch_embed", "pos_embed", "cls")) for k in missing)
    return tokenizer, encoder.eval(), reference.eval()


def _tokens(tokenizer: PatchTokenizer2d, image: torch.Tensor) -> torch.Tensor:
    sized = PatchTokenizer2d(img_size=tuple(image.shape[-2:]), patch_size=PATCH, in_chans=3, embed_dim=DIM)
    sized.load_state_dict(tokenizer.state_dict())
    return sized(image)


@pytest.mark.parametrize("size", [PRETRAIN_SIZE, (48, 80), (24, 16)])
def test_block_features_match_timm_intermediates_at_any_input_size(size):
    tokenizer, encoder, reference = _encoder_and_timm()
    image = torch.randn(2, 3, *size)
    grid = (size[0] // PATCH, size[1] // PATCH)
    with torch.no_grad():
        ours = block_features(encoder, _tokens(tokenizer, image), [1, 3], grid=grid, pos_grid=tokenizer.grid)
        theirs = reference.forward_intermediates(
            image, indices=[1, 3], norm=False, output_fmt="NCHW", intermediates_only=True
        )
    assert [tuple(f.shape) for f in ours] == [(2, DIM, *grid)] * 2
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_block_features_keep_the_order_asked_for():
    tokenizer, encoder, _ = _encoder_and_timm()
    tokens = tokenizer(torch.randn(1, 3, *PRETRAIN_SIZE))
    with torch.no_grad():
        a, b = block_features(encoder, tokens, [3, 0], grid=tokenizer.grid)
        (c,) = block_features(encoder, tokens, [0], grid=tokenizer.grid)
    torch.testing.assert_close(b, c)
    assert not torch.allclose(a, b)


def test_block_features_refuse_a_block_beyond_the_depth_and_a_wrong_grid():
    tokenizer, encoder, _ = _encoder_and_timm()
    tokens = tokenizer(torch.randn(1, 3, *PRETRAIN_SIZE))
    with pytest.raises(ValueError, match=r"0\.\.3"):
        block_features(encoder, tokens, [4], grid=tokenizer.grid)
    with pytest.raises(ValueError, match="do not fill the 3x4 grid"):
        block_features(encoder, tokens, [0], grid=(3, 4))


@pytest.mark.parametrize(
    ("depth", "blocks"),
    # 12 and 24: BEiT's out_indices in upernet_beit_base_12_* and upernet_beit_large_24_* (ADE20K configs)
    [(12, [3, 5, 7, 11]), (24, [7, 11, 15, 23]), (6, [1, 2, 3, 5]), (4, [0, 1, 2, 3]), (32, [10, 15, 21, 31])],
)
def test_evenly_spaced_blocks_are_beits_choice_generalised(depth, blocks):
    assert evenly_spaced_blocks(depth) == blocks


def test_evenly_spaced_blocks_need_four_blocks():
    with pytest.raises(ValueError, match="at least 4 blocks"):
        evenly_spaced_blocks(3)
