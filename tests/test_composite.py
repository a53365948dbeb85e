"""Composite models (issue 18): one MAE over several modalities, each part masked, decoded and scored its own way."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import make_image, write_image
from einops import rearrange

from anymae.core.build.composite_data import CompositeModality
from anymae.core.build.models import build_model
from anymae.core.config import ConfigError, config_to_dict, resolve_config, resolve_model_config
from anymae.core.model.composite import MultiModalMAE
from anymae.core.model.masking import keep_count
from anymae.core.train.task_pretrain import pretrain
from anymae.core.weights.loading import load_model
from anymae.modalities.audio.encode import encode_audio
from anymae.plugins import get_registry
from anymae.testing import check_composite

AUDIO_TOKENIZER = {"target_length": 64, "num_mel_bins": 32, "patch_size": 16}  # 4 x 2 = 8 tokens
VIDEO_TOKENIZER = {"num_frames": 4, "img_size": 32, "patch_size": 8, "tubelet_size": 2}  # 2 x 4 x 4 = 32 tokens
TINY = {"embed_dim": 32, "depth": 1, "num_heads": 2, "decoder_embed_dim": 16, "decoder_depth": 1,
        "decoder_num_heads": 2}  # fmt: skip


def image_audio(**model: Any) -> MultiModalMAE:
    """Image (32 px, patch 8: 16 tokens, norm-pix) + audio (8 tokens, pixels, weight 0.5), at a fixed init."""
    parts = {
        "image": {"tokenizer": {"img_size": 32, "patch_size": 8}, "target": "norm_pix"},
        "audio": {"tokenizer": AUDIO_TOKENIZER, "mask_ratio": 0.5, "loss_weight": 0.5},
    }
    torch.manual_seed(0)
    return build_model(resolve_model_config({"modality": "composite", "parts": parts, **TINY, **model}))


def inputs(batch: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(batch, 3, 32, 32, generator=generator),
            "audio": torch.randn(batch, 1, 64, 32, generator=generator)}  # fmt: skip


def test_each_part_is_masked_by_its_own_strategy_and_ratio():
    parts = {
        "video": {"tokenizer": VIDEO_TOKENIZER, "masking": "tube", "mask_ratio": 0.9},
        "audio": {"tokenizer": AUDIO_TOKENIZER, "masking": "random", "mask_ratio": 0.75},
    }
    model = build_model(resolve_model_config({"modality": "composite", "parts": parts, **TINY}))
    mask = model.draw_mask(64, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (64, 32 + 8)
    video, audio = model.part_mask(mask, "video"), model.part_mask(mask, "audio")
    tubes = video.view(64, 2, 16)  # (N, T/t, H/p * W/p): a tube masks one place in every frame
    assert torch.equal(tubes[:, 0], tubes[:, 1])
    assert (tubes[:, 0].sum(1) == int(0.9 * 16)).all()  # VideoMAE's TubeMaskingGenerator: int(ratio x places)
    assert (audio.sum(1) == 8 - keep_count(8, 0.75)).all()  # 6 of 8
    assert len({tuple(row.tolist()) for row in audio}) > 10  # drawn per sample


def test_modality_dropout_removes_one_whole_part_from_that_share_of_samples():
    model = image_audio(modality_dropout=0.3)
    mask = model.draw_mask(4000, generator=torch.Generator().manual_seed(1), dropout=True)
    image_gone = model.part_mask(mask, "image").all(1)
    audio_gone = model.part_mask(mask, "audio").all(1)
    assert not (image_gone & audio_gone).any()
    assert abs(float((image_gone | audio_gone).float().mean()) - 0.3) < 0.03
    assert abs(float(image_gone.float().mean()) - 0.15) < 0.03
    kept = model.part_mask(mask, "image")[~image_gone]
    assert (kept.sum(1) == 12).all()  # the others keep their strategy's mask
    assert not model.draw_mask(500, generator=torch.Generator().manual_seed(1)).view(500, -1)[:, :16].all(1).any()


def test_total_loss_is_the_weighted_sum_of_the_part_losses_computed_by_hand():
    model = image_audio()
    x = inputs()
    mask = model.draw_mask(3, generator=torch.Generator().manual_seed(2))
    out = model(x, mask=mask)
    # image: the paper's patchify ((h p) (w q) c -> (h w) (p q c)) and norm-pix (unbiased var, eps 1e-6)
    patches = rearrange(x["image"], "n c (h p) (w q) -> n (h w) (p q c)", p=8, q=8)
    target = (patches - patches.mean(-1, keepdim=True)) / (patches.var(-1, keepdim=True) + 1e-6).sqrt()
    removed = mask[:, :16]
    image_loss = ((out.pred["image"] - target) ** 2).mean(-1)[removed].mean()
    audio_target = model.parts["audio"].tokenizer.patchify(x["audio"])  # pixels: the patches themselves
    audio_loss = ((out.pred["audio"] - audio_target) ** 2).mean(-1)[mask[:, 16:]].mean()
    assert torch.allclose(out.losses["image"], image_loss, atol=1e-6)
    assert torch.allclose(out.losses["audio"], audio_loss, atol=1e-6)
    assert torch.allclose(out.loss, image_loss + 0.5 * audio_loss, atol=1e-6)


def test_the_encoder_joins_the_parts_and_a_dropped_part_is_invisible_and_scores_nothing():
    model = image_audio().eval()
    x = inputs()
    mask = model.draw_mask(3, generator=torch.Generator().manual_seed(3))
    dropped = mask.clone()
    dropped[0, 16:] = True  # sample 0 loses its audio
    louder = {**x, "audio": x["audio"] * 3 + 1}
    with torch.no_grad():
        a, b = model(x, mask=dropped), model(louder, mask=dropped)
        alone = model({"image": x["image"]}, mask=dropped)  # the audio left out of the inputs
    assert torch.allclose(a.pred["image"][0], b.pred["image"][0], atol=1e-5)  # sample 0 cannot see its audio
    assert not torch.allclose(a.pred["image"][1], b.pred["image"][1], atol=1e-3)  # sample 1 does
    assert torch.allclose(a.pred["image"][0], alone.pred["image"][0], atol=1e-5)
    assert set(alone.pred) == {"image"}
    target = model.parts["audio"].tokenizer.patchify(x["audio"])
    rows = ((a.pred["audio"] - target) ** 2).mean(-1)[1:][mask[1:, 16:]]  # only the samples that have it
    assert torch.allclose(a.losses["audio"], rows.mean(), atol=1e-6)


def test_encode_on_any_subset_of_the_parts():
    model = image_audio().eval()
    x = inputs()
    with torch.no_grad():
        both, image, audio = model.encode(x), model.encode({"image": x["image"]}), model.encode({"audio": x["audio"]})
    assert both.shape == (3, 1 + 24, 32) and image.shape == (3, 1 + 16, 32) and audio.shape == (3, 1 + 8, 32)
    assert not torch.allclose(both[:, 1:17], image[:, 1:])  # the image tokens see the audio when it is there
    with pytest.raises(KeyError, match="its parts: image, audio"):
        model.encode({"depth": x["image"]})


def test_the_contract_check_passes_on_composites_of_the_built_in_modalities():
    video = {"tokenizer": VIDEO_TOKENIZER, "masking": "tube", "mask_ratio": 0.9, "decoder": "videomae",
             "target": "videomae", "pred_masked_only": True}  # fmt: skip
    audio = {"tokenizer": {**AUDIO_TOKENIZER, "target_length": 160, "num_mel_bins": 128}, "mask_ratio": 0.8,
             "masking": "time_frequency", "decoder": "local",
             "decoder_options": {"window_size": [2, 2], "shift_size": [1, 0]}}  # fmt: skip
    check_composite({"video": video, "audio": audio}, model={"cls_token": False})
    check_composite({"image": {"tokenizer": {"img_size": 32, "patch_size": 8}, "target": "norm_pix"},
                     "audio": {"tokenizer": AUDIO_TOKENIZER}})  # fmt: skip


def test_a_joint_decoder_predicts_each_part_from_every_parts_tokens():
    model = image_audio(joint_decoder=True).eval()
    assert model.parts["image"].decoder is None and model.decoders() == [model.decoder]
    parts = {"image": {"tokenizer": {"img_size": 32, "patch_size": 8}}, "audio": {"tokenizer": AUDIO_TOKENIZER}}
    check_composite(parts, model={"joint_decoder": True})
    x = inputs()
    mask = model.draw_mask(3, generator=torch.Generator().manual_seed(4))
    other = {**x, "image": x["image"].flip(0)}
    with torch.no_grad():
        a, b = model(x, mask=mask), model(other, mask=mask)
        dropped = model.drop(mask, ["image"])
        c, d = model(x, mask=dropped), model(other, mask=dropped)
    assert not torch.allclose(a.pred["audio"], b.pred["audio"], atol=1e-4)  # the audio heads read the image tokens
    assert torch.allclose(c.pred["audio"], d.pred["audio"], atol=1e-5)  # ... unless the image is dropped
    assert set(model.state_dict()) >= {"decoder.heads.image.weight", "decoder.heads.audio.weight",
                                       "decoder.modality_embed.audio"}  # fmt: skip


@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        ({"mask_ratio": 0.9}, {}, "model.mask_ratio: a composite model sets it per part"),
        ({"tokenizer": {"img_size": 32}}, {}, "model.tokenizer: a composite model has one per part"),
        ({"parts": {"image": {}}}, {}, "needs at least two parts"),
        ({"parts": {"image": {}, "sound": {}}}, {}, "model.parts.sound"),  # no modality 'sound'
        ({"parts": {"image": {}, "audio": {"mask_ratio": 1.5}}}, {}, "model.parts.audio"),
        ({"parts": {"image": {}, "audio": {"decoder_options": {"windows": 2}}}}, {}, "parts.audio.decoder_options"),
        ({"init_from": "x.pt"}, {}, "model.init_from"),
        ({"joint_decoder": True, "parts": {"image": {}, "audio": {"decoder": "local"}}}, {}, "parts.audio.decoder"),
        ({}, {"depth": {"root": "x"}}, "'data.depth'"),
        ({}, {"audio": {"sample_rat": 1}}, "data.audio.sample_rat"),
    ],
)
def test_composite_configs_refuse_what_they_cannot_honour_naming_the_key(model, data, message):
    raw_model = {"modality": "composite", "parts": {"image": {}, "audio": {}}, **model}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        resolve_config({"model": raw_model, "data": data})


def test_single_modality_configs_refuse_composite_keys():
    with pytest.raises(ConfigError, match=r"model\.parts is for model\.modality: composite"):
        resolve_model_config({"modality": "image", "parts": {"image": {}, "audio": {}}})
    with pytest.raises(ConfigError, match=r"model\.joint_decoder is for model\.modality: composite"):
        resolve_model_config({"modality": "image", "joint_decoder": True})


def write_pairs(root: Path, count: int, *, split: str = "train", skip_audio: tuple[int, ...] = ()) -> None:
    """root/image/<split>/sNNN.png and root/audio/<split>/sNNN.wav: an image and a tone per name."""
    for i in range(count):
        write_image(root / "image" / split / f"s{i:03d}.png", make_image(i, size=(40, 40)))
        if i not in skip_audio:
            t = np.arange(12000) / 16000
            path = root / "audio" / split / f"s{i:03d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            encode_audio(path, 0.4 * np.sin(2 * np.pi * (300 + 40 * i) * t), sample_rate=16000)


def composite_config(tmp_path: Path, root: Path, **train: Any) -> Any:
    return resolve_config(composite_raw(tmp_path, root, **train))


def composite_raw(tmp_path: Path, root: Path, **train: Any) -> dict[str, Any]:
    """An image + audio composite over :func:`write_pairs` data, as the YAML a user writes."""
    return {
        "name": "av",
        "model": {"modality": "composite", **TINY, "modality_dropout": 0.25, "parts": {
            "image": {"tokenizer": {"img_size": 32, "patch_size": 8}, "target": "norm_pix"},
            "audio": {"tokenizer": AUDIO_TOKENIZER, "mask_ratio": 0.8, "loss_weight": 0.5}}},
        "data": {"image": {"root": str(root / "image"), "heldout_split": "heldout"},
                 "audio": {"root": str(root / "audio"), "mean": -6.0, "std": 4.0, "repeats": 1}},
        "optim": {"lr": 1e-3, "warmup_epochs": 1},
        "train": {"epochs": 2, "batch_size": 4, "num_workers": 0, "device": "cpu", "pin_memory": False,
                  "output_dir": str(tmp_path / "runs"), "log_every_steps": 1, "heldout_batches": 1,
                  "figure_samples": 2, "max_bad_fraction": 0.2, "save_every_epochs": 1, **train},
    }  # fmt: skip


def test_a_composite_pretrains_resumes_exactly_and_round_trips_through_its_checkpoint(tmp_path):
    root = tmp_path / "data"
    write_pairs(root, 8)
    write_pairs(root, 4, split="heldout")
    # A bad part makes its sample bad: one sound and one picture, 2 of the 8 samples in every epoch.
    bad_audio, bad_image = root / "audio" / "train" / "s003.wav", root / "image" / "train" / "s005.png"
    bad_audio.write_bytes(b"not audio")
    bad_image.write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="skipping unreadable sample") as caught:
        straight = pretrain(composite_config(tmp_path, root, run_name="straight", max_bad_fraction=0.25),
                            progress=False)  # fmt: skip
    messages = [str(w.message) for w in caught if "unreadable sample" in str(w.message)]
    assert any(f"part audio: cannot decode audio {bad_audio}" in m for m in messages), messages
    assert any(f"part image: cannot read image {bad_image}" in m for m in messages), messages
    rows = [json.loads(line) for line in straight.metrics.read_text().splitlines()]
    assert {"loss_image", "loss_audio"} <= set(rows[0])
    assert [row["epoch_bad_samples"] for row in rows if "epoch_bad_samples" in row] == [2, 2]
    assert [row["bad_samples"] for row in rows if "epoch_bad_samples" in row] == [2, 4]
    assert straight.figure is not None and straight.figure.is_file()
    checks = [row for row in rows if "heldout_loss" in row]
    assert len(checks) == 2  # one check per epoch, each with every part's loss, alone and with the other dropped
    for row in checks:
        assert {f"heldout_loss_{p}{d}" for p in ("image", "audio") for d in ("", "_others_dropped")} <= set(row)

    # The first epoch's checkpoint, copied into a run of its own, resumed to the end.
    (tmp_path / "runs" / "resumed").mkdir()
    first = shutil.copy(straight.run_dir / "checkpoint-0001.pt", tmp_path / "runs" / "resumed")
    resumed_cfg = composite_config(tmp_path, root, run_name="resumed", max_bad_fraction=0.25)
    resumed = pretrain(resumed_cfg, resume=str(first), progress=False)
    assert resumed.run_dir == tmp_path / "runs" / "resumed"
    a, b = torch.load(straight.checkpoint, weights_only=False), torch.load(resumed.checkpoint, weights_only=False)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key

    model = load_model(straight.checkpoint).eval()
    assert isinstance(model, MultiModalMAE) and list(model.parts) == ["image", "audio"]
    twin = build_model(composite_config(tmp_path, root).model).eval()
    twin.load_state_dict(a["model"])
    x = inputs(2)
    mask = model.draw_mask(2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model(x, mask=mask).loss, twin(x, mask=mask).loss)


def test_the_check_prints_each_parts_loss_and_the_cross_modal_line(tmp_path, capsys):
    root = tmp_path / "data"
    write_pairs(root, 8)
    write_pairs(root, 4, split="heldout")
    result = pretrain(composite_config(tmp_path, root, epochs=1), progress=False)
    out = capsys.readouterr().out
    assert "(image " in out and ", audio " in out
    assert "cross-modal check: audio masked loss" in out and "with the image visible vs" in out
    assert "with the image dropped (the same audio masks)" in out
    # Retrieval between the parts on the 4 held-out pairs, in the check and in the result (the command prints it).
    assert [line.split(":")[0] for line in result.retrieval] == ["retrieval image->audio", "retrieval audio->image"]
    assert all(line in out and line.endswith("(chance R@1 25.0%) on 4 pairs") for line in result.retrieval)
    row = [json.loads(line) for line in result.metrics.read_text().splitlines() if "heldout_loss" in line][-1]
    assert {"retrieval_image_to_audio_R@1", "retrieval_audio_to_image_R@10"} <= set(row)


def test_parts_are_paired_by_file_name_and_unpaired_files_left_out(tmp_path):
    root = tmp_path / "data"
    write_pairs(root, 6, skip_audio=(2,))
    for name in ("x900", "x901"):  # sounds with no picture
        shutil.copy(root / "audio" / "train" / "s000.wav", root / "audio" / "train" / f"{name}.wav")
    cfg = composite_config(tmp_path, root)
    modality = CompositeModality(cfg.model.parts, registry=get_registry())
    with pytest.warns(UserWarning, match="no partner") as caught:
        paired = modality.build_dataset(cfg.data, split="train")
    message = str(caught[0].message)
    assert "part 'image': 1 (train/s002)" in message and "part 'audio': 2 (train/x900, train/x901)" in message
    assert len(paired) == 5
    names = [(paired.parts["image"].source(p["image"]).stem, paired.parts["audio"].source(p["audio"]).stem)
             for p in paired.index]  # fmt: skip
    assert all(a == b for a, b in names) and "s002" not in {a for a, _ in names}


def write_labelled_pairs(root: Path) -> None:
    """Class folders ``low`` / ``high`` in both parts (4 training, 2 held-out pairs each): a 300 Hz or 2 kHz tone
    with an image; the pairs keep their class."""
    for label in ("low", "high"):
        for split, count in (("train", 4), ("heldout", 2)):
            for i in range(count):
                seed = i + (0 if label == "low" else 50) + (0 if split == "train" else 10)
                write_image(root / "image" / split / label / f"s{i}.png", make_image(seed, size=(40, 40)))
                tone = 0.4 * np.sin(2 * np.pi * (300 if label == "low" else 2000) * np.arange(12000) / 16000)
                (root / "audio" / split / label).mkdir(parents=True, exist_ok=True)
                encode_audio(root / "audio" / split / label / f"s{i}.wav", tone, sample_rate=16000)


def test_the_check_and_the_knn_command_score_joint_and_single_part_features(tmp_path, capsys):
    root = tmp_path / "data"
    write_labelled_pairs(root)
    result = pretrain(composite_config(tmp_path, root, epochs=1), progress=False)
    rows = [json.loads(line) for line in result.metrics.read_text().splitlines()]
    knn = [row for row in rows if "knn_top1" in row]
    assert len(knn) == 1 and {"knn_top1_image", "knn_top1_audio"} <= set(knn[0])
    assert knn[0]["knn_top1_audio"] == 100.0  # a 300 Hz against a 2 kHz tone: any features tell them apart
    from anymae.core.cli import main

    capsys.readouterr()
    assert main(["knn", str(result.checkpoint), "--parts", "audio", "--k", "3", "--no-progress"]) == 0
    assert "cls features of audio): top-1 100.0%" in capsys.readouterr().out  # the same figure as the check's
    assert main(["knn", str(result.checkpoint), "--k", "3", "--no-progress"]) == 0  # joint features
    assert "top-1" in capsys.readouterr().out
    assert main(["knn", str(result.checkpoint), "--parts", "depth", "--no-progress"]) == 1
    assert "no part 'depth' in this model; its parts: image, audio" in capsys.readouterr().err


def test_two_ddp_ranks_train_a_composite_like_one_process_with_their_joint_batch(tmp_path):
    """Rank r takes samples r, r + 2, ... of each step (EpochSampler): 2 ranks x batch 2 = 1 process x batch 4, the
    contrastive term's negatives gathered across the ranks with their gradients included."""
    root = tmp_path / "data"
    write_pairs(root, 8)
    write_pairs(root, 4, split="heldout")
    configs = {}
    for name, batch in (("one", 4), ("ddp", 2)):
        cfg = composite_config(tmp_path, root, run_name=name, batch_size=batch, epochs=1, figure_samples=0)
        cfg.model.modality_dropout = 0.0  # dropped parts change a rank's loss normalisation: not a 1:1 comparison
        cfg.model.contrastive.weight, cfg.model.contrastive.proj_dim = 0.5, 8
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(yaml.safe_dump(config_to_dict(cfg)))
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANYMAE_")}
    env.update(OMP_NUM_THREADS="1", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port.getsockname()[1]))
    port.close()
    command = [sys.executable, "-m", "anymae.core.cli", "pretrain", "--no-progress"]
    ranks = [subprocess.Popen([*command, str(configs["ddp"])], env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                              stderr=subprocess.PIPE, text=True) for r in range(2)]  # fmt: skip
    errors = [rank.communicate(timeout=180)[1] for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], errors
    single = subprocess.run([*command, str(configs["one"])], capture_output=True, text=True, timeout=180)
    assert single.returncode == 0, single.stderr
    a = torch.load(tmp_path / "runs" / "one" / "checkpoint-0001.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "runs" / "ddp" / "checkpoint-0001.pt", weights_only=False)["model"]
    width = TINY["embed_dim"]
    for key in a:
        x, y = a[key], b[key]
        if key.endswith("attn.qkv.bias"):  # the key bias: its gradient is 0 (a softmax ignores a shift common to
            x, y = torch.cat([x[:width], x[2 * width :]]), torch.cat([y[:width], y[2 * width :]])  # all keys), so
            # AdamW turns float noise into +-lr steps that differ with the summation order; the rest must agree
        assert torch.allclose(x, y, atol=1e-5), key


def test_a_joint_decoder_learns_to_read_one_part_from_the_other():
    """Two image parts that are copies of each other, made of noise: after a short training, a removed patch of one
    is predicted far better with the other part visible than with it dropped (half its counterparts are visible),
    which only attention across the parts can do."""
    parts = {name: {"modality": "image", "tokenizer": {"img_size": 8, "patch_size": 4, "in_chans": 1},
                    "mask_ratio": 0.5} for name in ("left", "right")}  # fmt: skip
    torch.manual_seed(0)
    model = build_model(resolve_model_config({"modality": "composite", "parts": parts, "embed_dim": 64, "depth": 1,
                                              "num_heads": 4, "decoder_embed_dim": 64, "decoder_depth": 1,
                                              "decoder_num_heads": 4, "joint_decoder": True}))  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        x = torch.randn(32, 1, 8, 8, generator=generator)  # noise: unpredictable from the part itself
        loss = model({"left": x, "right": x}, mask=model.draw_mask(32, generator=generator)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    x = torch.randn(256, 1, 8, 8, generator=generator)
    mask = model.draw_mask(256, generator=generator)
    with torch.no_grad():
        seen = model({"left": x, "right": x}, mask=mask).losses["left"]
        alone = model({"left": x, "right": x}, mask=model.drop(mask, ["right"])).losses["left"]
    assert alone > 0.9  # nothing to predict noise from within the part
    assert seen < 0.75 * alone, (float(seen), float(alone))


def test_visualize_draws_every_parts_reconstruction_of_media_files_that_hold_them_all(tmp_path, capsys):
    from anymae.core.cli import main
    from anymae.modalities.video.audiovisual_demo import make_audiovisual_clip, write_audiovisual_clip

    for split, seeds in (("train", range(4)), ("heldout", range(4, 6))):
        for seed in seeds:
            video, wave, _ = make_audiovisual_clip(seed)
            write_audiovisual_clip(tmp_path / "clips" / split / f"c{seed}.mp4", video, wave)
    clips = str(tmp_path / "clips")
    raw = {
        "name": "av",
        "model": {"modality": "composite", **TINY, "joint_decoder": True, "cls_token": False, "parts": {
            "video": {"tokenizer": {"num_frames": 8, "img_size": 32, "patch_size": 8, "tubelet_size": 2},
                      "masking": "tube", "mask_ratio": 0.5},
            "audio": {"tokenizer": {"target_length": 320, "num_mel_bins": 64, "patch_size": 16},
                      "masking": "frequency", "mask_ratio": 0.75}}},
        "data": {"video": {"root": clips, "heldout_split": "heldout", "sampling_rate": 4, "scales": [1.0]},
                 "audio": {"root": clips, "train_crop": "start", "eval_crop": "start"}},
        "optim": {"lr": 1e-3, "warmup_epochs": 1},
        "train": {"epochs": 1, "batch_size": 2, "num_workers": 0, "device": "cpu", "output_dir": str(tmp_path / "runs"),
                  "figure_samples": 1},
    }  # fmt: skip
    result = pretrain(resolve_config(raw), progress=False)
    figure = tmp_path / "figure.png"
    clip = str(tmp_path / "clips" / "heldout" / "c4.mp4")
    assert main(["visualize", str(result.checkpoint), clip, clip, "--output", str(figure)]) == 0
    out = capsys.readouterr().out
    assert "(video " in out and ", audio " in out and figure.is_file()
    from PIL import Image

    with Image.open(figure) as two, Image.open(result.figure) as one:
        assert two.height > one.height  # two samples drawn against one


def test_composites_are_probed_fine_tuned_and_evaluated_on_all_parts_or_one(tmp_path, capsys):
    from anymae.core.cli import main
    from anymae.core.evaluate.classification import load_classifier

    root = tmp_path / "data"
    write_labelled_pairs(root)
    checkpoint = pretrain(composite_config(tmp_path, root, epochs=1, knn=False), progress=False).checkpoint
    data = {"image": {"root": str(root / "image"), "heldout_split": "heldout"},
            "audio": {"root": str(root / "audio"), "mean": -6.0, "std": 4.0}}  # fmt: skip
    train = {"epochs": 2, "batch_size": 4, "num_workers": 0, "device": "cpu", "output_dir": str(tmp_path / "runs")}
    runs = {
        "probe": {"linprobe": {"checkpoint": str(checkpoint), "modality": "composite", "solver": "lbfgs",
                               "parts": ["audio"]}, "data": {"audio": data["audio"]},
                  "train": {k: v for k, v in train.items() if k != "epochs"}},
        "sgd": {"linprobe": {"checkpoint": str(checkpoint), "modality": "composite"}, "data": data,
                "optim": {"optimizer": "lars", "blr": 0.1}, "train": train},
        "tune": {"finetune": {"checkpoint": str(checkpoint), "modality": "composite", "parts": ["audio"],
                              "mixup": 0.0, "cutmix": 0.0},
                 "data": {"audio": data["audio"]}, "train": train},
    }  # fmt: skip
    for name, raw in runs.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": name, **raw}))
        command = "finetune" if "finetune" in raw else "linprobe"
        assert main([command, str(path), "--no-progress"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "top-1 100.00%" in out  # the lbfgs probe of the audio part: a low against a high tone
    best = tmp_path / "runs" / "probe" / "checkpoint-best.pt"
    probe, pretrained = load_classifier(best).state_dict(), torch.load(checkpoint, weights_only=False)["model"]
    for key in ("encoder.blocks.0.attn.qkv.weight", "parts.audio.modality_embed"):  # the pre-trained weights
        assert torch.equal(probe[key if key.startswith("encoder") else f"tokenizer.{key}"], pretrained[key])
    assert not any(key.startswith("tokenizer.parts.image") for key in probe)  # the audio part only
    assert main(["eval", str(best)]) == 0
    assert "heldout: 4 samples  top-1 100.00%" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "bad", **runs["tune"], "finetune": {**runs["tune"]["finetune"],
                                                                               "mixup": 0.8}}))  # fmt: skip
    assert main(["finetune", str(bad)]) == 1
    assert "finetune.mixup: not supported for composite models yet" in capsys.readouterr().err


def test_parts_of_long_recordings_draw_one_window_start_and_stay_aligned_in_time(tmp_path):
    """6.4 s clips (a disc that changes place every 1.6 s, a tone at its height) and 1.6 s windows: the first video
    frame of an item shows the note its sound starts with, for random starts across the whole clip."""
    from anymae.modalities.video.audiovisual_demo import make_audiovisual_clip, write_audiovisual_clip

    for seed in range(2):
        video, wave, _ = make_audiovisual_clip(seed, frames=64)
        write_audiovisual_clip(tmp_path / "clips" / "train" / f"c{seed}.mp4", video, wave)
    clips = str(tmp_path / "clips")
    cfg = resolve_config({
        "model": {"modality": "composite", **TINY, "cls_token": False, "parts": {
            "video": {"tokenizer": {"num_frames": 8, "img_size": 32, "patch_size": 8, "tubelet_size": 2}},
            "audio": {"tokenizer": {"target_length": 160, "num_mel_bins": 64, "patch_size": 16}}}},
        "data": {"video": {"root": clips, "heldout_split": None, "sampling_rate": 2, "scales": [1.0]},
                 "audio": {"root": clips, "heldout_split": None}},
    })  # fmt: skip
    paired = CompositeModality(cfg.model.parts, registry=get_registry()).build_dataset(cfg.data, split="train")
    assert paired.timed is not None
    pairs = set()
    for draw in range(16):
        torch.manual_seed(draw)
        item = paired[draw % 2]
        frame = item["video"][:, 0].mean(0)  # (H, W): the first frame's brightness
        row = int(frame.mean(1).argmax())  # the disc's row
        pairs.add((row, int(item["audio"][0, :10].mean(0).argmax())))  # the tone's mel bin in the first 100 ms
    assert len({row for row, _ in pairs}) >= 4  # windows that start in different notes
    # Higher on screen (a smaller row) is a higher pitch (a larger mel bin): for every two items whose discs are
    # more than a row apart (the row of a disc of radius 4-5 is found to a row), whatever clip they come from.
    for row_a, bin_a in pairs:
        for row_b, bin_b in pairs:
            if row_a < row_b - 1:
                assert bin_a > bin_b, sorted(pairs)


@pytest.mark.parametrize("part_depth", [0, 1])
def test_a_classifier_over_the_parts_sees_what_encode_sees(part_depth):
    """The classifier's features (CLS after the final norm) equal the composite's own ``encode`` of the same parts,
    with and without CAV-MAE's modality-specific blocks (``model.part_depth``)."""
    from anymae.core.build.classifier import build_classifier

    model = image_audio(part_depth=part_depth).eval()
    if part_depth:
        assert "parts.audio.blocks.0.attn.qkv.weight" in model.state_dict()
        check_composite({"image": {"tokenizer": {"img_size": 32, "patch_size": 8}},
                         "audio": {"tokenizer": AUDIO_TOKENIZER}}, model={"part_depth": part_depth})  # fmt: skip
    x = inputs()
    for parts in (None, ["audio"]):
        classifier = build_classifier(model, num_classes=2, global_pool=False, parts=parts).eval()
        seen = {name: x[name] for name in parts or x}
        with torch.no_grad():
            assert torch.allclose(classifier.forward_features(x), model.encode(seen)[:, 0], atol=1e-5), parts
