"""The extension points besides modalities and masking: reconstruction targets, decoders, and the model
options they drive (``cls_token``, ``pred_masked_only``, ``fused_attn``), plus ``anymae.testing``'s
hermetic registry fixture. Third-party pieces are registered through the hooks here, as a plugin would."""

from __future__ import annotations

import types

import pytest
import torch
from torch import Tensor, nn

import anymae.modalities.image
from anymae.core.build.models import build_model
from anymae.core.config import ConfigError, resolve_model_config
from anymae.core.model.loss import masked_mse
from anymae.core.model.masking import gather_tokens, sample_mask, shuffle_from_noise
from anymae.plugins import PluginError, get_registry, hookimpl
from anymae.testing import check_modality, hermetic_registry

TINY = {
    "modality": "image",
    "tokenizer": {"img_size": 16, "patch_size": 4, "in_chans": 3},
    "embed_dim": 16,
    "depth": 1,
    "num_heads": 2,
    "decoder_embed_dim": 8,
    "decoder_depth": 1,
    "decoder_num_heads": 2,
}


class ScaledTarget:
    """A toy third-party target: twice the patch values."""

    def __call__(self, patches: Tensor, *, tokenizer) -> Tensor:
        return 2 * patches

    def to_pixels(self, pred: Tensor, patches: Tensor, *, tokenizer) -> Tensor:
        return pred / 2


class PerTokenDecoder(nn.Module):
    """A toy third-party decoder: mask tokens + one Linear per token, no attention (ignores positions)."""

    def __init__(self, *, in_dim: int, out_dim: int, hidden: int, num_prefix: int) -> None:
        super().__init__()
        self.num_prefix = num_prefix
        self.mask_token = nn.Parameter(torch.zeros(1, 1, in_dim))
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(self, latent: Tensor, ids_restore: Tensor, select: Tensor | None = None) -> Tensor:
        body = latent[:, self.num_prefix :]
        fill = self.mask_token.expand(body.shape[0], ids_restore.shape[1] - body.shape[1], -1)
        x = gather_tokens(torch.cat([body, fill], dim=1), ids_restore)
        return self.mlp(x if select is None else gather_tokens(x, select))


def per_token_decoder(*, in_dim, embed_dim, depth, num_heads, mlp_ratio, qkv_bias, out_dim, pos_table, norm_layer,
                      grid, num_prefix, hidden: int = 32):  # fmt: skip
    return PerTokenDecoder(in_dim=in_dim, out_dim=out_dim, hidden=hidden, num_prefix=num_prefix)


class ExtrasPlugin:
    @hookimpl
    def anymae_register_targets(self, register):
        register("scaled", ScaledTarget())

    @hookimpl
    def anymae_register_decoders(self, register):
        register("per_token", per_token_decoder)


@pytest.fixture
def registry(anymae_registry):
    return anymae_registry(anymae.modalities.image, ("extras", ExtrasPlugin()))


def _model(registry, **overrides):
    torch.manual_seed(0)
    return build_model(resolve_model_config({**TINY, **overrides}, registry), registry=registry)


def test_the_fixture_makes_its_registry_the_process_wide_one(registry):
    assert get_registry() is registry
    assert set(registry.plugins) == {"builtin", "anymae.modalities.image", "extras"}
    assert registry.plugins["extras"].registers == ["target:scaled", "decoder:per_token"]


def test_builtin_targets_and_decoder_are_registered(registry):
    assert sorted(registry.targets) == ["norm_pix", "pixels", "scaled"]
    assert sorted(registry.decoders) == ["global", "per_token"]


def test_a_plugin_target_is_what_the_loss_regresses(registry):
    model = _model(registry, target="scaled").eval()
    x = torch.randn(2, 3, 16, 16)
    noise = torch.rand(2, 16)
    loss, pred, mask = model(x, noise=noise)
    expected = masked_mse(pred, 2 * model.tokenizer.patchify(x), mask)
    assert torch.allclose(loss, expected)
    assert torch.allclose(model.pred_to_pixels(x, pred), pred / 2)


def test_norm_pix_loss_is_the_official_spelling_of_the_norm_pix_target(registry):
    assert resolve_model_config({**TINY, "norm_pix_loss": True}, registry).target == "norm_pix"
    assert resolve_model_config({**TINY, "target": "norm_pix"}, registry).norm_pix_loss is True
    with pytest.raises(ConfigError, match="norm_pix_loss: true means target norm_pix, but target is 'scaled'"):
        resolve_model_config({**TINY, "norm_pix_loss": True, "target": "scaled"}, registry)


def test_norm_pix_to_pixels_inverts_the_target_with_the_true_patch_statistics(registry):
    model = _model(registry, target="norm_pix")
    x = torch.randn(2, 3, 16, 16)
    target = model.forward_target(x)
    assert torch.allclose(model.pred_to_pixels(x, target), model.tokenizer.patchify(x), atol=1e-5)


