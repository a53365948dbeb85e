"""Filter-bank features and statistics: parity with a direct kaldi.fbank call and AudioMAE's normalization."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchaudio.compliance import kaldi

from anymae.modalities.audio.data import AudioClips, ClipList, FeatureSettings
from anymae.modalities.audio.encode import encode_audio
from anymae.modalities.audio.features import AUDIOSET_MEAN, AUDIOSET_STD, features
from anymae.modalities.audio.stats import fbank_stats, main

AUDIOSET_T, AUDIOSET_F = 1024, 128


def reference_input(
    wave: torch.Tensor, target_length: int, mean: float, std: float, *, remove_mean: bool = True
) -> torch.Tensor:
    """AudioMAE's dataset.py pipeline written out: the clip's mean subtracted, kaldi fbank, pad/cut frames,
    (x - m) / (2 s). The mean subtraction changes nothing but rounding: kaldi's ``remove_dc_offset`` (on by
    default) subtracts each frame's own mean before the window anyway."""
    if remove_mean:
        wave = wave - wave.mean()
    bank = kaldi.fbank(
        wave[None],
        htk_compat=True,
        sample_frequency=16000,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=128,
        dither=0.0,
        frame_shift=10,
    )
    p = target_length - bank.shape[0]
    bank = torch.nn.ZeroPad2d((0, 0, 0, p))(bank) if p > 0 else bank[:target_length]
    return ((bank - mean) / (std * 2))[None]


def test_features_equal_a_direct_kaldi_fbank_call_with_audiomae_settings():
    g = torch.Generator().manual_seed(0)
    wave = 0.1 * torch.randn(16000 * 10, generator=g) + 0.05  # 10 s: 998 frames, padded to 1024
    wave = wave - wave.mean()
    ours = features(wave, sample_rate=16000, num_mel_bins=128, target_length=1024, mean=AUDIOSET_MEAN, std=AUDIOSET_STD)
    ref = reference_input(wave, 1024, AUDIOSET_MEAN, AUDIOSET_STD, remove_mean=False)
    assert ours.shape == (1, AUDIOSET_T, AUDIOSET_F)
    assert torch.equal(ours, ref)
    # The last 26 frames are AudioMAE's zero padding, normalized.
    assert torch.allclose(ours[0, 998:], torch.full((26, 128), (0 - AUDIOSET_MEAN) / (2 * AUDIOSET_STD)))


def test_a_file_goes_through_decode_mean_removal_crop_and_fbank_as_audiomae(tmp_path):
    rng = np.random.default_rng(1)
    signal = 0.2 * rng.standard_normal(16000 * 3) + 0.1
    path = encode_audio(tmp_path / "noise.flac", signal, sample_rate=16000)  # flac: lossless at 16 bits
    settings = FeatureSettings(sample_rate=16000, num_mel_bins=128, target_length=256, mean=-5.0, std=3.0)
    x = AudioClips(ClipList([path], None, []), settings=settings, crop="start")[0]
    # What the file holds, from the signal itself: float32 samples scaled by 2**15, rounded and clipped to
    # 16 bits (FFmpeg's flt -> s16), read back as s16 / 2**15.
    stored = np.clip(np.round(signal.astype(np.float32).astype(np.float64) * 2**15), -(2**15), 2**15 - 1) / 2**15
    # AudioMAE subtracts the whole file's mean (see reference_input), then keeps the first target_length frames.
    assert torch.allclose(x, reference_input(torch.from_numpy(stored).float(), 256, -5.0, 3.0), atol=1e-5)


def test_long_clips_are_cut_to_target_length_frames():
    wave = torch.randn(16000 * 12, generator=torch.Generator().manual_seed(2))
    x = features(wave, sample_rate=16000, num_mel_bins=128, target_length=1024, mean=0.0, std=0.5)
    assert x.shape == (1, 1024, 128)
    full = kaldi.fbank(wave[None], htk_compat=True, sample_frequency=16000, use_energy=False,
                       window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)  # fmt: skip
    assert torch.equal(x[0], full[:1024] / 1.0)  # mean 0, 2 * std = 1


@pytest.mark.parametrize("target_length", [512, 128])
def test_other_target_lengths(target_length):
    wave = torch.randn(16000 * 2, generator=torch.Generator().manual_seed(3))
    wave = wave - wave.mean()
    x = features(wave, sample_rate=16000, num_mel_bins=128, target_length=target_length, mean=-6.6, std=5.4)
    assert x.shape == (1, target_length, 128)
    assert torch.equal(x, reference_input(wave, target_length, -6.6, 5.4, remove_mean=False))


def test_fbank_stats_are_the_mean_and_std_over_all_padded_frames(tmp_path):
    rng = np.random.default_rng(4)
    files = [
        encode_audio(tmp_path / f"c{i}.wav", a * rng.standard_normal(int(s * 16000)), sample_rate=16000)
        for i, (a, s) in enumerate([(0.05, 0.5), (0.3, 1.2), (0.1, 0.8)])
    ]
    mean, std = fbank_stats(files, num_mel_bins=64, target_length=100)
    banks = []
    for f in files:
        x = AudioClips(
            ClipList([f], None, []),
            settings=FeatureSettings(sample_rate=16000, num_mel_bins=64, target_length=100, mean=0.0, std=0.5),
            crop="center",
        )[0]
        banks.append(x)  # mean 0, 2 * std = 1: the raw padded fbank
    stacked = torch.cat(banks).double()
    assert mean == pytest.approx(stacked.mean().item(), abs=1e-5)
    assert std == pytest.approx(stacked.std().item(), abs=1e-5)
    # Normalizing with these statistics gives mean 0 and std 1/2, as AudioMAE's inputs have on AudioSet.
    normalized = (stacked - mean) / (2 * std)
    assert abs(normalized.mean().item()) < 1e-6 and normalized.std().item() == pytest.approx(0.5, abs=1e-6)


def test_stats_command_prints_config_lines(tmp_path, capsys):
    folder = tmp_path / "sounds"
    folder.mkdir()
    for i in range(2):
        encode_audio(folder / f"{i}.wav", 0.1 * np.sin(np.arange(8000) * (0.1 + i)), sample_rate=16000)
    assert main([str(folder), "--target-length", "64", "--num-mel-bins", "32"]) == 0
    out = capsys.readouterr().out
    mean, std = fbank_stats(sorted(folder.glob("*.wav")), num_mel_bins=32, target_length=64)
    assert f"mean: {mean:.7g}" in out and f"std: {std:.7g}" in out
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2
