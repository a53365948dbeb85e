"""Weighted k-NN on frozen features (issue 15): DINO's vote against hand-computed cases, feature extraction
against ``model.encode``, and ``anymae knn`` through the command line."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_mae
from PIL import Image

from anymae.core.cli import main
from anymae.core.data.samples import DataError, DatasetTraits, DatasetWithTraits
from anymae.core.evaluate.knn import extract_features, knn_accuracy, knn_classify
from anymae.core.io.checkpoint import export_safetensors


def test_two_well_separated_clusters_are_classified_100_percent() -> None:
    g = torch.Generator().manual_seed(0)
    centre = torch.randn(16, generator=g)
    a = centre + 0.1 * torch.randn(50, 16, generator=g)  # class 0 around +centre
    b = -centre + 0.1 * torch.randn(50, 16, generator=g)  # class 1 around -centre: cosine ~ -1 across classes
    train, labels = torch.cat([a[:40], b[:40]]), torch.tensor([0] * 40 + [1] * 40)
    queries, truth = torch.cat([a[40:], b[40:]]), torch.tensor([0] * 10 + [1] * 10)

    scores = knn_classify(train, labels, queries, k=20, temperature=0.07)

    assert scores.shape == (20, 2)
    assert torch.equal(scores.argmax(dim=1), truth)


def test_scores_equal_a_hand_computed_weighted_vote() -> None:
    train = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [-1.0, 0.0]])  # classes 0, 1, 1, 2
    labels = torch.tensor([0, 1, 1, 2])
    query = torch.tensor([[5.0, 0.0], [1.0, 1.0]])
    t = 0.5
    # Query 1 = direction (1, 0): cosines 1, 0, 1/sqrt(2), -1; k=2 keeps rows 0 (class 0) and 2 (class 1).
    # Query 2 = direction (1, 1)/sqrt(2): cosines 1/sqrt(2), 1/sqrt(2), 1, -1/sqrt(2); k=2 keeps row 2 (class 1)
    # and one of the tied rows 0 / 1: pick k=3 to keep both.
    s = 1 / math.sqrt(2)
    expected_k2 = [[math.exp(1 / t), math.exp(s / t), 0.0]]
    expected_k3 = [[math.exp(s / t), math.exp(s / t) + math.exp(1 / t), 0.0]]

    scores_k2 = knn_classify(train, labels, query[:1], k=2, temperature=t, num_classes=3)
    scores_k3 = knn_classify(train, labels, query[1:], k=3, temperature=t, num_classes=3)

    assert torch.allclose(scores_k2, torch.tensor(expected_k2), rtol=1e-5)
    assert torch.allclose(scores_k3, torch.tensor(expected_k3), rtol=1e-5)


def test_vote_matches_a_numpy_reference_on_random_features() -> None:
    rng = np.random.default_rng(1)
    train, labels, queries = rng.normal(size=(30, 5)), rng.integers(0, 4, 30), rng.normal(size=(7, 5))
    k, t = 6, 0.1
    tn = train / np.linalg.norm(train, axis=1, keepdims=True)
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    expected = np.zeros((7, 4))
    for i, q in enumerate(qn):
        sims = tn @ q
        for j in np.argsort(-sims)[:k]:
            expected[i, labels[j]] += np.exp(sims[j] / t)

    scores = knn_classify(
        torch.from_numpy(train),
        torch.from_numpy(labels),
        torch.from_numpy(queries),
        k=k,
        temperature=t,
        num_classes=4,
        chunk=3,
    )

    assert np.allclose(scores.numpy(), expected, rtol=1e-4)


def test_k_above_the_training_count_uses_every_training_row() -> None:
    scores = knn_classify(torch.eye(2), torch.tensor([0, 1]), torch.tensor([[1.0, 1.0]]), k=20, temperature=1.0)
    assert torch.allclose(scores, torch.full((1, 2), math.exp(1 / math.sqrt(2))))


def test_bad_arguments_name_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="same D"):
        knn_classify(torch.zeros(3, 4), torch.zeros(3, dtype=torch.long), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="k must be at least 1"):
        knn_classify(torch.zeros(3, 4), torch.zeros(3, dtype=torch.long), torch.zeros(2, 4), k=0)


class _Labelled(DatasetWithTraits):
    def __init__(self, x: torch.Tensor, y: list[int], *, multi_label: bool = False) -> None:
        self.x, self.y = x, y
        self.traits = DatasetTraits(classes=("a", "b"), multi_label=multi_label)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], self.y[i]


def _tiny_model(cls_token: bool = True):
    return tiny_mae(cls_token=cls_token)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_extracted_features_are_the_unmasked_encoder_output(pool: str) -> None:
    model = _tiny_model()
    x = torch.randn(5, 3, 16, 16)
    feats, labels = extract_features(
        model, _Labelled(x, [0, 1, 0, 1, 1]), batch_size=2, device=torch.device("cpu"), pool=pool
    )
    with torch.no_grad():
        tokens = model.encode(x)  # (N, 1 + L, D)
    expected = tokens[:, 0] if pool == "cls" else tokens[:, 1:].mean(dim=1)
    assert torch.allclose(feats, expected, atol=1e-6)
    assert labels.tolist() == [0, 1, 0, 1, 1]


def test_cls_pool_without_a_cls_token_is_refused_and_mean_is_the_default() -> None:
    model = _tiny_model(cls_token=False)
    data = _Labelled(torch.randn(2, 3, 16, 16), [0, 1])
    with pytest.raises(ValueError, match="needs a CLS token"):
        extract_features(model, data, batch_size=2, device=torch.device("cpu"), pool="cls")
    feats, _ = extract_features(model, data, batch_size=2, device=torch.device("cpu"))
    assert torch.allclose(feats, model.encode(data.x).mean(dim=1).detach(), atol=1e-6)


def test_multi_label_data_is_refused() -> None:
    data = _Labelled(torch.randn(2, 3, 16, 16), [0, 1], multi_label=True)
    with pytest.raises(DataError, match="multi-label"):
        knn_accuracy(_tiny_model(), data, data, batch_size=2, device=torch.device("cpu"))


def _colour_folder(root: Path) -> Path:
    """root/{train,val}/{red,blue}/: noisy solid-colour squares, trivially separable by any encoder."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 3)):
        for name, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(np.array(colour) + rng.normal(0, 20, size=(16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def _noisy_classes(root: Path, classes: int = 12) -> Path:
    """root/{train,val}/cNN/: 16x16 noise around one random colour per class, so noisy that a random encoder's
    k-NN gets some held-out items wrong: top-1 and top-5 are not 100% by construction."""
    rng = np.random.default_rng(3)
    for c in range(classes):
        colour = rng.uniform(60, 200, size=3)
        for split, count in (("train", 6), ("val", 3)):
            (root / split / f"c{c:02d}").mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(colour + rng.normal(0, 90, size=(16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / f"c{c:02d}" / f"{i}.png")
    return root


def _numpy_topk(model, root: Path, *, k: int, t: float) -> tuple[float, float]:
    """DINO's weighted k-NN written out in numpy: the CLS features of the evaluation inputs (PIL: 16 -> 18 px
    bicubic, centre 16 crop, ImageNet normalization), cosine similarity, the k nearest vote exp(sim / T) for their
    class; top-1 / top-5 accuracy (%) of the held-out split."""
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])

    def features(split: str) -> tuple[np.ndarray, np.ndarray]:
        files = sorted((root / split).glob("*/*.png"))
        x = []
        for f in files:
            with Image.open(f) as im:
                pixels = np.asarray(im.convert("RGB").resize((18, 18), Image.BICUBIC).crop((1, 1, 17, 17)), float)
            x.append(((pixels / 255 - mean) / std).transpose(2, 0, 1))
        with torch.no_grad():
            cls = model.encode(torch.tensor(np.stack(x), dtype=torch.float32))[:, 0].double().numpy()
        return cls / np.linalg.norm(cls, axis=1, keepdims=True), np.array([int(f.parent.name[1:]) for f in files])

    (train, train_y), (val, val_y) = features("train"), features("val")
    sims = val @ train.T  # (N_val, N_train)
    top1 = top5 = 0
    for row, truth in zip(sims, val_y, strict=True):
        scores = np.zeros(train_y.max() + 1)
        for j in np.argsort(-row)[:k]:
            scores[train_y[j]] += np.exp(row[j] / t)
        rank = int((scores > scores[truth]).sum())
        assert scores[truth] > 0 or (scores > 0).sum() >= 5  # no tie at zero decides a top-5 answer
        top1 += rank == 0 and scores[truth] > 0
        top5 += rank < 5 and scores[truth] > 0
    return 100 * top1 / len(val_y), 100 * top5 / len(val_y)


def test_knn_command_prints_top1_and_top5_of_the_heldout_split(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = _tiny_model()
    checkpoint = export_safetensors(model, tmp_path / "random.safetensors")
    root = _noisy_classes(tmp_path / "noise")

    code = main(["knn", str(checkpoint), f"data.root={root}", "data.heldout_split=val", "--k", "30", "--no-progress",
                 "--device", "cpu"])  # fmt: skip

    out = capsys.readouterr().out
    assert code == 0, out
    match = re.search(r"k-NN \(k=30, T=0\.07, cls features\): top-1 (\d+\.\d)%  top-5 (\d+\.\d)%  \(36 held-out", out)
    assert match, out
    top1, top5 = _numpy_topk(model, root, k=30, t=0.07)
    assert 0 < top1 < top5 < 100, (top1, top5)  # neither number is trivial on this data
    assert (float(match[1]), float(match[2])) == (round(top1, 1), round(top5, 1))


def test_knn_command_reads_the_data_section_of_a_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    checkpoint = export_safetensors(_tiny_model(), tmp_path / "random.safetensors")
    root = _colour_folder(tmp_path / "colours")
    config = tmp_path / "probe.yaml"
    config.write_text(f"data:\n  root: {root}\n  heldout_split: nowhere\n")

    assert main(["knn", str(checkpoint), str(config), "data.heldout_split=val", "--no-progress"]) == 0
    assert "(6 held-out vs 12 training items)" in capsys.readouterr().out

    assert main(["knn", str(checkpoint), str(config), "train.epochs=3"]) == 1
    assert "takes data.KEY=VALUE overrides only, got 'train.epochs=3'" in capsys.readouterr().err


class _Unreadable(_Labelled):
    """``_Labelled`` whose items at ``bad`` raise as a corrupt file does."""

    def __init__(self, x: torch.Tensor, y: list[int], bad: set[int]) -> None:
        super().__init__(x, y)
        self.bad = bad

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if i in self.bad:
            raise OSError(f"cannot identify image file 'item{i}.jpg'")
        return super().__getitem__(i)


def test_skipping_unreadable_items_gives_the_features_of_the_readable_ones_only() -> None:
    model = _tiny_model()
    x, y = torch.randn(6, 3, 16, 16), [0, 1, 0, 1, 1, 0]
    keep = [0, 1, 3, 4]  # items 2 and 5 (the last: its stand-in wraps round to item 0) are unreadable
    with pytest.warns(UserWarning, match="item2.jpg"):
        feats, labels = extract_features(model, _Unreadable(x, y, {2, 5}), batch_size=4, device=torch.device("cpu"),
                                         skip_unreadable=True)  # fmt: skip
    with torch.no_grad():
        expected = model.encode(x[keep])[:, 0]  # (4, D): the CLS features of the readable items alone
    assert torch.allclose(feats, expected, atol=1e-6)
    assert labels.tolist() == [y[i] for i in keep]


def test_knn_command_skips_and_counts_corrupt_image_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    checkpoint = export_safetensors(_tiny_model(), tmp_path / "random.safetensors")
    root = _colour_folder(tmp_path / "colours")
    args = ["knn", str(checkpoint), f"data.root={root}", "data.heldout_split=val", "--k", "3", "--no-progress"]
    assert main(args) == 0
    clean = capsys.readouterr().out.strip()
    corrupt = [root / "train" / "red" / "zz.jpg", root / "val" / "blue" / "zz.jpg"]
    for path in corrupt:
        path.write_bytes(b"\xff\xd8 not a jpeg at all" * 10)

    assert main(args) == 0

    captured = capsys.readouterr()
    out = captured.out.strip()
    assert out == clean.replace("training items)", "training items; 2 unreadable files skipped)"), (out, clean)
    named = [line for line in captured.err.splitlines() if "unreadable" in line]
    assert len(named) == 2 and all(any(str(p) in m for m in named) for p in corrupt), captured.err
    assert all(line.startswith("anymae knn: warning: skipping unreadable sample (") for line in named), named
    assert not any("in its place" in line for line in named)  # skipped, not replaced
