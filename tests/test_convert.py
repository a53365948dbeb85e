"""``anymae convert``: official MAE, timm ViT and Hugging Face ViTMAE checkpoints in, anymae / official / timm out.

References are independent of the converter: timm's ``VisionTransformer`` and transformers' ``ViTMAEForPreTraining``
built from small configs with random weights, official-layout state dicts written here by renaming keys by hand
(with the sin-cos tables computed in numpy), and the linear probe's BatchNorm + Linear computed by hand.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import make_image, write_image
from official_layout import official_pos_embed, to_official
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import VisionTransformer

from anymae.core import CheckpointError, load_model
from anymae.core.build.classifier import build_classifier
from anymae.core.build.models import build_model
from anymae.core.cli import main
from anymae.core.config import resolve_model_config
from anymae.core.evaluate.classification import load_classifier
from anymae.core.io.checkpoint import write_checkpoint
from anymae.core.train.task_classify import CLASSIFIER_FORMAT
from anymae.core.weights.convert import convert
from anymae.plugins import load_registry

SMALL = {  # the official decoder has 16 heads, which readers of the official layout assume
    "tokenizer": {"img_size": 32, "patch_size": 8},
    "embed_dim": 64,
    "depth": 2,
    "num_heads": 4,
    "decoder_embed_dim": 32,
    "decoder_depth": 1,
    "decoder_num_heads": 16,
    "norm_pix_loss": True,
}
TIMM_SMALL = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4}


@pytest.fixture(scope="module")
def registry():
    return load_registry()


def _perturb_(module: torch.nn.Module, seed: int) -> None:
    """Noise on every parameter, so that zero biases and unit LayerNorms cannot hide a swapped key."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.1 * torch.randn_like(param))


@pytest.fixture(scope="module")
def mae(registry):
    model = build_model(resolve_model_config(SMALL, registry), registry=registry).eval()
    _perturb_(model, 0)
    return model


@pytest.fixture(scope="module")
def mae_file(mae, tmp_path_factory):
    path = tmp_path_factory.mktemp("mae") / "mae.pt"
    return write_checkpoint({"format": "anymae", "config": mae.config, "model": mae.state_dict()}, path)


def _classifier(mae, registry, *, global_pool: bool, head_bn: bool):
    model = build_classifier(mae, num_classes=5, global_pool=global_pool, head_bn=head_bn, registry=registry)
    _perturb_(model, 1)
    if head_bn:  # running statistics far from (0, 1), so that a missing BatchNorm shows
        model.head_bn.running_mean.uniform_(-1, 1)
        model.head_bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _save_classifier(model, path):
    payload = {"format": CLASSIFIER_FORMAT, "config": model.config, "model": model.state_dict()}
    return write_checkpoint(payload, path)


def _images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(7))


def _noise() -> torch.Tensor:
    return torch.rand(2, 16, generator=torch.Generator().manual_seed(8))


def _timm(**kwargs) -> VisionTransformer:
    return VisionTransformer(**TIMM_SMALL, **kwargs).eval()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


# --- timm ---------------------------------------------------------------------------------------------------
def test_exported_encoder_loads_strictly_into_timm_and_gives_the_same_features(mae, mae_file, registry, tmp_path):
    out = tmp_path / "vit.safetensors"
    result = convert(mae_file, out, to="timm", registry=registry)
    spec = json.loads((tmp_path / "vit.timm.json").read_text())
    assert spec["kwargs"] == {
        **TIMM_SMALL,
        "in_chans": 3,
        "mlp_ratio": 4.0,
        "qkv_bias": True,
        "num_classes": 0,
        "global_pool": "token",
        "fc_norm": False,
        "class_token": True,
    }
    assert spec["norm_eps"] == 1e-6
    assert any("decoder" in note for note in result.notes)  # the decoder is left out by name, not silently
    vit = _timm(num_classes=0, global_pool="token")
    vit.load_state_dict(load_file(out), strict=True)
    with torch.no_grad():
        theirs, ours = vit.forward_features(_images()), mae.encode(_images())  # (N, 1 + L, D), every token
    assert theirs.shape == (2, 17, 64)
    assert _max_diff(theirs, ours) <= 1e-5


