"""The small-data linear probe (``linprobe.solver: lbfgs``, issue 15): the L-BFGS fit against Newton's method in
numpy, the run it writes (a classifier checkpoint ``anymae eval`` reads, equal to a direct solve on
``model.encode`` features), and the config keys each solver refuses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_mae
from PIL import Image

from anymae.core.cli import main
from anymae.core.config import ConfigError, load_classify_config
from anymae.core.io.checkpoint import export_safetensors, read_checkpoint
from anymae.core.train.probe import fit_logistic_regression, select_l2


def _newton_softmax(x: np.ndarray, y: np.ndarray, k: int, l2: float, steps: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression ``mean CE + l2/2 |W|^2`` (bias free) by Newton's method with the exact
    Hessian (pseudo-inverse: the bias is defined up to a common shift). Returns W (K, D), b (K,), b centred."""
    n, d = x.shape
    xt = np.hstack([x, np.ones((n, 1))])  # (N, D + 1)
    theta = np.zeros((k, d + 1))
    onehot = np.eye(k)[y]
    penalty = np.zeros((k, d + 1))
    penalty[:, :d] = l2
    for _ in range(steps):
        logits = xt @ theta.T
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        grad = (p - onehot).T @ xt / n + penalty * theta  # (K, D + 1)
        s = p[:, :, None] * np.eye(k) - p[:, :, None] * p[:, None, :]  # (N, K, K): diag(p) - p p^T
        hess = np.einsum("nkl,nd,ne->kdle", s, xt, xt).reshape(k * (d + 1), k * (d + 1)) / n
        hess += np.diag(penalty.reshape(-1))
        theta -= (np.linalg.pinv(hess) @ grad.reshape(-1)).reshape(k, d + 1)
    b = theta[:, d]
    return theta[:, :d], b - b.mean()


def _newton_binary(x: np.ndarray, t: np.ndarray, l2: float, steps: int = 50) -> tuple[np.ndarray, float]:
    """One binary logistic regression ``mean BCE + l2/2 |w|^2`` by Newton's method."""
    n, d = x.shape
    xt = np.hstack([x, np.ones((n, 1))])
    theta = np.zeros(d + 1)
    penalty = np.r_[np.full(d, l2), 0.0]
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(xt @ theta)))
        grad = xt.T @ (p - t) / n + penalty * theta
        hess = (xt * (p * (1 - p))[:, None]).T @ xt / n + np.diag(penalty)
        theta -= np.linalg.solve(hess, grad)
    return theta[:d], theta[d]


def test_lbfgs_reaches_the_newton_solution_of_the_softmax_regression() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    x = rng.normal(size=(60, 4)) + np.eye(3, 4)[y]  # overlapping classes: a finite optimum even for small l2
    weight_ref, bias_ref = _newton_softmax(x, y, 3, l2=0.05)

    weight, bias, info = fit_logistic_regression(torch.from_numpy(x), torch.from_numpy(y), num_classes=3, l2=0.05)

    assert info["grad_max"] < 1e-6
    assert np.allclose(weight.numpy(), weight_ref, atol=1e-6)
    assert np.allclose((bias - bias.mean()).numpy(), bias_ref, atol=1e-6)


def test_multi_label_fit_is_one_binary_logistic_regression_per_class() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 3))
    targets = (x @ rng.normal(size=(3, 2)) + rng.normal(size=(50, 2)) > 0).astype(np.float64)  # (N, 2) 0/1

    weight, bias, info = fit_logistic_regression(
        torch.from_numpy(x), torch.from_numpy(targets), num_classes=2, l2=0.01, multi_label=True
    )

    assert info["grad_max"] < 1e-6
    for c in range(2):
        w_ref, b_ref = _newton_binary(x, targets[:, c], l2=0.01)
        assert np.allclose(weight[c].numpy(), w_ref, atol=1e-6) and abs(float(bias[c]) - b_ref) < 1e-6