def test_unknown_target_and_decoder_names_are_config_errors_with_a_suggestion(registry):
    with pytest.raises(ConfigError, match=r"unknown target 'scaeld'.*did you mean 'scaled'"):
        resolve_model_config({**TINY, "target": "scaeld"}, registry)
    with pytest.raises(ConfigError, match=r"unknown decoder 'globl'.*did you mean 'global'"):
        resolve_model_config({**TINY, "decoder": "globl"}, registry)


def test_decoder_options_are_checked_against_the_builder_signature(registry):
    with pytest.raises(ConfigError, match=r"'model.decoder_options.hiden'; did you mean 'hidden'"):
        resolve_model_config({**TINY, "decoder": "per_token", "decoder_options": {"hiden": 8}}, registry)
    with pytest.raises(ConfigError, match=r"decoder_options.grid: set by the core"):
        resolve_model_config({**TINY, "decoder": "per_token", "decoder_options": {"grid": [2, 2]}}, registry)
    with pytest.raises(ConfigError, match="The decoder's options: none"):
        resolve_model_config({**TINY, "decoder_options": {"window": 4}}, registry)


def test_a_plugin_decoder_is_built_with_its_options_and_trains(registry):
    model = _model(registry, decoder="per_token", decoder_options={"hidden": 24})
    assert isinstance(model.decoder, PerTokenDecoder) and model.decoder.mlp[0].out_features == 24
    loss, pred, _ = model(torch.randn(2, 3, 16, 16))
    assert pred.shape == (2, 16, 48) and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_a_target_without_to_pixels_is_refused_naming_the_plugin():
    class Bad:
        @hookimpl
        def anymae_register_targets(self, register):
            register("bad", lambda patches, *, tokenizer: patches)

    with pytest.raises(PluginError, match=r"'bad'.*raised while registering.*no to_pixels"):
        hermetic_registry(("bad", Bad()))