def test_timm_constructor_in_the_json_rebuilds_the_model(mae_file, registry, tmp_path):
    convert(mae_file, tmp_path / "vit.pth", to="timm", registry=registry)
    python = json.loads((tmp_path / "vit.timm.json").read_text())["python"]
    namespace: dict = {}
    exec(compile(python.replace("'vit.pth'", repr(str(tmp_path / "vit.pth"))), "timm.json", "exec"), namespace)
    assert isinstance(namespace["model"], VisionTransformer)


def test_fine_tuned_classifier_exports_to_timm_avg_pool_fc_norm_with_the_same_logits(mae, registry, tmp_path):
    classifier = _classifier(mae, registry, global_pool=True, head_bn=False)
    src = _save_classifier(classifier, tmp_path / "checkpoint-best.pt")
    out = tmp_path / "vit_cls.pth"
    convert(src, out, to="timm", registry=registry)
    vit = _timm(num_classes=5, global_pool="avg", fc_norm=True)
    vit.load_state_dict(torch.load(out, weights_only=True), strict=True)
    with torch.no_grad():
        assert _max_diff(vit(_images()), classifier(_images())) <= 1e-5


def test_linear_probe_exports_to_timm_with_its_batch_norm_folded_into_the_head(mae, registry, tmp_path):
    classifier = _classifier(mae, registry, global_pool=False, head_bn=True)
    src = _save_classifier(classifier, tmp_path / "checkpoint-best.pt")
    convert(src, tmp_path / "probe.safetensors", to="timm", registry=registry)
    vit = _timm(num_classes=5, global_pool="token")
    vit.load_state_dict(load_file(tmp_path / "probe.safetensors"), strict=True)
    bn, head = classifier.head_bn, classifier.head
    with torch.no_grad():
        cls = vit.forward_head(vit.forward_features(_images()), pre_logits=True)  # (N, D): CLS after norm
        expected = head((cls - bn.running_mean) / torch.sqrt(bn.running_var + 1e-6))  # BatchNorm by hand
        assert _max_diff(vit(_images()), expected) <= 1e-5
        assert _max_diff(vit(_images()), classifier(_images())) <= 1e-5


def test_timm_export_converts_back_to_the_same_anymae_model(mae, mae_file, registry, tmp_path):
    convert(mae_file, tmp_path / "vit.safetensors", to="timm", registry=registry)
    convert(tmp_path / "vit.safetensors", tmp_path / "back.pt", registry=registry)  # heads from vit.timm.json
    back = load_model(tmp_path / "back.pt", registry=registry).eval()
    assert back.decoder is None
    with torch.no_grad():
        assert torch.equal(back.encode(_images()), mae.encode(_images()))


def test_timm_state_dict_without_the_cls_position_row_imports(registry, tmp_path):
    # timm's no_embed_class=True keeps no position for the CLS token: the official zero row, made implicit.
    vit = _timm(num_classes=0, no_embed_class=True)
    with torch.no_grad():
        vit.pos_embed.copy_(official_pos_embed(4, 64)[:, 1:])
    save_file(vit.state_dict(), tmp_path / "vit_mae.safetensors")  # Hub layout: no 'model' wrapper, no metadata
    convert(tmp_path / "vit_mae.safetensors", tmp_path / "mae.pt", num_heads=4, registry=registry)
    model = load_model(tmp_path / "mae.pt", registry=registry).eval()
    with torch.no_grad():
        assert _max_diff(model.encode(_images()), vit.forward_features(_images())) <= 1e-5


# --- official MAE -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_decoder", [False, True], ids=["encoder_only", "full"])
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_official_checkpoint_converts_to_anymae_with_the_same_outputs(mae, registry, tmp_path, with_decoder, suffix):
    src = tmp_path / "mae_pretrain_vit_x.pth"
    torch.save({"model": to_official(mae, with_decoder=with_decoder)}, src)
    convert(src, tmp_path / f"converted{suffix}", num_heads=4, registry=registry)
    model = load_model(tmp_path / f"converted{suffix}", registry=registry).eval()
    assert model.config["model"]["target"] == "norm_pix"
    with torch.no_grad():
        assert torch.equal(model.encode(_images()), mae.encode(_images()))
        if with_decoder:
            loss, pred, mask = model(_images(), noise=_noise())
            ref_loss, ref_pred, ref_mask = mae(_images(), noise=_noise())
            assert torch.equal(mask, ref_mask) and torch.equal(pred, ref_pred) and torch.equal(loss, ref_loss)
        else:
            assert model.decoder is None


