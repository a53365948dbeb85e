"""Audio decoding: every format PyAV writes here, any rate/channel count -> mono 16 kHz; bad files."""

from __future__ import annotations

import warnings
from wave import open as open_wav

import numpy as np
import pytest
import torch
import torchaudio.functional as AF

from anymae.core.data.samples import BadSampleError, DataError, SafeDataset
from anymae.modalities.audio.data import AudioClips, ClipList, FeatureSettings
from anymae.modalities.audio.decode import crop_waveform, decode_audio, load_waveform, roll_mag_augment
from anymae.modalities.audio.encode import CODECS, encode_audio
from anymae.modalities.audio.features import features, samples_for_frames


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)


def dominant_frequency(wave: torch.Tensor, rate: int) -> float:
    spectrum = torch.fft.rfft(wave * torch.hann_window(wave.shape[0], dtype=wave.dtype)).abs()
    return float(torch.argmax(spectrum)) * rate / wave.shape[0]


@pytest.mark.parametrize("ext", sorted(CODECS))
@pytest.mark.parametrize(("rate", "channels"), [(16000, 1), (44100, 2), (22050, 1)])
def test_every_format_decodes_to_mono_16khz_with_the_right_pitch_and_length(tmp_path, ext, rate, channels):
    signal = np.stack([tone(440, 0.5, rate)] * channels)
    path = encode_audio(tmp_path / f"clip{ext}", signal, sample_rate=rate)
    out = decode_audio(path)
    assert out.dtype == torch.float32 and out.ndim == 1
    # Lossy codecs add priming/padding; the duration stays within 1000 samples (0.06 s) of 0.5 s.
    assert abs(out.shape[0] - 8000) <= 1000, out.shape
    assert abs(dominant_frequency(out, 16000) - 440) < 4
    assert 0.4 < float(out.abs().max()) < 0.6


def write_pcm16(path, samples: np.ndarray, rate: int) -> np.ndarray:
    """A 16-bit mono WAV written with the standard library (independent of FFmpeg) -> the int16 samples."""
    pcm = np.round(samples * 32767).astype("<i2")
    with open_wav(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm.tobytes())
    return pcm


def test_pcm_wav_at_16khz_decodes_to_the_exact_samples(tmp_path):
    pcm = write_pcm16(tmp_path / "a.wav", tone(300, 0.25, 16000), 16000)
    out = decode_audio(tmp_path / "a.wav")
    assert torch.equal(out.double(), torch.from_numpy(pcm / 32768.0))  # s16 -> float is x / 2^15


def test_other_rates_are_resampled_with_torchaudio(tmp_path):
    pcm = write_pcm16(tmp_path / "a.wav", tone(1000, 0.3, 44100), 44100)
    out = decode_audio(tmp_path / "a.wav")
    expected = AF.resample(torch.from_numpy(pcm / 32768.0).float(), orig_freq=44100, new_freq=16000)
    assert torch.allclose(out, expected, atol=1e-6)


def test_channels_are_averaged_not_just_the_first_taken(tmp_path):
    left = tone(440, 0.25, 16000)
    out = decode_audio(encode_audio(tmp_path / "s.wav", np.stack([left, -left]), sample_rate=16000))
    assert float(out.abs().max()) < 1e-4  # (L + R) / 2 = 0, whereas channel 0 alone is a loud tone
    out = decode_audio(encode_audio(tmp_path / "t.wav", np.stack([left, np.zeros_like(left)]), sample_rate=16000))
    assert abs(float(out.abs().max()) - 0.25) < 1e-3


def test_load_waveform_removes_the_mean(tmp_path):
    wave = tone(500, 0.2, 16000, amplitude=0.3) + 0.2
    out = load_waveform(encode_audio(tmp_path / "dc.wav", wave, sample_rate=16000))
    assert abs(float(out.mean())) < 1e-6
    assert abs(float(decode_audio(tmp_path / "dc.wav").mean()) - 0.2) < 1e-3


def test_crop_modes_pick_the_documented_window():
    wave = torch.arange(100.0)
    assert torch.equal(crop_waveform(wave, 40, mode="start"), torch.arange(40.0))
    assert torch.equal(crop_waveform(wave, 40, mode="center"), torch.arange(30.0, 70.0))
    g = torch.Generator().manual_seed(0)
    starts = {int(crop_waveform(wave, 40, mode="random", generator=g)[0]) for _ in range(50)}
    assert len(starts) > 10 and min(starts) >= 0 and max(starts) <= 60
    assert torch.equal(crop_waveform(wave[:30], 40, mode="random"), wave[:30])  # shorter: untouched
    with pytest.raises(ValueError, match="crop mode"):
        crop_waveform(wave, 40, mode="middle")


def test_roll_mag_aug_scales_by_beta_10_10_plus_half():
    rng = np.random.default_rng(0)
    scales = [float(roll_mag_augment(torch.ones(4), generator=rng)[0]) for _ in range(2000)]
    assert min(scales) >= 0.5 and max(scales) <= 1.5
    assert abs(np.mean(scales) - 1.0) < 0.01  # Beta(10, 10) has mean 1/2
    assert abs(np.std(scales) - np.sqrt(100 / (400 * 21))) < 0.01  # and variance ab/((a+b)^2 (a+b+1))


# --- bad inputs ---------------------------------------------------------------------------------------
SETTINGS = FeatureSettings(sample_rate=16000, num_mel_bins=32, target_length=64, mean=-4.0, std=4.0)


