"""The classifier loop's extension points for other modalities, each against a hand computation: multi-label
scoring (mAP, BCE), multi-view evaluation, class-balanced sampling, Mixup/CutMix on clips, and token dropping
during fine-tuning."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
from timm.data import Mixup
from torch import nn

from anymae.core.build.classifier import build_classifier
from anymae.core.build.models import build_model
from anymae.core.config import resolve_model_config
from anymae.core.data.samples import DataError, DatasetTraits, DatasetWithTraits, EpochSampler
from anymae.core.evaluate.classification import evaluate, view_scores
from anymae.core.evaluate.metrics import average_precision, mean_average_precision, topk_correct
from anymae.core.train.task_classify import FrameMixup, MultiLabelMixup

TINY_MODEL = {
    "modality": "image",
    "tokenizer": {"img_size": 32, "patch_size": 8, "in_chans": 3},
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 2,
    "decoder_embed_dim": 16,
    "decoder_depth": 1,
    "decoder_num_heads": 2,
}


# --- metrics ---------------------------------------------------------------------------------------------
def test_average_precision_matches_hand_computed_cases() -> None:
    # Ranks 1..4 with positives at 1 and 3: P@1 = 1, P@3 = 2/3, each worth half the recall.
    assert average_precision(torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([1, 0, 1, 0])) == pytest.approx(5 / 6)
    # A tie at the top is one threshold: (tp 1 of 2 seen) at recall 1/2, then 2 of 3 at recall 1.
    assert average_precision(torch.tensor([0.9, 0.9, 0.5]), torch.tensor([1, 0, 1])) == pytest.approx(0.25 + 1 / 3)
    # Perfect ranking and no positives.
    assert average_precision(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([1, 1, 0])) == pytest.approx(1.0)
    assert average_precision(torch.tensor([3.0, 2.0]), torch.tensor([0, 0])) != average_precision(
        torch.tensor([3.0, 2.0]), torch.tensor([0, 0])
    )  # NaN


def test_mean_average_precision_skips_classes_without_positives() -> None:
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.8, 0.7, 0.4], [0.7, 0.2, 0.3]])
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # class 0: positives at ranks 1 and 3 -> 1/2 + 1/2 * 2/3; class 1: rank 1 -> 1; class 2: no positive.
    assert mean_average_precision(scores, labels) == pytest.approx(((0.5 + 1 / 3) + 1.0) / 2)


def test_topk_counts_a_multi_hot_row_when_a_top_class_is_positive() -> None:
    logits = torch.tensor([[0.1, 0.9, 0.5], [0.9, 0.1, 0.5]])
    labels = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 1.0]])
    assert topk_correct(logits, labels, ks=(1, 2)) == [1, 2]


# --- balanced sampling -----------------------------------------------------------------------------------
def test_weighted_sampler_draws_in_proportion_and_never_a_zero_weight() -> None:
    weights = [1.0, 3.0, 0.0, 4.0]
    counts: Counter[int] = Counter()
    sampler = EpochSampler(4, batch_size=2, seed=5, weights=weights)
    for epoch in range(2000):
        sampler.set_epoch(epoch)
        counts.update(i for _, i in sampler)
    total = sum(counts.values())
    assert counts[2] == 0
    for i, w in enumerate(weights):
        assert counts[i] / total == pytest.approx(w / 8, abs=0.02)


def test_weighted_sampler_ranks_split_one_global_draw() -> None:
    weights = [float(i + 1) for i in range(12)]
    one = EpochSampler(12, batch_size=4, seed=1, weights=weights)
    ranks = [EpochSampler(12, batch_size=2, rank=r, world_size=2, seed=1, weights=weights) for r in range(2)]
    for s in (one, *ranks):
        s.set_epoch(3)
    drawn = [i for _, i in one]
    assert [i for _, i in ranks[0]] == drawn[0::2] and [i for _, i in ranks[1]] == drawn[1::2]


def test_weighted_sampler_rejects_wrong_weights() -> None:
    with pytest.raises(DataError, match="one per item"):
        EpochSampler(4, batch_size=2, weights=[1.0, 2.0])
    with pytest.raises(DataError, match="positive sum"):
        EpochSampler(2, batch_size=2, weights=[0.0, 0.0])


# --- mixup -------------------------------------------------------------------------------------------------
def test_cutmix_on_clips_cuts_the_same_box_in_every_frame() -> None:
    torch.manual_seed(0)
    n, c, t, h, w = 4, 3, 5, 16, 16
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1, 1).expand(n, c, t, h, w).clone()
    mix = FrameMixup(Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, label_smoothing=0.0, num_classes=4))
    out, target = mix(x, torch.arange(n))
    assert out.shape == (n, c, t, h, w)
    pasted = out[0] != 0  # sample 0 receives sample 3's pixels inside the box
    assert bool(pasted.any()) and bool((pasted == pasted[:1, :1]).all())  # same box in every channel and frame
    lam = float(target[0, 0])  # the label weight is the kept area
    assert lam == pytest.approx(1 - float(pasted[0, 0].float().mean()), abs=1e-6)


def test_multi_label_mixup_mixes_inputs_and_targets_with_one_lambda() -> None:
    torch.manual_seed(0)
    x = torch.tensor([[1.0], [0.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mx, my = MultiLabelMixup(alpha=0.5)(x, y)
    lam = float(mx[0, 0])  # row 0 = lam * 1 + (1 - lam) * 0
    assert 0 <= lam <= 1
    assert torch.allclose(my, torch.tensor([[lam, 1 - lam], [1 - lam, lam]]))
    assert torch.allclose(mx[1], torch.tensor([1 - lam]))


# --- multi-view, multi-label evaluation -----------------------------------------------------------------------
class _Views(DatasetWithTraits):
    """Items (V, 2) with multi-hot labels over 3 classes."""

    traits = DatasetTraits(classes=("a", "b", "c"), multi_label=True, num_views=3)

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(10, 3, 2, generator=g)
        self.y = (torch.rand(10, 3, generator=g) > 0.5).float()
        self.y[0] = torch.tensor([1.0, 1.0, 1.0])  # every class has a positive

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def test_view_scores_average_logits_or_probabilities() -> None:
    model = nn.Linear(2, 3)
    x = torch.randn(4, 3, 2)
    logits = model(x)  # (4, 3 views, 3)
    assert torch.allclose(view_scores(model, x, views=3, reduce="logits", multi_label=False), logits.mean(1))
    soft = view_scores(model, x, views=3, reduce="softmax", multi_label=False)
    assert torch.allclose(soft, logits.softmax(-1).mean(1))
    assert torch.allclose(view_scores(model, x, views=3, reduce="softmax", multi_label=True), logits.sigmoid().mean(1))


def test_evaluate_scores_multi_view_multi_label_data_with_map_and_bce() -> None:
    torch.manual_seed(0)
    model, data = nn.Linear(2, 3), _Views()
    stats = evaluate(model, data, batch_size=4, device=torch.device("cpu"))
    scores = model(data.x).mean(dim=1).detach()  # (10, 3): the averaged logits
    assert stats["n"] == 10
    assert stats["map"] == pytest.approx(100 * mean_average_precision(scores, data.y), rel=1e-6)
    bce = nn.functional.binary_cross_entropy_with_logits(scores, data.y, reduction="sum") / 10
    assert stats["loss"] == pytest.approx(float(bce), rel=1e-5)
    assert stats["acc1"] == pytest.approx(100 * topk_correct(scores, data.y, ks=(1,))[0] / 10)


# --- token dropping during fine-tuning ---------------------------------------------------------------------------
def test_token_masking_drops_tokens_in_training_only() -> None:
    torch.manual_seed(0)
    mae = build_model(resolve_model_config(copy.deepcopy(TINY_MODEL)))
    model = build_classifier(
        mae, num_classes=3, global_pool=True, token_masking="random", token_mask_ratio=0.25
    )  # 16 tokens -> 12 kept
    seen: list[int] = []
    model.encoder.blocks[0].register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
    x = torch.randn(2, 3, 32, 32)
    model.train()(x)
    model.eval()(x)
    assert seen == [1 + 12, 1 + 16]  # CLS + kept tokens in training, every token at evaluation
    assert model.config["classifier"]["token_masking"] == "random"


def test_weighted_sampler_takes_the_number_of_draws_per_epoch() -> None:
    sampler = EpochSampler(4, batch_size=3, seed=0, weights=[1.0, 1.0, 1.0, 1.0], num_samples=10)
    assert sampler.batches_per_epoch == 3 and len(list(sampler)) == 9  # 10 draws, drop-last to 3 batches of 3
    with pytest.raises(ValueError, match="needs weights"):
        EpochSampler(4, batch_size=2, num_samples=10)
