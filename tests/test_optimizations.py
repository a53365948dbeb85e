"""Every speed option computes what the eager path computes (same weights, same noise), and the benchmark's
eager baseline (``benchmarks/reference_mae.py``) computes what anymae computes, which pins it as faithful.

Tolerances: fp32 options 1e-5 relative (they only reorder floating-point sums); bf16 autocast 2e-2 relative
on the loss (bf16 keeps 8 significand bits, about 3 decimal digits, and the loss is a mean of many terms) and
3e-2 on the predictions (measured below), with the mask exactly equal.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from anymae.core import load_model, pretrain
from anymae.core.build.models import build_model
from anymae.core.config import ConfigError, resolve_config, resolve_model_config
from anymae.core.train.optim import param_groups_weight_decay
from anymae.core.weights.loading import load_state_dict_checked
from anymae.modalities.image.interop import from_official_mae

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` is a folder of scripts
from benchmarks.reference_mae import ReferenceMAE, reference_optimizer, reference_step

SMALL = {
    "tokenizer": {"img_size": 32, "patch_size": 8, "in_chans": 3},
    "embed_dim": 64,
    "depth": 2,
    "num_heads": 4,
    "decoder_embed_dim": 32,
    "decoder_depth": 2,
    "decoder_num_heads": 4,
}


def _perturb_(module: nn.Module) -> None:
    """Noise on every trained parameter, so that zero biases and unit LayerNorms hide nothing."""
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))


def _reference_and_anymae(*, norm_pix_loss: bool, **options):
    torch.manual_seed(0)
    ref = ReferenceMAE(
        img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, decoder_embed_dim=32, decoder_depth=2,
        decoder_num_heads=4, norm_pix_loss=norm_pix_loss,
    )  # fmt: skip
    _perturb_(ref)
    raw, state, _ = from_official_mae(ref.state_dict(), num_heads=4, norm_pix_loss=norm_pix_loss)
    model = build_model(resolve_model_config({**raw, "decoder_num_heads": 4, **options}))
    load_state_dict_checked(model, state, source="reference", strict=True)
    return ref, model


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_reference_baseline_computes_anymaes_loss_pred_and_gradients(norm_pix_loss):
    ref, model = _reference_and_anymae(norm_pix_loss=norm_pix_loss)
    x, noise = torch.randn(3, 3, 32, 32), torch.rand(3, 16)
    loss_ref, pred_ref, mask_ref = ref(x, 0.75, noise)
    loss, pred, mask = model(x, noise=noise)
    assert torch.equal(mask, mask_ref)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(pred, pred_ref, rtol=1e-5, atol=1e-5)
    loss_ref.backward()
    loss.backward()
    torch.testing.assert_close(model.decoder.pred.weight.grad, ref.decoder_pred.weight.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(model.tokenizer.proj.weight.grad, ref.patch_embed.proj.weight.grad, rtol=1e-4, atol=1e-6)


def test_reference_baseline_is_the_unoptimized_path():
    ref = ReferenceMAE(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16)
    assert not any(getattr(m, "fused_attn", False) for m in ref.modules())  # explicit softmax(q k^T) v
    optimizer = reference_optimizer(ref)
    assert optimizer.defaults["foreach"] is False and not optimizer.defaults["fused"]
    loss = reference_step(ref, optimizer, torch.randn(2, 3, 32, 32))
    assert torch.isfinite(loss) and all(p.grad is None for p in ref.parameters())


def _perturbed_model(options: dict) -> nn.Module:
    """The SMALL model with ``options["model"]``, the same perturbed weights for every option."""
    torch.manual_seed(0)
    model = build_model(resolve_model_config({**SMALL, **options.get("model", {})}))
    _perturb_(model)
    return model


def _step_results(options: dict, *, steps: int = 2, bf16: bool = False) -> tuple[list[float], dict, dict]:
    """``steps`` AdamW steps of anymae with ``options`` from fixed weights, inputs and noise ->
    (losses, first-step gradients, final weights)."""
    model = _perturbed_model(options)
    optimizer = torch.optim.AdamW(
        param_groups_weight_decay(model, 0.05), lr=1e-3, betas=(0.9, 0.95), fused=options.get("fused") or None
    )
    generator = torch.Generator().manual_seed(1)
    losses, grads = [], {}
    for _ in range(steps):
        x, noise = torch.randn(4, 3, 32, 32, generator=generator), torch.rand(4, 16, generator=generator)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _, _ = model(x, noise=noise)
        loss.backward()
        grads = grads or {k: p.grad.clone() for k, p in model.named_parameters()}
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses, grads, {k: v.detach().clone() for k, v in model.state_dict().items()}


EAGER = {"model": {"fused_attn": False, "pred_masked_only": False}}


@pytest.mark.parametrize(
    "options",
    [
        {"model": {"fused_attn": True, "pred_masked_only": False}},
        {"model": {"fused_attn": False, "pred_masked_only": True}},
        {"model": {"fused_attn": True, "pred_masked_only": True}, "fused": True},
    ],
    ids=["fused_attn", "pred_masked_only", "all_fp32_options"],
)
def test_fp32_model_options_give_the_eager_losses_and_gradients(options):
    losses_eager, grads_eager, _ = _step_results(EAGER)
    losses, grads, _ = _step_results(options)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(losses_eager), rtol=1e-5, atol=0)
    for key, value in grads_eager.items():
        # The k part of the qkv bias gets a zero gradient in exact arithmetic (softmax ignores a constant
        # shift), so only rounding noise is compared there: atol, not rtol.
        torch.testing.assert_close(grads[key], value, rtol=1e-4, atol=1e-6, msg=key)


def test_fused_adamw_updates_like_the_for_loop_adamw():
    # The same gradients (same model path): only the optimizer kernel differs.
    losses_eager, _, weights_eager = _step_results(EAGER, steps=3)
    losses, _, weights = _step_results({**EAGER, "fused": True}, steps=3)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(losses_eager), rtol=1e-5, atol=0)
    for key, value in weights_eager.items():
        if key.endswith("attn.qkv.bias"):
            # Adam rescales the k bias's rounding-noise gradient (exactly 0 in exact arithmetic: softmax
            # ignores a constant shift) to full-size steps; that third of the bias never affects the loss.
            d = value.shape[0] // 3
            keep = torch.cat([torch.arange(d), torch.arange(2 * d, 3 * d)])  # the q and v thirds
            value, weights[key] = value[keep], weights[key][keep]
        torch.testing.assert_close(weights[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_bf16_autocast_gives_fp32s_mask_exactly_and_its_loss_and_predictions_within_bf16_precision():
    options = {"model": {"fused_attn": True, "pred_masked_only": True}, "fused": True}
    eager, fast = _perturbed_model(EAGER), _perturbed_model(options)
    generator = torch.Generator().manual_seed(1)
    x, noise = torch.randn(4, 3, 32, 32, generator=generator), torch.rand(4, 16, generator=generator)
    with torch.no_grad():
        loss_fp32, pred_fp32, mask_fp32 = eager(x, noise=noise)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, pred, mask = fast(x, noise=noise)
    assert torch.equal(mask, mask_fp32)  # the mask comes from the noise alone, never from bf16 arithmetic
    assert abs(loss.item() - loss_fp32.item()) <= 2e-2 * abs(loss_fp32.item())
    removed = mask.bool()  # pred_masked_only predicts the removed patches only
    assert pred.dtype == torch.bfloat16
    # bf16 keeps 8 significant bits (relative 2**-8 = 3.9e-3 per rounding); through 2 + 2 blocks the removed
    # patches' predictions (values up to 2.7) measured |bf16 - fp32| <= 0.016 * (1 + |fp32|), max 0.019. The
    # loss alone cannot tell: attention scaled by 1/d instead of 1/sqrt(d) moves it 1.3%, the predictions 1.2.
    torch.testing.assert_close(pred[removed].float(), pred_fp32[removed], rtol=3e-2, atol=3e-2)


def _without_k_bias(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the k third of every qkv bias: its gradient is 0 in exact arithmetic (softmax ignores a constant
    shift), and Adam rescales the rounding noise there to full-size steps that never affect the loss."""
    out = dict(weights)
    for key, value in weights.items():
        if key.endswith("attn.qkv.bias"):
            d = value.shape[0] // 3
            out[key] = torch.cat([value[:d], value[2 * d :]])  # the q and v thirds
    return out


