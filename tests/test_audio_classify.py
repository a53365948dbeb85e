"""Labelled audio: AudioSet JSON / ESC-50 folds / Speech Commands lists, AudioMAE's fine-tuning augmentation
(SpecAugment, in-dataset mixup), the balanced-sampler weights, and pre-train -> fine-tune -> probe -> eval."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from anymae.core.config import load_config
from anymae.core.data.samples import DataError, sample_seed, seeded
from anymae.modalities.audio.classification import Augmentation, LabelledClips, balanced_sample_weights, spec_augment
from anymae.modalities.audio.data import ClipList, FeatureSettings
from anymae.modalities.audio.decode import crop_waveform, load_waveform
from anymae.modalities.audio.demo import CLASSES, generate_demo_sounds
from anymae.modalities.audio.encode import encode_audio
from anymae.modalities.audio.features import features
from anymae.modalities.audio.modality import AudioDataConfig, AudioModality, AudioTokenizerConfig

RATE = 16000
TOKENIZER = AudioTokenizerConfig(target_length=64, num_mel_bins=32, patch_size=16)  # 0.65 s, a 4 x 2 grid
SETTINGS = FeatureSettings(sample_rate=RATE, num_mel_bins=32, target_length=64, mean=-5.0, std=4.0)
LABELS_CSV = 'index,mid,display_name\n0,/m/a,"Speech"\n1,/m/b,"Music"\n2,/m/c,"Dog"\n'
FINETUNE = {"recipe": "finetune", "auto_augment": None, "reprob": 0.0, "remode": "pixel", "recount": 1}


def tone(path: Path, freq: float, seconds: float = 0.7) -> Path:
    """A sine (with a little deterministic noise, so no frame is silent) written with PyAV."""
    t = np.arange(int(seconds * RATE)) / RATE
    wave = 0.4 * np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(int(freq)).standard_normal(t.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    return encode_audio(path, wave, sample_rate=RATE)


def audioset_folder(root: Path) -> Path:
    """root/{train,eval}.json over 6 + 3 generated clips and the class csv; multi-hot labels."""
    train = [("a0", "/m/a,/m/c"), ("a1", "/m/a"), ("a2", "/m/b"), ("a3", "/m/b,/m/c"), ("a4", "/m/a"), ("a5", "/m/c")]
    heldout = [("e0", "/m/a"), ("e1", "/m/b,/m/a"), ("e2", "/m/c")]
    for split, rows in (("train", train), ("eval", heldout)):
        for i, (name, _) in enumerate(rows):
            tone(root / "audio" / f"{name}.wav", 200 + 150 * i + (40 if split == "eval" else 0))
        listing = {"data": [{"wav": f"audio/{name}.wav", "labels": labels} for name, labels in rows]}
        (root / f"{split}.json").write_text(json.dumps(listing))
    (root / "labels.csv").write_text(LABELS_CSV)
    return root


def audioset_data(root: Path, **extra) -> AudioDataConfig:
    return AudioDataConfig(
        root=str(root), train_split="train.json", heldout_split="eval.json", label_csv="labels.csv", **extra
    )


def test_audioset_json_gives_multi_hot_labels_in_the_csv_order(tmp_path):
    data = audioset_data(audioset_folder(tmp_path))
    modality = AudioModality()
    train = modality.build_labelled_dataset(data, TOKENIZER, split="train", augment=None)
    heldout = modality.build_labelled_dataset(data, TOKENIZER, split="heldout", augment=None)
    assert train.multi_label and heldout.multi_label
    assert train.classes == heldout.classes == ["Speech", "Music", "Dog"]
    # Written by hand from the lists above: columns Speech, Music, Dog.
    expected = [[1, 0, 1], [1, 0, 0], [0, 1, 0], [0, 1, 1], [1, 0, 0], [0, 0, 1]]
    for i, row in enumerate(expected):
        x, y = train[i]
        assert x.shape == (1, 64, 32) and y.dtype == torch.float32 and y.tolist() == row
    assert [heldout[i][1].tolist() for i in range(3)] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert train.labels[:2] == [(0, 2), (0,)]  # stored compactly (AudioSet-2M: 2M x 527 rows would be 4 GB)
    # The evaluation item is the plain feature pipeline on the centre window (no augmentation).
    wave = crop_waveform(load_waveform(tmp_path / "audio/e1.wav"), 160 * 63 + 400, mode="center")
    reference = features(wave, sample_rate=RATE, num_mel_bins=32, target_length=64, mean=data.mean, std=data.std)
    assert torch.equal(heldout[1][0], reference)
    # A single-label reading of the same list is refused where a clip has two labels, naming the clip.
    single = audioset_data(tmp_path, multi_label=False)
    with pytest.raises(DataError, match=r"a0\.wav has 2 labels"):
        modality.build_labelled_dataset(single, TOKENIZER, split="train", augment=None)


def test_esc50_fold_split_trains_on_the_other_folds_and_holds_out_fold_k(tmp_path):
    root = tmp_path / "ESC-50-master"
    rows = []
    for i in range(10):  # 5 folds x 2 clips; classes numbered by target, not by name
        fold, target = i // 2 + 1, i % 2
        category = ["dog", "rooster"][target]
        name = f"{fold}-{i:03d}-A-{target}.wav"
        tone(root / "audio" / name, 300 + 60 * i)
        rows.append(f"{name},{fold},{target},{category},False,{i},A")
    (root / "meta").mkdir()
    header = "filename,fold,target,category,esc10,src_file,take\n"
    (root / "meta/esc50.csv").write_text(header + "\n".join(rows))
    swap = {",0,dog,": ",1,dog,", ",1,rooster,": ",0,rooster,"}
    swapped = [next((r.replace(a, b) for a, b in swap.items() if a in r), r) for r in rows]
    (root / "meta/esc50_swapped.csv").write_text(header + "\n".join(swapped))  # dog is target 1 here
    data = AudioDataConfig(root=str(root), train_split="meta/esc50.csv", heldout_split=None, audio_dir="audio", fold=3)
    modality = AudioModality()
    train = modality.build_labelled_dataset(data, TOKENIZER, split="train", augment={"recipe": "linprobe"})
    heldout = modality.build_labelled_dataset(data, TOKENIZER, split="heldout", augment=None)
    assert not train.multi_label and train.classes == heldout.classes == ["dog", "rooster"]
    assert [p.name for p in heldout.clips.files] == ["3-004-A-0.wav", "3-005-A-1.wav"]
    assert sorted(p.name[0] for p in train.clips.files) == list("11224455")
    assert [heldout[i][1] for i in range(2)] == [0, 1]
    assert [train[i][1] for i in range(len(train))] == [0, 1] * 4
    swapped = AudioDataConfig(**{**data.__dict__, "train_split": "meta/esc50_swapped.csv"})
    assert modality.build_labelled_dataset(swapped, TOKENIZER, split="train", augment=None).classes == [
        "rooster",
        "dog",
    ]
    with pytest.raises(DataError, match=r"data\.fold=7 is not among the list's folds \[1, 2, 3, 4, 5\]"):
        modality.build_labelled_dataset(
            AudioDataConfig(**{**data.__dict__, "fold": 7}), TOKENIZER, split="train", augment=None
        )


def test_speech_commands_official_lists_split_the_class_folders(tmp_path):
    root = tmp_path / "speech_commands"
    for w, word in enumerate(["no", "yes", "up"]):
        for i in range(3):
            tone(root / word / f"spk{i}_nohash_0.wav", 200 + 100 * w + 20 * i, seconds=0.3)
    tone(root / "_background_noise_" / "white.wav", 50, seconds=0.3)
    (root / "validation_list.txt").write_text("yes/spk1_nohash_0.wav\nno/spk1_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("up/spk2_nohash_0.wav\nyes/spk2_nohash_0.wav\n")
    data = AudioDataConfig(
        root=str(root),
        train_split=".",
        heldout_split="testing_list.txt",
        multi_label=True,
        exclude_lists=["validation_list.txt", "testing_list.txt"],
    )
    modality = AudioModality()
    train = modality.build_labelled_dataset(data, TOKENIZER, split="train", augment=None)
    heldout = modality.build_labelled_dataset(data, TOKENIZER, split="heldout", augment=None)
    assert train.classes == heldout.classes == ["no", "up", "yes"]  # _background_noise_ is not a class
    assert sorted(f"{p.parent.name}/{p.name[:4]}" for p in train.clips.files) == [
        "no/spk0",
        "no/spk2",
        "up/spk0",
        "up/spk1",
        "yes/spk0",
    ]
    # multi_label: one-hot float rows (AudioMAE trains Speech Commands with BCE)
    assert [heldout[i][1].tolist() for i in range(2)] == [[0, 1, 0], [0, 0, 1]]
    assert heldout[0][0].shape == (1, 64, 32)


def test_spec_augment_masks_one_frequency_and_one_time_stripe_of_bounded_width():
    bank = torch.full((64, 32), 3.0)  # (T, F), no zeros of its own
    widths_t, widths_f = [], []
    for seed in range(200):
        torch.manual_seed(seed)
        out = spec_augment(bank, freqm=8, timem=20)
        zero = out == 0
        full_rows = zero.all(dim=1)  # time frames masked at every frequency: the time stripe
        full_cols = zero.all(dim=0)  # mel bins masked at every frame: the frequency stripe
        for stripe, widths in ((full_rows, widths_t), (full_cols, widths_f)):
            idx = torch.nonzero(stripe).flatten()
            if len(idx):
                assert idx[-1] - idx[0] + 1 == len(idx)  # one contiguous stripe
            widths.append(len(idx))
        # Every zero lies in one of the two stripes; everything else is untouched.
        assert torch.equal(zero, full_rows[:, None] | full_cols[None, :])
    # torchaudio draws a width uniform in [0, param): frequency stripes < 8 bins, time stripes < 20 frames,
    # and the time stripe does reach beyond 8 (so it runs along time, not along the mel axis).
    assert max(widths_f) <= 7 and 8 < max(widths_t) <= 19
    assert min(widths_f) == 0 and min(widths_t) == 0


def test_finetune_items_are_masked_before_normalization_and_eval_items_are_not(tmp_path):
    data = audioset_data(audioset_folder(tmp_path), freqm=8, timem=20, train_crop="start", eval_crop="start")
    modality = AudioModality()
    train = modality.build_labelled_dataset(data, TOKENIZER, split="train", augment=FINETUNE)
    probe = modality.build_labelled_dataset(data, TOKENIZER, split="train", augment={"recipe": "linprobe"})
    plain = modality.build_labelled_dataset(data, TOKENIZER, split="train", augment=None)
    stripe_value = (0 - data.mean) / (2 * data.std)  # a zeroed log-mel value, normalized
    found = 0
    for seed in range(6):
        with seeded(sample_seed(0, 0, seed)):
            x, _ = train[0]
        masked = (x[0] - stripe_value).abs() < 1e-6
        found += int(masked.any())
        assert torch.equal(x[0][~masked], plain[0][0][0][~masked])
    assert found >= 4  # most draws mask something (a width-0 stripe masks nothing)
    assert torch.equal(probe[0][0], plain[0][0])  # the probe recipe: no SpecAugment (start crop: same window)


def test_noise_adds_small_uniform_noise_then_rolls_along_time(tmp_path):
    data = audioset_data(audioset_folder(tmp_path), noise=True, train_crop="start", eval_crop="start")
    modality = AudioModality()
    train = modality.build_labelled_dataset(data, TOKENIZER, split="train", augment=FINETUNE)
    plain = modality.build_labelled_dataset(data, TOKENIZER, split="train", augment=None)[1][0][0]  # (T, F)
    with seeded(99):
        x, _ = train[1]
    with seeded(99):  # AudioMAE's dataset.py: fbank + rand(T, F) * rand() / 10, then roll by randint(-10, 10)
        expected = torch.roll(
            plain + torch.rand(64, 32) * float(np.random.rand()) / 10, int(np.random.randint(-10, 10)), 0
        )
    assert torch.allclose(x[0], expected, atol=1e-6)
    assert not torch.allclose(x[0], plain)


def test_in_dataset_mixup_mixes_waveforms_and_labels_with_one_beta_lambda(tmp_path):
    data = audioset_data(audioset_folder(tmp_path), mixup=1.0, train_crop="start")
    train = AudioModality().build_labelled_dataset(data, TOKENIZER, split="train", augment=FINETUNE)
    with seeded(1234):
        x, y = train[2]
    # The same draws by hand, in AudioMAE's order: mix or not, the uniform partner, lambda ~ Beta(10, 10).
    with seeded(1234):
        assert random.random() < 1.0
        j = random.randrange(6)
        lam = float(np.random.beta(10, 10))
    files = train.clips.files
    w1, w2 = load_waveform(files[2]), load_waveform(files[j])
    w2 = torch.nn.functional.pad(w2, (0, max(0, w1.shape[0] - w2.shape[0])))[: w1.shape[0]]
    mixed = lam * w1 + (1 - lam) * w2
    expected = features(
        mixed - mixed.mean(), sample_rate=RATE, num_mel_bins=32, target_length=64, mean=data.mean, std=data.std
    )
    assert torch.allclose(x, expected, atol=1e-5)
    assert torch.allclose(y, lam * train.target(2) + (1 - lam) * train.target(j))
    assert 0.0 < lam < 1.0 and y.sum() == pytest.approx(lam * train.target(2).sum() + (1 - lam) * train.target(j).sum())
    with pytest.raises(DataError, match=r"data\.mixup=0\.5 .* needs multi-label data"):
        LabelledClips(
            ClipList([files[0]], [0], ["a", "b"]),
            settings=SETTINGS,
            multi_label=False,
            crop="start",
            augmentation=Augmentation(mixup=0.5),
        )


def test_sample_weights_follow_audiomae_gen_weight_on_a_hand_computed_case(tmp_path):
    # Counts over the training list: Speech 3 (a0, a1, a4), Music 2 (a2, a3), Dog 3 (a0, a3, a5).
    speech, music, dog = 1000 / 3.01, 1000 / 2.01, 1000 / 3.01
    expected = [speech + dog, speech, music, music + dog, speech, dog]
    data = audioset_data(audioset_folder(tmp_path), repeats=2)
    train = AudioModality().build_labelled_dataset(data, TOKENIZER, split="train", augment=FINETUNE)
    assert len(train) == 12 and train.sample_weights() == pytest.approx(expected * 2, rel=1e-12)
    # Single-label lists: the same formula with one label per clip; classes without clips are ignored.
    assert balanced_sample_weights([0, 0, 1], 3) == pytest.approx([1000 / 2.01, 1000 / 2.01, 1000 / 1.01])


def test_eval_views_spread_windows_from_the_start_to_the_end_of_the_clip(tmp_path):
    tone(tmp_path / "long" / "a" / "x.wav", 440, seconds=2.0)
    tone(tmp_path / "long" / "b" / "y.wav", 660, seconds=0.3)  # shorter than a window: three equal views
    data = AudioDataConfig(root=str(tmp_path), train_split="long", heldout_split="long", eval_views=3)
    views = AudioModality().build_labelled_dataset(data, TOKENIZER, split="heldout", augment=None)
    assert views.num_views == 3
    x, label = views[0]
    assert x.shape == (3, 1, 64, 32) and label == 0
    wave = load_waveform(tmp_path / "long/a/x.wav")
    window = 160 * 63 + 400  # samples of 64 frames
    for v, start in enumerate([0, (wave.shape[0] - window) // 2, wave.shape[0] - window]):
        reference = features(
            wave[start : start + window],
            sample_rate=RATE,
            num_mel_bins=32,
            target_length=64,
            mean=data.mean,
            std=data.std,
        )
        assert torch.allclose(x[v], reference, atol=1e-5), v
    short, _ = views[1]
    assert torch.equal(short[0], short[2])


def test_demo_configs_read_the_generated_classes(tmp_path, monkeypatch):
    generate_demo_sounds(tmp_path / "demo", train_per_class=2, heldout_per_class=2)
    for name in ("demo_audio_finetune", "demo_audio_linprobe"):
        cfg = load_config(name, [f"data.root={tmp_path / 'demo'}"])
        assert cfg.head.modality == "audio" and cfg.head.checkpoint == "runs/demo_audio/checkpoint-0016.pt"
        tokenizer = AudioTokenizerConfig(target_length=256)  # demo_audio's tokenizer
        heldout = AudioModality().build_labelled_dataset(cfg.data, tokenizer, split="heldout", augment=None)
        assert heldout.classes == sorted(CLASSES) and len(heldout) == 6
        names = [p.name for p in heldout.clips.files]
        assert [heldout.classes[y] for y in heldout.labels] == [n[4:-4] for n in names]  # 000_chirp.wav -> chirp
    assert load_config("demo_audio").train.epochs == 16  # the checkpoint the demo configs name


def test_pretrain_finetune_linprobe_eval_through_the_cli(tmp_path, capsys):
    from anymae.core.cli import main
    from anymae.core.io.checkpoint import read_checkpoint

    root = audioset_folder(tmp_path / "as")
    pretrain = {
        "name": "tiny_audio",
        "model": {
            "modality": "audio",
            "tokenizer": {"target_length": 64, "num_mel_bins": 32, "patch_size": 16},
            "mask_ratio": 0.5,
            "embed_dim": 32,
            "depth": 1,
            "num_heads": 2,
            "decoder_embed_dim": 16,
            "decoder_depth": 1,
            "decoder_num_heads": 2,
        },
        "data": {
            "root": str(root),
            "train_split": "train.json",
            "heldout_split": "eval.json",
            "label_csv": "labels.csv",
        },
        "optim": {"blr": 1.0e-3, "warmup_epochs": 0},
        "train": {
            "epochs": 1,
            "batch_size": 2,
            "num_workers": 0,
            "device": "cpu",
            "pin_memory": False,
            "output_dir": str(tmp_path / "runs"),
            "figure_samples": 2,
            "heldout_batches": 1,
        },
    }
    config = tmp_path / "tiny_audio.yaml"
    config.write_text(yaml.safe_dump(pretrain))
    assert main(["pretrain", str(config), "--no-progress"]) == 0
    pretrained = next((tmp_path / "runs" / "tiny_audio").glob("checkpoint-*.pt"))

    common = [
        f"data.root={root}",
        "data.train_split=train.json",
        "data.heldout_split=eval.json",
        "data.label_csv=labels.csv",
        "data.mean=-5.0",
        "data.std=4.0",
        "data.repeats=1",
        "train.epochs=1",
        "train.batch_size=2",
        "train.num_workers=0",
        "train.pin_memory=false",
        "train.device=cpu",
        f"train.output_dir={tmp_path / 'cls'}",
    ]
    capsys.readouterr()
    ft = [
        "finetune",
        "demo_audio_finetune",
        f"finetune.checkpoint={pretrained}",
        "data.freqm=8",
        "data.timem=16",
        "data.mixup=0.5",
        "finetune.label_smoothing=0.0",
        "finetune.balanced_sampling=true",
        *common,
    ]
    assert main([*ft, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"mAP \d+\.\d+", out), out
    finetuned = read_checkpoint(tmp_path / "cls" / "demo_audio_finetune" / "checkpoint-last.pt")
    assert finetuned["config"]["classes"] == ["Speech", "Music", "Dog"]

    lp = ["linprobe", "demo_audio_linprobe", "preset=lars", f"linprobe.checkpoint={pretrained}", *common]
    assert main([*lp, "--no-progress"]) == 0
    probe = tmp_path / "cls" / "demo_audio_linprobe" / "checkpoint-last.pt"
    capsys.readouterr()
    assert main(["eval", str(probe), "--device", "cpu"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("heldout: 3 samples") and re.search(r"mAP \d+\.\d+", line), line
