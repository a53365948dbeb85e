"""``anymae retrieve``: recall at k against hand-computed cases, and the command end to end on a composite trained
with the contrastive term (the exact output lines, the JSON, the figure, an unreadable part skipped and counted)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
import torch.nn.functional as F
from test_composite import composite_config, write_pairs

from anymae.core.build.models import build_model
from anymae.core.cli import main
from anymae.core.config import resolve_model_config
from anymae.core.evaluate.retrieval import recall_at_k, retrieval_line
from anymae.core.train.task_pretrain import pretrain

LINE = re.compile(
    r"^retrieval (\w+)->(\w+): R@1 \d+\.\d% R@5 \d+\.\d% R@10 \d+\.\d% \(chance R@1 \d+\.\d%\) on \d+ pairs$"
)


def test_recall_at_k_counts_the_rank_of_each_querys_own_partner():
    # 4 items in 2-D. By hand (cosines): q1 = (0.6, 0.8) is nearer k2 (0.981) than its own k1 (0.938); q3 nearly
    # (-1, 0) is nearer k1 (-0.19) and k2 (-0.67) than its own k3 (-0.93): ranks 0, 1, 0, 2.
    queries = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [1.0, 1.0], [-1.0, 0.1]]), dim=-1)
    keys = F.normalize(torch.tensor([[1.0, 0.1], [0.3, 1.0], [1.0, 0.9], [1.0, -0.5]]), dim=-1)
    sim = queries @ keys.T
    ranks = [(sim[i] > sim[i, i]).sum().item() for i in range(4)]
    assert ranks == [0, 1, 0, 2]
    scores = recall_at_k(queries, keys, ks=(1, 2, 3))
    assert scores == {"R@1": 50.0, "R@2": 75.0, "R@3": 100.0, "chance_R@1": 25.0}


def test_recall_of_identical_rows_is_perfect_and_of_shuffled_rows_near_chance():
    generator = torch.Generator().manual_seed(0)
    rows = F.normalize(torch.randn(200, 16, generator=generator), dim=-1)
    assert recall_at_k(rows, rows)["R@1"] == 100.0
    shuffled = recall_at_k(rows, rows[torch.randperm(200, generator=generator)])
    assert shuffled["R@10"] < 15.0  # chance R@10 is 5%


def test_the_retrieval_line_has_the_documented_form():
    line = retrieval_line("audio->video", {"R@1": 12.5, "R@5": 50.0, "R@10": 100.0, "chance_R@1": 6.25}, 16)
    assert line == "retrieval audio->video: R@1 12.5% R@5 50.0% R@10 100.0% (chance R@1 6.2%) on 16 pairs"
    assert LINE.match(line)


def test_retrieve_prints_both_directions_writes_json_and_figure_and_skips_unreadable_pairs(tmp_path, capsys):
    root = tmp_path / "data"
    write_pairs(root, 8)
    write_pairs(root, 6, split="heldout")
    (root / "audio" / "heldout" / "s002.wav").write_bytes(b"not audio")
    cfg = composite_config(tmp_path, root, epochs=1, figure_samples=0)
    cfg.model.contrastive.weight, cfg.model.contrastive.proj_dim = 0.01, 8
    with pytest.warns(UserWarning, match="unreadable"):
        run = pretrain(cfg, progress=False)
    rows = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    assert any("loss_contrastive" in row for row in rows)
    out, figure = tmp_path / "retrieval.json", tmp_path / "top5.png"
    capsys.readouterr()
    code = main(["retrieve", str(run.checkpoint), "-o", str(out), "--figure", str(figure), "--queries", "2",
                 "--no-progress"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr()
    assert "skipping unreadable sample (part audio: cannot decode audio" in printed.err and "s002.wav" in printed.err
    lines = printed.out.splitlines()
    directions = [LINE.match(line).groups() for line in lines if line.startswith("retrieval ")]
    assert directions == [("image", "audio"), ("audio", "image")]
    assert all(line.endswith("on 5 pairs") for line in lines if line.startswith("retrieval "))
    assert "1 item with an unreadable part skipped" in lines[-1]
    saved = json.loads(out.read_text())
    assert (
        saved["pairs"] == 5 and saved["skipped"] == 1 and set(saved["directions"]) == {"image->audio", "audio->image"}
    )
    assert saved["directions"]["image->audio"]["chance_R@1"] == pytest.approx(20.0)
    assert figure.is_file() and figure.stat().st_size > 1000


def test_retrieve_refuses_a_single_modality_model_and_wrong_parts(tmp_path, capsys):
    root = tmp_path / "data"
    write_pairs(root, 4)
    write_pairs(root, 2, split="heldout")
    run = pretrain(composite_config(tmp_path, root, epochs=1, figure_samples=0), progress=False)
    assert main(["retrieve", str(run.checkpoint), "--parts", "image,depth"]) == 1
    assert "--parts names two different parts of the model (image, audio), got image,depth" in capsys.readouterr().err
    image = build_model(resolve_model_config({"modality": "image", "tokenizer": {"img_size": 32, "patch_size": 8},
                                              "embed_dim": 32, "depth": 1, "num_heads": 2}))  # fmt: skip
    path = tmp_path / "image.pt"
    torch.save({"format": "anymae", "config": {"model": image.config["model"]}, "model": image.state_dict()}, path)
    assert main(["retrieve", str(path)]) == 1
    assert "matches the parts of a composite model; " in capsys.readouterr().err


def test_embed_refuses_a_composite_naming_what_to_use_instead(tmp_path, capsys):
    root = tmp_path / "data"
    write_pairs(root, 4)
    run = pretrain(composite_config(tmp_path, root, epochs=1, figure_samples=0, heldout_batches=0), progress=False)
    assert main(["embed", str(run.checkpoint), str(root / "image" / "train"), "-o", str(tmp_path / "f.st")]) == 1
    assert "anymae embed reads files of one modality" in capsys.readouterr().err


def test_retrieve_from_packed_composite_shards_equals_retrieve_from_the_folders(tmp_path, capsys):
    root = tmp_path / "data"
    write_pairs(root, 4)
    write_pairs(root, 5, split="heldout")
    cfg = composite_config(tmp_path, root, epochs=1, figure_samples=0)
    cfg.model.contrastive.weight = 0.1
    run = pretrain(cfg, progress=False)
    shards = tmp_path / "shards"
    assert main(["pack", str(root / "{part}" / "heldout"), str(shards), "--parts", "image=image,audio=audio",
                 "--shard-size", "2", "--no-progress"]) == 0  # fmt: skip
    folder, packed = tmp_path / "folder.json", tmp_path / "packed.json"
    assert main(["retrieve", str(run.checkpoint), "-o", str(folder), "--no-progress"]) == 0
    for part in ("image", "audio"):  # the shards are all that is left of the held-out split
        shutil.rmtree(root / part / "heldout")
    assert main(["retrieve", str(run.checkpoint), f"data.heldout_shards={shards}", "-o", str(packed),
                 "--no-progress"]) == 0  # fmt: skip
    a, b = json.loads(folder.read_text()), json.loads(packed.read_text())
    assert a["pairs"] == b["pairs"] == 5 and a["directions"] == b["directions"]