def test_engine_options_give_the_eager_runs_losses_and_weights(tiny_config_dict):
    """``optim.fused``, ``optim.step_in_backward``, block checkpointing and ``pred_masked_only`` through
    ``anymae pretrain`` itself: 2 steps (8 images, batch 4) with no warm-up, so neither runs at lr 0 (cosine:
    lr, then lr / 2), compared on the final weights, which hold the last update that no reported loss sees."""

    def run(**sections) -> tuple[float, dict[str, torch.Tensor]]:
        raw = copy.deepcopy(tiny_config_dict)
        raw["model"]["fused_attn"] = False
        raw["optim"]["warmup_epochs"] = 0
        for section, values in sections.items():
            raw[section].update(values)
        raw["train"].update(epochs=1, heldout_batches=1, figure_samples=0)
        result = pretrain(resolve_config(raw), progress=False)
        return result.train_loss, _without_k_bias(load_model(result.checkpoint).state_dict())

    def assert_weights_close(weights, expected, *, rtol, atol):
        assert weights.keys() == expected.keys()
        for key, value in expected.items():
            torch.testing.assert_close(weights[key], value, rtol=rtol, atol=atol, msg=key)

    eager, eager_weights = run()
    start = _without_k_bias(build_model(resolve_model_config(tiny_config_dict["model"])).state_dict())
    moved = [k for k in start if k in eager_weights and not torch.equal(start[k], eager_weights[k])]
    assert len(moved) > len(start) // 2  # the eager run itself trained (random init differs, so most keys move)

    fast, fast_weights = run(model={"fused_attn": True, "pred_masked_only": True}, optim={"fused": True})
    assert fast == pytest.approx(eager, rel=1e-5)
    # Adam's first steps move each weight by about lr * sign(gradient), so a gradient entry of rounding-noise
    # size can move by up to lr (1e-3): measured at most 6.4e-6 here; a skipped update is off by ~1e-3.
    assert_weights_close(fast_weights, eager_weights, rtol=1e-5, atol=2e-5)
    recomputed, recomputed_weights = run(train={"checkpoint_decoder_blocks": 1})
    assert recomputed == pytest.approx(eager, rel=1e-6)
    assert_weights_close(recomputed_weights, eager_weights, rtol=0, atol=0)
    lean, lean_weights = run(
        optim={"step_in_backward": True}, train={"checkpoint_encoder_blocks": 2, "checkpoint_decoder_blocks": 1}
    )
    assert lean == pytest.approx(eager, rel=1e-6)
    assert_weights_close(lean_weights, eager_weights, rtol=0, atol=0)