@pytest.mark.parametrize("overrides", [{}, {"cls_token": False}, {"norm_pix_loss": True}])
def test_the_head_on_removed_tokens_only_gives_the_same_loss_and_gradients(registry, overrides):
    full = _model(registry, **overrides)
    masked_only = _model(registry, pred_masked_only=True, **overrides)
    masked_only.load_state_dict(full.state_dict())
    x, noise = torch.randn(3, 3, 16, 16), torch.rand(3, 16)
    loss_a, pred_a, mask_a = full(x, noise=noise)
    loss_b, pred_b, mask_b = masked_only(x, noise=noise)
    assert torch.equal(mask_a, mask_b)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-6, atol=1e-7)
    removed = mask_a.bool()
    torch.testing.assert_close(pred_b[removed], pred_a[removed])
    assert (pred_b[~removed] == 0).all()
    loss_a.backward()
    loss_b.backward()
    for (name, p_a), p_b in zip(full.named_parameters(), masked_only.parameters(), strict=True):
        torch.testing.assert_close(p_b.grad, p_a.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_without_a_cls_token_the_encoder_has_no_prefix(registry):
    model = _model(registry, cls_token=False).eval()
    assert model.encoder.cls_token is None and model.encoder.num_prefix == 0 and model.decoder.num_prefix == 0
    assert "encoder.cls_token" not in model.state_dict()
    x = torch.randn(2, 3, 16, 16)
    latent, _, _ = model.forward_encoder(x, mask_ratio=0.75)
    assert latent.shape == (2, 4, 16) and model.encode(x).shape == (2, 16, 16)
    # The visible tokens' features do not depend on where the removed ones were: no prefix token mixes in.
    tokens = model.tokenizer(x) + model.encoder.pos_embed
    keep = torch.tensor([[0, 5, 10, 15], [1, 2, 3, 4]])
    reference = model.encoder.norm(model.encoder.blocks[0](gather_tokens(tokens, keep)))
    torch.testing.assert_close(model.encoder(model.tokenizer(x), keep), reference)


def test_check_modality_accepts_model_options(registry):
    check_modality("image", tokenizer={"img_size": 16, "patch_size": 4}, model={"cls_token": False}, registry=registry)
    check_modality(
        "image",
        tokenizer={"img_size": 16, "patch_size": 4},
        model={"pred_masked_only": True, "target": "scaled", "decoder": "per_token"},
        registry=registry,
    )


def test_explicit_attention_matches_fused_attention(registry):
    fused = _model(registry).eval()
    explicit = _model(registry, fused_attn=False).eval()
    explicit.load_state_dict(fused.state_dict())
    assert not any(getattr(m, "fused_attn", False) for m in explicit.modules())
    x, noise = torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    torch.testing.assert_close(explicit(x, noise=noise)[0], fused(x, noise=noise)[0], rtol=1e-5, atol=1e-6)


def test_sample_mask_follows_the_strategy():
    def every_other(*, batch, grid, mask_ratio, device, generator=None):
        return torch.arange(16.0).remainder(2).expand(batch, -1), 8  # even tokens kept

    mask = sample_mask(every_other, batch=2, grid=(4, 4), mask_ratio=0.5, device=torch.device("cpu"))
    assert mask.dtype == torch.bool and mask[:, 1::2].all() and not mask[:, ::2].any()
    noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(3))
    expected = shuffle_from_noise(noise, 4)[2].bool()
    strategy = hermetic_registry().masking_strategy("random")
    drawn = sample_mask(
        strategy, batch=2, grid=(4, 4), mask_ratio=0.75, device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    assert torch.equal(drawn, expected)


def test_hermetic_registry_ignores_installed_plugins_and_env(monkeypatch):
    monkeypatch.setenv("ANYMAE_DISABLE_PLUGINS", "builtin")
    registry = hermetic_registry(types.SimpleNamespace(), builtins=True)
    assert "image" not in registry.modalities and "random" in registry.masking


class ToyFormat:
    """A third-party checkpoint format: ``{"toy_weights": state, "toy_config": model section}``."""

    def detect(self, path, payload):
        return isinstance(payload, dict) and "toy_weights" in payload

    def load(self, path, payload, *, strict, registry):
        model = build_model(resolve_model_config(payload["toy_config"], registry), registry=registry)
        model.load_state_dict(payload["toy_weights"], strict=strict)
        return model


class ToyCommand:
    help = "say how many modalities are registered"

    def add_arguments(self, parser):
        parser.add_argument("--shout", action="store_true")

    def run(self, args):
        print(("MODALITIES" if args.shout else "modalities") + f": {len(get_registry().modalities)}")
        return 0


class FormatAndCommandPlugin:
    @hookimpl
    def anymae_register_checkpoint_formats(self, register):
        register("toy", ToyFormat())

    @hookimpl
    def anymae_register_commands(self, register):
        register("toy-count", ToyCommand())


def test_load_model_asks_plugin_checkpoint_formats(anymae_registry, tmp_path):
    from anymae.core import load_model

    registry = anymae_registry(anymae.modalities.image, ("toy", FormatAndCommandPlugin()))
    original = _model(registry).eval()
    torch.save({"toy_weights": original.state_dict(), "toy_config": TINY}, tmp_path / "toy.bin")
    loaded = load_model(tmp_path / "toy.bin", registry=registry).eval()
    x, noise = torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    assert torch.equal(loaded(x, noise=noise)[0], original(x, noise=noise)[0])


def test_a_plugin_command_is_an_anymae_subcommand(anymae_registry, capsys):
    from anymae.core.cli import main

    anymae_registry(anymae.modalities.image, ("toy", FormatAndCommandPlugin()))
    assert main(["toy-count", "--shout"]) == 0
    assert capsys.readouterr().out.strip() == "MODALITIES: 1"


def test_a_checkpoint_format_or_command_without_its_methods_is_refused():
    class Bad:
        @hookimpl
        def anymae_register_commands(self, register):
            register("half", types.SimpleNamespace(help="x", run=lambda args: 0))

    with pytest.raises(PluginError, match=r"command 'half' has no add_arguments method"):
        hermetic_registry(("bad", Bad()))


def ordered_masking(*, batch, grid, mask_ratio, device, generator=None, from_end: bool = False):
    """A toy strategy with an option: keeps the first tokens in grid order (the last with ``from_end``)."""
    num_tokens = int(torch.tensor(grid).prod())
    noise = torch.arange(num_tokens, dtype=torch.float32, device=device).expand(batch, -1)
    return (-noise if from_end else noise), int(num_tokens * (1 - mask_ratio))


class OrderedMaskingPlugin:
    @hookimpl
    def anymae_register_masking(self, register):
        register("ordered", ordered_masking)


def test_masking_options_reach_the_strategy_and_are_checked(anymae_registry):
    registry = anymae_registry(anymae.modalities.image, ("ordered", OrderedMaskingPlugin()))
    for from_end, kept in ((False, slice(0, 4)), (True, slice(12, 16))):
        model = _model(registry, masking="ordered", masking_options={"from_end": from_end}, mask_ratio=0.75)
        mask = sample_mask(model.masking, batch=1, grid=model.tokenizer.grid, mask_ratio=0.75, device="cpu")
        expected = torch.ones(1, 16, dtype=torch.bool)
        expected[0, kept] = False
        assert torch.equal(mask, expected)
    with pytest.raises(ConfigError, match=r"'model.masking_options.from_nd'; did you mean 'from_end'"):
        resolve_model_config({**TINY, "masking": "ordered", "masking_options": {"from_nd": True}}, registry)
    with pytest.raises(ConfigError, match=r"masking_options.mask_ratio: set by the core"):
        resolve_model_config({**TINY, "masking": "ordered", "masking_options": {"mask_ratio": 0.5}}, registry)