@pytest.mark.parametrize("with_decoder", [False, True], ids=["encoder_only", "full"])
def test_anymae_converts_to_the_official_layout_key_for_key(mae, registry, tmp_path, with_decoder):
    src = tmp_path / "mae.pt"
    state = mae.state_dict()
    if not with_decoder:
        state = {k: v for k, v in state.items() if not k.startswith("decoder.")}
    config = {**mae.config, "with_decoder": with_decoder}
    write_checkpoint({"format": "anymae", "config": config, "model": state}, src)
    result = convert(src, tmp_path / "official.pth", to="official", registry=registry)
    assert any("--num-heads 4" in note for note in result.notes)  # heads are not in the official layout
    written = torch.load(tmp_path / "official.pth", weights_only=True)
    assert set(written) == {"model"}
    expected = to_official(mae, with_decoder=with_decoder)
    assert set(written["model"]) == set(expected)
    for key, value in expected.items():
        assert _max_diff(written["model"][key], value) <= 1e-6, key


def test_official_fine_tuned_layout_imports_and_evaluates_like_timm(registry, tmp_path):
    # The official fine-tuned model is timm's VisionTransformer with global_pool='avg' (fc_norm, no norm); its
    # position table is trained, so it is kept as a learned parameter.
    vit = _timm(num_classes=5, global_pool="avg", fc_norm=True)
    _perturb_(vit, 2)
    src = tmp_path / "mae_finetuned_vit_x.pth"
    torch.save({"model": vit.state_dict()}, src)
    assert not any(k.startswith("norm.") for k in vit.state_dict())
    convert(src, tmp_path / "classifier.pt", num_heads=4, registry=registry)
    model = load_classifier(tmp_path / "classifier.pt", registry=registry)  # what `anymae eval` calls
    assert model.config["classifier"]["learned_pos_embed"] is True
    with torch.no_grad():
        assert _max_diff(model(_images()), vit(_images())) <= 1e-5
    convert(tmp_path / "classifier.pt", tmp_path / "again.pth", to="official", registry=registry)
    written = torch.load(tmp_path / "again.pth", weights_only=True)["model"]
    assert set(written) == set(vit.state_dict())
    assert all(torch.equal(written[k], v) for k, v in vit.state_dict().items())


def test_official_linear_probe_layout_imports_with_its_batch_norm(mae, registry, tmp_path):
    classifier = _classifier(mae, registry, global_pool=False, head_bn=True)
    state = to_official(classifier, with_decoder=False)
    state["head.1.weight"], state["head.1.bias"] = state.pop("head.weight"), state.pop("head.bias")
    src = tmp_path / "linprobe.pth"
    torch.save({"model": state}, src)
    convert(src, tmp_path / "probe.safetensors", num_heads=4, registry=registry)
    model = load_classifier(tmp_path / "probe.safetensors", registry=registry)
    assert model.config["classifier"]["learned_pos_embed"] is False  # the fixed sin-cos table
    with torch.no_grad():
        assert torch.equal(model(_images()), classifier(_images()))