def test_l2_search_prefers_the_value_that_generalises() -> None:
    """Each candidate's validation accuracy equals scikit-learn's multinomial LogisticRegression fitted on the same
    rows (its C = 1 / (l2 * N_fit) is this objective's l2), and the search keeps the best of them."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 240)
    x = rng.normal(size=(240, 5)) + 1.5 * np.eye(3, 5)[y]
    grid = (1e-3, 0.3, 100.0)
    l2, records = select_l2(
        torch.from_numpy(x), torch.from_numpy(y), num_classes=3, grid=grid, val_fraction=0.25, seed=0
    )
    order = torch.randperm(240, generator=torch.Generator().manual_seed(0)).numpy()  # the seeded split it draws
    val, fit = order[:60], order[60:]
    sklearn_scores = []
    for value in grid:
        reference = LogisticRegression(C=1 / (value * len(fit)), tol=1e-10, max_iter=10_000).fit(x[fit], y[fit])
        sklearn_scores.append(100 * float(np.mean(reference.predict(x[val]) == y[val])))
    assert [r["l2"] for r in records] == list(grid)
    assert [r["val_score"] for r in records] == pytest.approx(sklearn_scores, abs=100 / 60 + 1e-9)  # <= 1 row
    assert sklearn_scores[2] < 50 < sklearn_scores[0]  # l2 = 100 shrinks W to ~0: one class for every row
    assert l2 == grid[int(np.argmax([r["val_score"] for r in records]))] and l2 != 100.0
    assert select_l2(
        torch.from_numpy(x), torch.from_numpy(y), num_classes=3, grid=(0.5,), val_fraction=0.2, seed=0
    ) == (0.5, [])


def _crops_folder(root: Path, *, train: int, heldout: int) -> Path:
    """A labelled ImageFolder of 16x16 crops of four scikit-image photos, labelled by photo; training crops from
    the top 3/4 of each photo, held-out ones from the bottom 1/4 (disjoint regions)."""
    import skimage.data

    rng = np.random.default_rng(0)
    for name in ("astronaut", "brick", "coffee", "moon"):
        photo = np.asarray(Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize((96, 96)))
        for split, count, (top, bottom) in (("train", train, (0, 72)), ("val", heldout, (72, 96))):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                y, x = int(rng.integers(top, bottom - 15)), int(rng.integers(0, 81))
                Image.fromarray(photo[y : y + 16, x : x + 16]).save(root / split / name / f"{i}.png")
    return root


def _random_mae(path: Path) -> Path:
    return export_safetensors(tiny_mae(), path)


def _probe_args(checkpoint: Path, root: Path, runs: Path) -> list[str]:
    return [
        "linprobe",
        "demo_image_linprobe",
        f"linprobe.checkpoint={checkpoint}",
        f"data.root={root}",
        "data.heldout_split=val",
        "train.batch_size=16",
        "train.num_workers=0",
        "train.device=cpu",
        f"train.output_dir={runs}",
        "--no-progress",
    ]


def test_lbfgs_linprobe_writes_the_converged_probe_as_a_classifier_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    checkpoint = _random_mae(tmp_path / "mae.safetensors")
    root = _crops_folder(tmp_path / "crops", train=10, heldout=4)

    assert main([*_probe_args(checkpoint, root, tmp_path / "runs"), "linprobe.l2=[0.01]"]) == 0

    run = tmp_path / "runs" / "demo_image_linprobe"
    saved = read_checkpoint(run / "checkpoint-best.pt")
    assert saved["probe"]["l2"] == 0.01 and saved["config"]["classes"] == ["astronaut", "brick", "coffee", "moon"]
    # The direct solve: CLS features of the unmasked encoder over the training crops (the evaluation transform),
    # standardised, then Newton's method.
    from anymae.core.weights.loading import load_model
    from anymae.modalities.image.classification import classification_eval_transform

    model = load_model(checkpoint).eval()
    transform = classification_eval_transform((16, 16), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    files = sorted((root / "train").rglob("*.png"))
    x = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
    y = np.array([saved["config"]["classes"].index(f.parent.name) for f in files])
    with torch.no_grad():
        feats = model.encode(x)[:, 0].double().numpy()  # (N, D) CLS after the final norm
    mean, var = feats.mean(axis=0), feats.var(axis=0)
    weight_ref, bias_ref = _newton_softmax((feats - mean) / np.sqrt(var + 1e-6), y, 4, l2=0.01)
    state = saved["model"]
    assert np.allclose(state["head_bn.running_mean"].numpy(), mean, atol=1e-5)
    assert np.allclose(state["head_bn.running_var"].numpy(), var, rtol=1e-4, atol=1e-7)
    assert np.allclose(state["head.weight"].numpy(), weight_ref, atol=1e-4)
    assert np.allclose((state["head.bias"] - state["head.bias"].mean()).numpy(), bias_ref, atol=1e-4)
    # An ordinary classifier run: `anymae eval` reads it and finds the accuracy it recorded.
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["eval_acc1"] == saved["eval"]["acc1"] and (run / "config.yaml").is_file()
    capsys.readouterr()
    assert main(["eval", str(run / "checkpoint-last.pt"), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith(f"heldout: 16 samples  top-1 {saved['eval']['acc1']:.2f}%")


def test_lbfgs_linprobe_searches_l2_by_default(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    checkpoint = _random_mae(tmp_path / "mae.safetensors")
    root = _crops_folder(tmp_path / "crops", train=10, heldout=2)

    assert main(_probe_args(checkpoint, root, tmp_path / "runs")) == 0

    out = capsys.readouterr().out
    assert "picked on a split of the training set" in out and "finished: top-1" in out
    lines = (tmp_path / "runs" / "demo_image_linprobe" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["l2"] for r in records[:-1]] == [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    assert records[-1]["l2"] == max(records[:-1], key=lambda r: (r["val_score"], -r["val_loss"], r["l2"]))["l2"]


def test_demo_linprobe_configs_use_the_lbfgs_solver() -> None:
    for name in ("demo_image_linprobe", "demo_audio_linprobe", "demo_video_linprobe"):
        assert load_classify_config(name, mode="linprobe").linprobe.solver == "lbfgs", name
    assert load_classify_config("mae_vit_base_linprobe", mode="linprobe").linprobe.solver == "sgd"


def test_each_solver_refuses_the_other_solvers_keys() -> None:
    with pytest.raises(ConfigError, match=r"linprobe: l2=\(0.1,\) is an option of solver lbfgs"):
        load_classify_config("mae_vit_base_linprobe", ["linprobe.l2=[0.1]"])
    with pytest.raises(ConfigError, match="linprobe: max_iter=5 is an option of solver lbfgs"):
        load_classify_config("mae_vit_base_linprobe", ["linprobe.max_iter=5"])
    with pytest.raises(ConfigError, match="linprobe: balanced_sampling=True is an option of solver sgd"):
        load_classify_config("demo_image_linprobe", ["linprobe.balanced_sampling=true"])
    with pytest.raises(ConfigError, match="finetune: solver='lbfgs' is a linprobe option"):
        load_classify_config("demo_image_finetune", ["finetune.solver=lbfgs"])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.blr=0.5", "optim.blr"),
        ("train.epochs=3", "train.epochs"),
        ("train.eval_every_epochs=2", "train.eval_every_epochs"),
    ],
)
def test_lbfgs_refuses_the_epoch_loops_keys_before_any_work(
    override: str, key: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    missing = tmp_path / "not-there.pt"  # refused before the checkpoint is read
    assert main(["linprobe", "demo_image_linprobe", f"linprobe.checkpoint={missing}", override]) == 1
    err = capsys.readouterr().err
    assert f"error: config {key}: not used by linprobe.solver=lbfgs" in err or f"config {key}: linprobe.solver" in err
    assert main(["linprobe", "demo_image_linprobe", f"linprobe.checkpoint={missing}", "--resume", "auto"]) == 1
    assert "nothing to resume" in capsys.readouterr().err
