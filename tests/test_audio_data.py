"""Audio data formats, the modality's datasets and inputs, the spectrogram figure and the generated demo sounds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from anymae.core.config import load_config, resolve_config
from anymae.core.data.samples import DataError
from anymae.modalities.audio.data import AudioClips, FeatureSettings, read_clip_list
from anymae.modalities.audio.demo import CLASSES, generate_demo_sounds
from anymae.modalities.audio.encode import encode_audio
from anymae.modalities.audio.modality import AudioModality
from anymae.modalities.audio.stats import fbank_stats
from anymae.modalities.audio.tokenizer import SpectrogramTokenizer
from anymae.modalities.audio.visualize import colorize, save_spectrogram_figure

SETTINGS = FeatureSettings(sample_rate=16000, num_mel_bins=32, target_length=64, mean=-5.0, std=4.0)


def tone_file(path, freq=440.0, seconds=1.0, rate=16000):
    return encode_audio(path, 0.4 * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate), sample_rate=rate)


def test_audioset_json_gives_multi_hot_labels_from_the_class_csv(tmp_path):
    (tmp_path / "audio").mkdir()
    tone_file(tmp_path / "audio" / "a.wav")
    tone_file(tmp_path / "audio" / "b.flac", 880)
    (tmp_path / "labels.csv").write_text(
        'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/04rlf,"Music"\n2,/m/0jbk,"Animal"\n'
    )
    listing = {
        "data": [{"wav": "audio/a.wav", "labels": "/m/09x0r,/m/0jbk"}, {"wav": "audio/b.flac", "labels": "/m/04rlf"}]
    }
    (tmp_path / "train.json").write_text(json.dumps(listing))
    clips = read_clip_list(tmp_path / "train.json", label_csv=tmp_path / "labels.csv")
    assert clips.files == [tmp_path / "audio" / "a.wav", tmp_path / "audio" / "b.flac"]
    assert clips.classes == ["Speech", "Music", "Animal"]
    assert torch.equal(clips.labels[0], torch.tensor([1.0, 0.0, 1.0]))
    assert torch.equal(clips.labels[1], torch.tensor([0.0, 1.0, 0.0]))
    x, y = AudioClips(clips, settings=SETTINGS, crop="center")[1]
    assert x.shape == (1, 64, 32) and torch.equal(y, clips.labels[1])
    bad = {"data": [{"wav": "audio/a.wav", "labels": "/m/unknown"}]}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match="/m/unknown"):
        read_clip_list(tmp_path / "bad.json", label_csv=tmp_path / "labels.csv")


def test_csv_lists_folder_per_class_and_flat_folders(tmp_path):
    for cls in ("dog", "bell"):
        (tmp_path / "classes" / cls).mkdir(parents=True)
        for i in range(2):
            tone_file(tmp_path / "classes" / cls / f"{i}.wav", 300 + 100 * i)
    tree = read_clip_list(tmp_path / "classes")
    assert tree.classes == ["bell", "dog"] and tree.labels == [0, 0, 1, 1]
    assert [p.parent.name for p in tree.files] == ["bell", "bell", "dog", "dog"]
    flat = read_clip_list(tmp_path / "classes" / "dog")
    assert flat.labels is None and len(flat.files) == 2
    (tmp_path / "list.csv").write_text("path,label\nclasses/dog/0.wav,dog\nclasses/bell/1.wav,bell\n")
    (tmp_path / "list.txt").write_text("classes/dog/0.wav dog\nclasses/bell/1.wav bell\n")
    for name in ("list.csv", "list.txt"):
        listed = read_clip_list(tmp_path / name)
        assert listed.files == [tmp_path / "classes/dog/0.wav", tmp_path / "classes/bell/1.wav"]
        assert listed.labels == [1, 0] and listed.classes == ["bell", "dog"]
    (tmp_path / "broken.csv").write_text("only-one-field\n")
    with pytest.raises(DataError, match=r"broken\.csv:1"):
        read_clip_list(tmp_path / "broken.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no audio files"):
        read_clip_list(tmp_path / "empty")


def test_modality_builds_train_and_heldout_sets_and_names_missing_keys(tmp_path):
    for split in ("train", "heldout"):
        (tmp_path / split).mkdir()
        for i in range(3):
            tone_file(tmp_path / split / f"{i}.ogg", 200 + 150 * i, seconds=2.0)
    raw = {
        "model": {"modality": "audio", "tokenizer": {"target_length": 64, "num_mel_bins": 32}},
        "data": {"root": str(tmp_path), "mean": -5.0, "std": 4.0, "repeats": 2},
    }
    cfg = resolve_config(raw)
    modality = AudioModality()
    train = modality.build_dataset(cfg.data, cfg.model.tokenizer, split="train")
    heldout = modality.build_dataset(cfg.data, cfg.model.tokenizer, split="heldout")
    assert len(train) == 6 and len(heldout) == 3
    assert train[0].shape == heldout[0].shape == (1, 64, 32)
    assert not torch.equal(train[0], train[0])  # random crops of a 2 s clip into 0.655 s windows
    assert torch.equal(heldout[0], heldout[0])  # the centre crop
    inputs = modality.load_inputs([tmp_path / "heldout" / "1.ogg"], cfg.data, cfg.model.tokenizer)
    assert torch.equal(inputs[0], heldout[1])
    cfg.data.heldout_split = "nowhere"
    assert modality.build_dataset(cfg.data, cfg.model.tokenizer, split="heldout") is None
    cfg.data.train_split = "missing"
    with pytest.raises(DataError, match=r"data\.train_split"):
        modality.build_dataset(cfg.data, cfg.model.tokenizer, split="train")
    cfg.data.root = ""
    with pytest.raises(DataError, match=r"data\.root"):
        modality.build_dataset(cfg.data, cfg.model.tokenizer, split="train")


def test_spectrogram_figure_has_three_rows_per_clip_and_greys_removed_patches(tmp_path):
    tok = SpectrogramTokenizer(target_length=64, num_mel_bins=32, patch_size=16, embed_dim=8)
    x = torch.linspace(-1, 1, 64)[None, None, :, None].expand(2, 1, 64, 32).clone()
    mask = torch.zeros(2, 8)
    mask[:, 0] = 1  # first patch: frames 0-15, mel bins 0-15
    path = save_spectrogram_figure(x, tok.patchify(x), mask, tokenizer=tok, path=tmp_path / "fig.png")
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[0] > 3 * 2 * 32 and image.shape[1] >= 768  # 2 clips x 3 rows, stretched to 768 px
    grey = (image == 128).all(axis=-1)
    assert grey.sum() == 2 * 16 * 12 * 16 * 4  # one 16x16 patch per clip, scaled 12x in time and 4x in mel
    assert torch.equal(
        colorize(torch.tensor([[0.0, 1.0]]), 0.0, 1.0)[0],
        torch.tensor([[68, 1, 84], [253, 231, 37]], dtype=torch.uint8),
    )


def test_demo_sounds_are_deterministic_and_the_demo_config_matches_their_statistics(tmp_path):
    a = generate_demo_sounds(tmp_path / "a", train_per_class=2, heldout_per_class=1)
    b = generate_demo_sounds(tmp_path / "b", train_per_class=3, heldout_per_class=1)
    for cls in CLASSES:
        for i in range(2):
            name = f"train/{cls}/{cls}_{i:03d}.wav"
            assert (a / name).read_bytes() == (b / name).read_bytes()  # one RNG stream per clip
        assert (a / f"heldout/000_{cls}.wav").read_bytes() != (a / f"train/{cls}/{cls}_000.wav").read_bytes()
    # Held-out clips alternate classes, so the figure's first clips show every class.
    assert [p.name for p in sorted((a / "heldout").iterdir())] == [f"000_{cls}.wav" for cls in sorted(CLASSES)]
    cfg = load_config("demo_audio")
    assert cfg.data.root == "builtin:demo_sounds"
    # The config's statistics were measured with stats.fbank_stats on the full training set; a subset agrees.
    mean, std = fbank_stats(sorted((b / "train").rglob("*.wav")), target_length=cfg.model.tokenizer.target_length)
    assert abs(mean - cfg.data.mean) < 1.0 and abs(std - cfg.data.std) < 0.5


def _bad_sound_run(tmp_path, max_bad_fraction: float):
    """A tiny audio pre-training on 6 good files plus the issue's four awkward ones."""
    from anymae.core import pretrain

    train = tmp_path / "train"
    train.mkdir(exist_ok=True)
    for i in range(6):
        tone_file(train / f"good{i}.wav", 200 + 100 * i, seconds=1.0)
    encode_audio(train / "silent.flac", np.zeros(16000), sample_rate=16000)  # readable: the log floor
    tone_file(train / "short.wav", 500, seconds=0.1)  # readable: padded
    (train / "notes.wav").write_text("this is a text file, not audio")
    mp3 = tone_file(train / "song.mp3", 300, seconds=2.0)
    data = mp3.read_bytes()
    mp3.write_bytes(data[:200] + bytes(len(data) - 200))  # header kept, frames zeroed: corrupt
    raw = {
        "name": f"bad{max_bad_fraction}",
        "model": {"modality": "audio", "tokenizer": {"target_length": 64, "num_mel_bins": 32}, "embed_dim": 32,
                  "depth": 1, "num_heads": 2, "decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2},
        "data": {"root": str(tmp_path), "heldout_split": None, "mean": -5.0, "std": 4.0},
        "optim": {"warmup_epochs": 0},
        "train": {"epochs": 2, "batch_size": 5, "num_workers": 0, "device": "cpu", "figure_samples": 0,
                  "output_dir": str(tmp_path / "runs"), "max_bad_fraction": max_bad_fraction, "log_every_steps": 1},
    }  # fmt: skip
    return pretrain(resolve_config(raw), progress=False)


def test_bad_sound_files_are_named_substituted_and_counted_then_stop_a_run_above_the_limit(tmp_path):
    with pytest.warns(UserWarning) as caught:
        result = _bad_sound_run(tmp_path, max_bad_fraction=0.3)
    named = " ".join(str(w.message) for w in caught)
    assert "notes.wav" in named and "song.mp3" in named
    assert "silent.flac" not in named and "short.wav" not in named  # readable, as documented
    records = [json.loads(line) for line in result.metrics.read_text().splitlines()]
    assert [r["epoch_bad_samples"] for r in records if "epoch_bad_samples" in r] == [2, 2]  # 10 files, all seen
    assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
    with pytest.raises(DataError, match=r"more than train.max_bad_fraction=0.1"), pytest.warns(UserWarning):
        _bad_sound_run(tmp_path, max_bad_fraction=0.1)