def test_anymae_eval_runs_on_an_imported_fine_tuned_checkpoint_with_timm_accuracy(registry, tmp_path, capsys):
    vit = _timm(num_classes=2, global_pool="avg", fc_norm=True)
    _perturb_(vit, 3)
    torch.save({"model": vit.state_dict()}, tmp_path / "mae_finetuned_vit_x.pth")
    for i in range(6):
        write_image(tmp_path / "data" / "train" / ("ab"[i % 2]) / f"{i}.png", make_image(i))
    out = tmp_path / "classifier.pt"
    assert main(["convert", str(tmp_path / "mae_finetuned_vit_x.pth"), str(out), "--num-heads", "4"]) == 0
    argv = ["eval", str(out), "--data-root", str(tmp_path / "data"), "--split", "train", "--device", "cpu"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    modality = registry.modality("image")  # the eval inputs, run through timm's model
    data = modality.data_config(root=str(tmp_path / "data"))
    tokenizer = modality.tokenizer_config(img_size=32, patch_size=8)
    dataset = modality.build_labelled_dataset(data, tokenizer, split="train", augment=None)
    x = torch.stack([dataset[i][0] for i in range(6)])  # (6, 3, 32, 32)
    y = torch.tensor([dataset[i][1] for i in range(6)])
    with torch.no_grad():
        logits = vit(x)  # (6, 2)
    top1 = 100 * (logits.argmax(dim=1) == y).float().mean().item()
    assert f"top-1 {top1:.2f}%" in printed
    loss = float(re.search(r"loss (\d+\.\d+)", printed).group(1))
    assert abs(loss - torch.nn.functional.cross_entropy(logits, y).item()) <= 2e-4


# --- Hugging Face ViTMAE ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    import transformers  # the test extra: a missing install fails here instead of skipping

    config = transformers.ViTMAEConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        image_size=32,
        patch_size=8,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=16,
        decoder_intermediate_size=128,
        norm_pix_loss=True,
    )
    torch.manual_seed(0)
    hf = transformers.ViTMAEForPreTraining(config).eval()
    _perturb_(hf, 4)
    with torch.no_grad():  # released ViTMAE folders hold the official sin-cos tables
        hf.vit.embeddings.position_embeddings.copy_(official_pos_embed(4, 64))
        hf.decoder.decoder_pos_embed.copy_(official_pos_embed(4, 32))
    folder = tmp_path_factory.mktemp("hf")
    hf.save_pretrained(folder)
    return folder, hf


def _assert_matches_hf(model, hf, *, tol: float) -> None:
    with torch.no_grad():
        out = hf(pixel_values=_images(), noise=_noise())
        loss, pred, mask = model(_images(), noise=_noise())
    assert torch.equal(mask, out.mask)
    assert _max_diff(pred, out.logits) <= tol
    assert abs(loss.item() - out.loss.item()) <= tol


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_hugging_face_folder_converts_to_anymae_with_the_same_outputs(hf_folder, registry, tmp_path, suffix):
    folder, hf = hf_folder
    convert(folder, tmp_path / f"mae{suffix}", registry=registry)
    model = load_model(tmp_path / f"mae{suffix}", registry=registry).eval()
    assert model.config["model"]["norm_eps"] == 1e-12  # carried from config.json
    _assert_matches_hf(model, hf, tol=1e-5)


def test_hugging_face_folder_converts_to_official_and_timm(hf_folder, registry, tmp_path):
    folder, hf = hf_folder
    result = convert(folder, tmp_path / "mae_pretrain_vit_x.pth", to="official", registry=registry)
    assert any("eps is 1e-12" in note for note in result.notes)  # the official layout assumes 1e-6
    model = load_model(tmp_path / "mae_pretrain_vit_x.pth", num_heads=4, registry=registry).eval()
    _assert_matches_hf(model, hf, tol=1e-4)  # eps 1e-6 instead of 1e-12: LayerNorm inputs are O(1)
    result = convert(folder, tmp_path / "vit.safetensors", to="timm", registry=registry)
    assert "eps=1e-12" in result.timm["python"]
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-5


# --- bad input ----------------------------------------------------------------------------------------------
def test_wrong_shape_key_is_named_with_both_shapes(mae, registry, tmp_path):
    state = to_official(mae)
    state["blocks.1.mlp.fc1.bias"] = torch.zeros(100)
    torch.save({"model": state}, tmp_path / "mae_pretrain_vit_x.pth")
    with pytest.raises(
        CheckpointError, match=r"encoder\.blocks\.1\.mlp\.fc1\.bias: checkpoint \(100,\) vs model \(256,\)"
    ):
        convert(tmp_path / "mae_pretrain_vit_x.pth", tmp_path / "out.pt", num_heads=4, registry=registry)
    assert not (tmp_path / "out.pt").exists()