def test_a_silent_file_decodes_to_the_log_floor_of_the_filter_bank(tmp_path):
    path = encode_audio(tmp_path / "silent.wav", np.zeros(16000), sample_rate=16000)
    x = AudioClips(ClipList([path], None, []), settings=SETTINGS, crop="center")[0]
    floor = float(np.log(np.finfo(np.float32).eps))  # kaldi's log(max(energy, eps))
    assert x.shape == (1, 64, 32)
    assert torch.allclose(x, torch.full_like(x, (floor - SETTINGS.mean) / (2 * SETTINGS.std)))


def test_a_tenth_of_a_second_is_zero_padded_in_the_fbank_domain(tmp_path):
    path = encode_audio(tmp_path / "short.wav", tone(800, 0.1, 16000), sample_rate=16000)
    x = AudioClips(ClipList([path], None, []), settings=SETTINGS, crop="center")[0]
    frames = 1 + (1600 - 400) // 160  # 8 frames of real audio
    pad_value = (0 - SETTINGS.mean) / (2 * SETTINGS.std)
    assert torch.allclose(x[0, frames:], torch.full_like(x[0, frames:], pad_value))
    assert not torch.allclose(x[0, frames - 1], torch.full_like(x[0, 0], pad_value))


def test_a_clip_shorter_than_one_window_gives_only_padding():
    x = features(torch.zeros(100), sample_rate=16000, num_mel_bins=32, target_length=8, mean=0.0, std=1.0)
    assert x.shape == (1, 8, 32) and torch.equal(x, torch.zeros_like(x))
    assert samples_for_frames(1024, 16000) == 164080


@pytest.mark.parametrize("name", ["text.wav", "corrupt.mp3", "truncated.mp3"])
def test_unreadable_files_raise_naming_the_file(tmp_path, name):
    path = tmp_path / name
    if name == "text.wav":
        path.write_text("this is not audio\n" * 20)
    else:
        good = encode_audio(tmp_path / "good.mp3", tone(440, 1.0, 16000), sample_rate=16000).read_bytes()
        noise = np.random.default_rng(0).integers(0, 256, len(good), dtype=np.uint8).tobytes()
        path.write_bytes(good[:10] + noise[10:] if name == "corrupt.mp3" else good[:200])
    with pytest.raises(BadSampleError, match=name):
        decode_audio(path)


def test_an_empty_file_and_a_missing_file_raise_naming_the_file(tmp_path):
    (tmp_path / "empty.flac").write_bytes(b"")
    for name in ("empty.flac", "missing.wav"):
        with pytest.raises(BadSampleError, match=name):
            decode_audio(tmp_path / name)


def test_safe_dataset_warns_and_substitutes_a_good_clip(tmp_path):
    good = [encode_audio(tmp_path / f"g{i}.wav", tone(300 + 200 * i, 1.0, 16000), sample_rate=16000) for i in range(3)]
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    clips = AudioClips(ClipList([good[0], bad, good[1], good[2]], None, []), settings=SETTINGS, crop="center")
    safe = SafeDataset(clips, max_bad_fraction=0.5)
    with pytest.warns(UserWarning, match=r"bad\.wav"):
        substitute = safe[1]
    assert torch.equal(substitute["input"], clips[2]) and substitute["bad"] == 1  # the next readable clip
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: the same bad file is skipped silently afterwards
        assert torch.equal(safe[1]["input"], clips[2])
    assert safe[0]["bad"] == 0 and torch.equal(safe[0]["input"], clips[0])
    strict = SafeDataset(clips, max_bad_fraction=0.0)
    with pytest.raises(DataError, match=r"bad\.wav"), pytest.warns(UserWarning):
        strict[1]


@pytest.mark.parametrize(("codec", "sample_format", "layout"), [
    ("pcm_s16le", "s16", "stereo"), ("pcm_s16le", "s16", "mono"), ("pcm_s32le", "s32", "stereo"),
    ("pcm_f32le", "flt", "stereo"), ("flac", "s16", "stereo"),
])  # fmt: skip
def test_pcm_and_float_frames_convert_exactly_as_the_resampler_does(
    tmp_path, monkeypatch, codec, sample_format, layout
):
    """Issue 20: integer and float frames are converted in numpy instead of one AudioResampler call per frame;
    the samples must be those the resampler gives."""
    import av

    from anymae.modalities.audio import decode as audio_decode

    path = tmp_path / f"x_{codec}_{layout}.{'flac' if codec == 'flac' else 'wav'}"
    channels = 2 if layout == "stereo" else 1
    rng = np.random.default_rng(0)
    data = np.clip(rng.normal(0, 0.3, size=(channels, 9000)), -1, 1).astype(np.float32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=22050, layout=layout)
        resampler = av.AudioResampler(format=sample_format, layout=layout, rate=22050)
        frame = av.AudioFrame.from_ndarray(data, format="fltp", layout=layout)
        frame.sample_rate = 22050
        for out in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(out):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    fast = audio_decode.decode_audio(path, sample_rate=22050)
    monkeypatch.setattr(audio_decode, "_as_float", lambda frame: None)  # every frame through the resampler
    reference = audio_decode.decode_audio(path, sample_rate=22050)
    assert fast.shape == reference.shape == (9000,)
    assert torch.equal(fast, reference)
