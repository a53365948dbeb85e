"""CAV-MAE's contrastive term in composite models: InfoNCE against a hand-written loop, the pooled representation
against a re-computation of the encoder on the visible tokens, weight 0 changing nothing, and 2 gloo ranks with
batch B equal to one process with batch 2B."""

from __future__ import annotations

import math
import os
import socket
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from anymae.core.build.models import build_model
from anymae.core.config import ConfigError, resolve_model_config
from anymae.core.model.contrastive import info_nce

AUDIO_TOKENIZER = {"target_length": 64, "num_mel_bins": 32, "patch_size": 16}  # 4 x 2 = 8 tokens
TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2, "decoder_embed_dim": 16, "decoder_depth": 1,
        "decoder_num_heads": 2}  # fmt: skip
PARTS = {
    "image": {"tokenizer": {"img_size": 32, "patch_size": 8}, "target": "norm_pix"},  # 16 tokens
    "audio": {"tokenizer": AUDIO_TOKENIZER, "mask_ratio": 0.5},
}


def composite(contrastive: dict[str, Any] | None = None, **model: Any) -> Any:
    torch.manual_seed(0)
    raw = {"modality": "composite", "parts": PARTS, **TINY, **model}
    if contrastive is not None:
        raw["contrastive"] = contrastive
    return build_model(resolve_model_config(raw))


def inputs(batch: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(batch, 3, 32, 32, generator=generator),
            "audio": torch.randn(batch, 1, 64, 32, generator=generator)}  # fmt: skip


def hand_info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> float:
    """-log softmax of each matching pair, row by row, both directions, in float64 Python arithmetic."""
    a, b = a.double().tolist(), b.double().tolist()
    n = len(a)

    def direction(q: list[list[float]], k: list[list[float]]) -> float:
        total = 0.0
        for i in range(n):
            scores = [sum(x * y for x, y in zip(q[i], k[j], strict=True)) / temperature for j in range(n)]
            top = max(scores)
            total += -(scores[i] - top - math.log(sum(math.exp(s - top) for s in scores)))
        return total / n

    return (direction(a, b) + direction(b, a)) / 2


def test_info_nce_equals_a_hand_written_two_way_loss():
    generator = torch.Generator().manual_seed(1)
    a = F.normalize(torch.randn(5, 7, generator=generator), dim=-1)
    b = F.normalize(torch.randn(5, 7, generator=generator), dim=-1)
    assert float(info_nce(a, b, 0.05)) == pytest.approx(hand_info_nce(a, b, 0.05), rel=1e-5)
    assert float(info_nce(a, b, 0.5)) == pytest.approx(hand_info_nce(a, b, 0.5), rel=1e-5)


def test_info_nce_leaves_out_items_that_lack_a_part():
    generator = torch.Generator().manual_seed(2)
    a = F.normalize(torch.randn(6, 4, generator=generator), dim=-1)
    b = F.normalize(torch.randn(6, 4, generator=generator), dim=-1)
    valid = torch.tensor([True, False, True, True, False, True])
    expected = hand_info_nce(a[valid], b[valid], 0.1)
    assert float(info_nce(a, b, 0.1, valid=valid)) == pytest.approx(expected, rel=1e-5)


def test_contrastive_loss_is_infonce_of_each_part_encoded_alone_and_mean_pooled():
    model = composite({"weight": 0.01, "temperature": 0.05, "masked": False}).eval()
    x = inputs()
    with torch.no_grad():
        out = model(x)
        reps = {}
        for name in ("image", "audio"):  # every token of the part, the encoder with no other part: pooled
            part = model.parts[name]
            start, stop = model.spans[name]
            tokens = part.tokenizer(x[name]) + part.modality_embed + model.encoder.pos_embed[:, 1 + start : 1 + stop]
            tokens = torch.cat([model.encoder.cls_token.expand(4, -1, -1) + model.encoder.pos_embed[:, :1], tokens], 1)
            for block in model.encoder.blocks:
                tokens = block(tokens)
            reps[name] = F.normalize(model.encoder.norm(tokens)[:, 1:].mean(dim=1), dim=-1)
    assert float(out.contrastive) == pytest.approx(hand_info_nce(reps["image"], reps["audio"], 0.05), rel=1e-4)
    reconstruction = sum(model.parts[n].loss_weight * out.losses[n] for n in ("image", "audio"))
    assert float(out.loss) == pytest.approx(float(reconstruction + 0.01 * out.contrastive), rel=1e-6)