def test_unexpected_key_is_named_by_the_command(mae, tmp_path, capsys):
    state = to_official(mae)
    state["blocks.0.attn.gamma"] = torch.ones(64)
    torch.save({"model": state}, tmp_path / "mae_pretrain_vit_x.pth")
    code = main(["convert", str(tmp_path / "mae_pretrain_vit_x.pth"), str(tmp_path / "out.pt"), "--num-heads", "4"])
    assert code == 1
    assert "encoder.blocks.0.attn.gamma" in capsys.readouterr().err
    assert not (tmp_path / "out.pt").exists()


def test_unknown_width_without_num_heads_asks_for_it(registry, tmp_path, capsys):
    vit = _timm(num_classes=0)
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    assert main(["convert", str(tmp_path / "vit.pth"), str(tmp_path / "out.pt")]) == 1
    assert "--num-heads" in capsys.readouterr().err


def test_video_model_cannot_take_the_image_layouts_and_the_error_says_why(registry, tmp_path):
    raw = {"modality": "video", "embed_dim": 64, "depth": 1, "num_heads": 4, "decoder_depth": 1}
    model = build_model(resolve_model_config(raw, registry), registry=registry)
    src = write_checkpoint({"format": "anymae", "config": model.config, "model": model.state_dict()}, tmp_path / "v.pt")
    for to, reason in (("official", r"VideoMAE's layout .* model.cls_token=True"), ("timm", "Conv3d")):
        with pytest.raises(CheckpointError, match=rf"{reason}.*--to anymae"):
            convert(src, tmp_path / f"{to}.pth", to=to, registry=registry)
        assert not (tmp_path / f"{to}.pth").exists()


def test_format_and_file_name_must_agree(mae_file, tmp_path, capsys):
    assert main(["convert", str(mae_file), str(tmp_path / "x.pth"), "--format", "safetensors"]) == 1
    assert "ending in .safetensors" in capsys.readouterr().err


def test_source_that_would_run_code_is_refused(tmp_path, capsys):
    class RunsCode:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"model": RunsCode()}, tmp_path / "evil.pth")
    assert main(["convert", str(tmp_path / "evil.pth"), str(tmp_path / "out.pt")]) == 1
    captured = capsys.readouterr()
    assert "could run code" in captured.err and "unpickled!" not in captured.out


def test_classifier_format_constant_matches_finetune():
    from anymae.core.weights import loading

    assert loading.CLASSIFIER_FORMAT == CLASSIFIER_FORMAT


def test_an_audio_model_exports_to_audiomae_s_layout_and_reads_back_the_same(registry, tmp_path):
    """AudioMAE keeps the official key names: an anymae audio MAE with the local decoder goes --to official, the
    AudioMAE reader takes it back (encoder heads from --num-heads, the local decoder's from its tensors) and the
    outputs are identical; the decoder table gets the CLS row AudioMAE stores."""
    torch.manual_seed(0)
    model = build_model(
        resolve_model_config(
            {"modality": "audio", "tokenizer": {"target_length": 64, "num_mel_bins": 128, "patch_size": 16},
             "embed_dim": 32, "depth": 1, "num_heads": 2, "decoder": "local", "decoder_embed_dim": 16,
             "decoder_depth": 2, "decoder_num_heads": 2, "norm_pix_loss": True, "mask_ratio": 0.8},
            registry,
        ),
        registry=registry,
    ).eval()  # fmt: skip
    source = write_checkpoint(
        {"format": "anymae", "config": model.config, "model": model.state_dict()}, tmp_path / "a.pt"
    )
    result = convert(source, tmp_path / "audiomae.pth", to="official", registry=registry)
    state = torch.load(result.path, weights_only=True)["model"]
    assert state["decoder_pos_embed"].shape == (1, 1 + 32, 16) and not state["decoder_pos_embed"][0, 0].any()
    assert "decoder_blocks.0.attn.tau" in state and state["patch_embed.proj.weight"].shape == (32, 1, 16, 16)
    again = load_model(result.path, num_heads=2, registry=registry).eval()
    x, noise = torch.randn(2, 1, 64, 128), torch.rand(2, 32)  # AudioMAE's 128 mel bins: a 4 x 8 grid
    assert torch.equal(model(x, noise=noise)[1], again(x, noise=noise)[1])