def test_step_in_backward_gives_adamws_weights_and_state_exactly():
    from anymae.core.train.optim import step_in_backward

    cfg = resolve_model_config(
        {"tokenizer": {"img_size": 32, "patch_size": 8}, "embed_dim": 32, "depth": 2, "num_heads": 2,
         "decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2}
    )  # fmt: skip
    torch.manual_seed(0)
    plain, lean = build_model(cfg), build_model(cfg)
    lean.load_state_dict(plain.state_dict())
    optimizers = [
        torch.optim.AdamW(param_groups_weight_decay(m, 0.05), lr=1e-3, betas=(0.9, 0.95)) for m in (plain, lean)
    ]
    step_in_backward(lean, optimizers[1])
    for step in range(3):
        for group in (*optimizers[0].param_groups, *optimizers[1].param_groups):
            group["lr"] = 1e-3 * (step + 1)  # the trainer's per-step lr reaches the hooked updates
        x, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
        plain(x, noise=noise)[0].backward()
        optimizers[0].step()
        optimizers[0].zero_grad(set_to_none=True)
        lean(x, noise=noise)[0].backward()  # updates inside backward
        assert all(p.grad is None for p in lean.parameters())  # no gradient outlives its update
    for (name, a), b in zip(plain.named_parameters(), lean.parameters(), strict=True):
        assert torch.equal(a, b), name
    ours, theirs = optimizers[1].state_dict(), optimizers[0].state_dict()
    assert ours["param_groups"] == theirs["param_groups"] and ours["state"].keys() == theirs["state"].keys()
    for key, value in theirs["state"].items():
        assert all(torch.equal(value[k], ours["state"][key][k]) for k in value)


def test_step_in_backward_refuses_accumulation_naming_the_keys(tiny_config_dict):
    raw = copy.deepcopy(tiny_config_dict)
    raw["optim"]["step_in_backward"] = True
    raw["train"]["accum_iter"] = 2
    with pytest.raises(ConfigError, match=r"optim.step_in_backward cannot be used with train.accum_iter=2"):
        pretrain(resolve_config(raw), progress=False)


def test_checkpointed_decoder_blocks_give_the_same_loss_and_gradients():
    from anymae.core.build.models import checkpoint_decoder_blocks

    cfg = resolve_model_config(
        {"tokenizer": {"img_size": 32, "patch_size": 8}, "embed_dim": 32, "depth": 1, "num_heads": 2,
         "decoder_embed_dim": 16, "decoder_depth": 2, "decoder_num_heads": 2}
    )  # fmt: skip
    torch.manual_seed(0)
    plain, recomputed = build_model(cfg), build_model(cfg)
    recomputed.load_state_dict(plain.state_dict())
    checkpoint_decoder_blocks(recomputed, 2)
    assert list(recomputed.state_dict()) == list(plain.state_dict())  # checkpoints stay interchangeable
    x, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    loss_a, loss_b = plain(x, noise=noise)[0], recomputed(x, noise=noise)[0]
    loss_a.backward()
    loss_b.backward()
    assert torch.equal(loss_a, loss_b)
    for (name, a), b in zip(plain.named_parameters(), recomputed.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad), name


# torch.compile on a 2-core CPU: inductor's cold C++ build of even the tiny model took 279 s (measured
# 2026-11-23), so this runs only on request: `python -m pytest -m slow` (or ANYMAE_SLOW_TESTS=1; tests/conftest.py).
@pytest.mark.slow
def test_compiled_blocks_give_the_eager_loss():
    losses_eager, _, _ = _step_results(EAGER, steps=1)
    torch.manual_seed(0)
    from anymae.core.build.models import compile_blocks

    cfg = resolve_model_config({**SMALL, "fused_attn": False})
    model = build_model(cfg)
    _perturb_(model)
    compile_blocks(model)
    generator = torch.Generator().manual_seed(1)
    x, noise = torch.randn(4, 3, 32, 32, generator=generator), torch.rand(4, 16, generator=generator)
    assert model(x, noise=noise)[0].item() == pytest.approx(losses_eager[0], rel=1e-5)