def test_contrastive_on_the_training_masks_pools_only_the_visible_tokens():
    model = composite({"weight": 0.01, "proj_dim": 8}).eval()
    x = inputs()
    mask = model.draw_mask(4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        pooled, present = model.pooled_alone(x, mask, "audio")
        part = model.parts["audio"]
        start, stop = model.spans["audio"]
        tokens = part.tokenizer(x["audio"]) + part.modality_embed + model.encoder.pos_embed[:, 1 + start : 1 + stop]
        for i in range(4):
            kept = tokens[i : i + 1, ~mask[i, start:stop]]  # (1, 4, D): half of the 8 audio tokens
            seq = torch.cat([model.encoder.cls_token + model.encoder.pos_embed[:, :1], kept], dim=1)
            for block in model.encoder.blocks:
                seq = block(seq)
            torch.testing.assert_close(pooled[i], model.encoder.norm(seq)[0, 1:].mean(dim=0), atol=1e-5, rtol=1e-5)
    assert present.all()
    assert model.contrastive.embed("audio", pooled).shape == (4, 8)


def test_weight_zero_builds_nothing_and_changes_nothing():
    plain, off = composite(), composite({"weight": 0.0, "temperature": 0.1, "proj_dim": 16})
    assert off.contrastive is None
    assert list(plain.state_dict()) == list(off.state_dict())
    x = inputs()
    mask = plain.draw_mask(4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain(x, mask=mask).loss, off(x, mask=mask).loss)
    assert off(x, mask=mask).contrastive is None


def test_the_contrastive_term_trains_the_projection_and_the_encoder():
    model = composite({"weight": 1.0, "proj_dim": 8})
    out = model(inputs())
    out.loss.backward()
    assert model.contrastive.proj["audio"].weight.grad.abs().sum() > 0
    assert model.contrastive.proj["image"].weight.grad.abs().sum() > 0
    assert model.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_a_sample_that_lost_a_part_is_left_out_of_the_contrastive_loss():
    model = composite({"weight": 0.01, "masked": False}).eval()
    x = inputs(batch=5)
    mask = model.draw_mask(5, generator=torch.Generator().manual_seed(0))
    dropped = model.drop(mask, ["audio"])
    mask[2] = dropped[2]  # sample 2 has no audio
    with torch.no_grad():
        full = model.forward_contrastive(x, mask)
        keep = [0, 1, 3, 4]
        subset = model.forward_contrastive({k: v[keep] for k, v in x.items()}, mask[keep])
    assert float(full) == pytest.approx(float(subset), rel=1e-5)


def test_contrastive_config_is_checked_when_read():
    with pytest.raises(ConfigError, match=r"model\.contrastive is for model\.modality: composite"):
        resolve_model_config({"modality": "image", "contrastive": {"weight": 0.01}})
    with pytest.raises(ConfigError, match=r"model.contrastive.pairs: \['image', 'video'\] names \['video'\]"):
        resolve_model_config({"modality": "composite", "parts": PARTS, **TINY,
                              "contrastive": {"weight": 0.01, "pairs": [["image", "video"]]}})  # fmt: skip
    with pytest.raises(ConfigError, match="temperature > 0"):
        resolve_model_config({"modality": "composite", "parts": PARTS, **TINY, "contrastive": {"temperature": 0}})
    with pytest.raises(ConfigError, match=r"unknown config key .model\.contrastive\.wieght."):
        resolve_model_config({"modality": "composite", "parts": PARTS, **TINY, "contrastive": {"wieght": 0.1}})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_loss_and_grad(rank: int, port: int, batch: dict[str, torch.Tensor], out: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        proj = _projection()
        half = slice(rank * 3, rank * 3 + 3)
        a = F.normalize(proj(batch["a"][half]), dim=-1)
        b = F.normalize(proj(batch["b"][half]), dim=-1)
        loss = info_nce(a, b, 0.05)
        loss.backward()
        grad = proj.weight.grad.clone()
        dist.all_reduce(grad)  # what DDP does: the mean of the ranks' gradients
        out[rank] = (float(loss), grad / 2)
    finally:
        dist.destroy_process_group()


def _projection() -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(6, 4)


def test_two_gloo_ranks_with_batch_b_equal_one_process_with_batch_2b():
    generator = torch.Generator().manual_seed(4)
    batch = {"a": torch.randn(6, 6, generator=generator), "b": torch.randn(6, 6, generator=generator)}
    proj = _projection()
    whole = info_nce(F.normalize(proj(batch["a"]), dim=-1), F.normalize(proj(batch["b"]), dim=-1), 0.05)
    whole.backward()
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank_loss_and_grad, args=(_free_port(), batch, out), nprocs=2)
        (loss0, grad0), (loss1, grad1) = out[0], out[1]
    assert (loss0 + loss1) / 2 == pytest.approx(float(whole.detach()), rel=1e-5)
    torch.testing.assert_close(grad0, proj.weight.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grad1, proj.weight.grad, atol=1e-6, rtol=1e-5)
