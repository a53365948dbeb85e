"""The pre-training loop shared by every modality (official ``engine_pretrain`` semantics).

Per-iteration lr (warm-up + half-cosine at fractional epochs), gradient accumulation, optional bf16
autocast, atomic checkpoints every ``save_every_epochs`` and at the end, ``--resume``, JSON-lines metrics,
and a final held-out masked-patch loss next to the trivial baseline, with a reconstruction figure.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .build import build_model, compile_blocks
from .checkpoint import CheckpointError, read_checkpoint, write_checkpoint
from .config import Config, config_to_dict
from .data import DataError, SafeDataset
from .loading import CHECKPOINT_FORMAT, load_state_dict_checked
from .loss import masked_mse, patch_mean_baseline
from .masking import sample_mask
from .model import MaskedAutoencoder
from .optim import absolute_lr, cosine_lr, param_groups_weight_decay

__all__ = ["NonFiniteLossError", "PretrainResult", "evaluate_heldout", "pretrain"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


@dataclass
class PretrainResult:
    run_dir: Path
    checkpoint: Path
    train_loss: float  # mean loss of the last epoch
    heldout_loss: float | None  # masked-patch loss on held-out data, fixed masks
    baseline_loss: float | None  # the same for predicting each patch's own mean
    figure: Path | None
    metrics: Path


def pretrain(cfg: Config, *, resume: str | None = None, registry: Any = None, progress: bool = True) -> PretrainResult:
    """Pre-train ``cfg`` on its modality's data; ``resume`` is a checkpoint path or ``"auto"`` (newest in the run)."""
    if registry is None:
        from anymae.plugins import get_registry

        registry = get_registry()
    train = cfg.train
    modality = registry.modality(cfg.model.modality)
    # Everything that can fail on the user's inputs fails here, before a model is built.
    train_set = modality.build_dataset(cfg.data, cfg.model.tokenizer, split="train")
    heldout_set = modality.build_dataset(cfg.data, cfg.model.tokenizer, split="heldout")
    if len(train_set) < train.batch_size:
        raise DataError(f"only {len(train_set)} training samples for train.batch_size={train.batch_size}")
    resume_path = _resume_path(resume, cfg) if resume else None
    run_dir = resume_path.parent if resume_path else _new_run_dir(cfg)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))

    device = _device(train.device)
    _seed_everything(train.seed)
    model = build_model(cfg.model, registry=registry).to(device)
    if train.compile:
        compile_blocks(model)  # in place: parameter names and checkpoints are unchanged
    generator = torch.Generator().manual_seed(train.seed)
    loader = DataLoader(
        SafeDataset(train_set, max_bad_fraction=train.max_bad_fraction),
        batch_size=train.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=train.num_workers,
        pin_memory=train.pin_memory and device.type == "cuda",
        persistent_workers=train.persistent_workers and train.num_workers > 0,
        prefetch_factor=train.prefetch_factor if train.num_workers > 0 else None,
        generator=generator,
        worker_init_fn=_seed_worker,
    )
    effective_batch = train.batch_size * train.accum_iter
    base_lr = absolute_lr(blr=cfg.optim.blr, effective_batch=effective_batch, lr=cfg.optim.lr)
    optimizer = torch.optim.AdamW(
        param_groups_weight_decay(model, cfg.optim.weight_decay),
        lr=base_lr,
        betas=cfg.optim.betas,
        fused=cfg.optim.fused or None,
    )
    start_epoch, step, checkpoint = 0, 0, resume_path
    if resume_path is not None:
        start_epoch, step = _restore(resume_path, model, optimizer, generator)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if train.precision == "bf16" else nullcontext()
    metrics_path = run_dir / "metrics.jsonl"
    epoch_loss = float("nan")
    with metrics_path.open("a") as metrics:
        for epoch in range(start_epoch, train.epochs):
            model.train()
            optimizer.zero_grad(set_to_none=True)
            losses: list[float] = []
            started, seen = time.perf_counter(), 0
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{train.epochs}", disable=not progress, dynamic_ncols=True)
            for it, batch in enumerate(bar):
                if it % train.accum_iter == 0:
                    lr = cosine_lr(
                        epoch + it / len(loader),
                        lr=base_lr,
                        min_lr=cfg.optim.min_lr,
                        warmup_epochs=cfg.optim.warmup_epochs,
                        epochs=train.epochs,
                    )
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                x = _inputs(batch).to(device, non_blocking=True)
                with autocast:
                    loss, _, _ = model(x)
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    raise NonFiniteLossError(
                        f"loss is {loss_value} at step {step} (epoch {epoch + 1}, iteration {it}); "
                        f"last good checkpoint: {checkpoint or 'none yet'}"
                    )
                (loss / train.accum_iter).backward()
                if (it + 1) % train.accum_iter == 0:
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                losses.append(loss_value)
                seen += x.shape[0]
                rate = seen / (time.perf_counter() - started)
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", samples_s=f"{rate:.1f}")
                if (it + 1) % (train.log_every_steps * train.accum_iter) == 0:
                    _log(
                        metrics,
                        step=step,
                        epoch=epoch + it / len(loader),
                        loss=loss_value,
                        lr=lr,
                        samples_per_s=rate,
                    )
            epoch_loss = float(np.mean(losses))
            _log(metrics, step=step, epoch=epoch + 1, epoch_loss=epoch_loss)
            if (epoch + 1) % train.save_every_epochs == 0 or epoch + 1 == train.epochs:
                checkpoint = _save(run_dir, cfg, model, optimizer, generator, epoch=epoch, step=step)

        heldout_loss = baseline = figure = None
        if heldout_set is not None:
            heldout_loss, baseline, figure = evaluate_heldout(
                model, modality, cfg, heldout_set, device=device, path=run_dir / "reconstruction.png"
            )
            _log(metrics, step=step, heldout_loss=heldout_loss, baseline_loss=baseline)
    if checkpoint is None:
        raise CheckpointError(f"no checkpoint was written to {run_dir}")
    return PretrainResult(run_dir, checkpoint, epoch_loss, heldout_loss, baseline, figure, metrics_path)


@torch.no_grad()
def evaluate_heldout(
    model: MaskedAutoencoder,
    modality: Any,
    cfg: Config,
    dataset: Dataset,
    *,
    device: torch.device,
    path: Path,
) -> tuple[float, float, Path | None]:
    """Masked-patch loss on held-out data with masks fixed by ``train.seed``, the trivial baseline's loss
    (each removed patch predicted by its own mean), and the reconstruction figure of the first samples."""
    model.eval()
    safe = SafeDataset(dataset, max_bad_fraction=cfg.train.max_bad_fraction)
    loader = DataLoader(safe, batch_size=cfg.train.batch_size, shuffle=False)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    loss_sum = base_sum = weight = 0.0
    figure = None
    for i, batch in enumerate(loader):
        if i >= max(cfg.train.heldout_batches, 1):
            break
        x = _inputs(batch).to(device)
        forced = sample_mask(
            model.masking,
            batch=x.shape[0],
            grid=model.tokenizer.grid,
            mask_ratio=model.mask_ratio,
            device=torch.device("cpu"),
            generator=generator,
        )
        _, pred, mask = model(x, mask=forced.to(device))
        target = model.forward_target(x)
        count = mask.sum().item()
        loss_sum += masked_mse(pred.float(), target, mask).item() * count
        base_sum += patch_mean_baseline(target, mask).item() * count
        weight += count
        if i == 0 and cfg.train.figure_samples > 0:
            k = cfg.train.figure_samples
            figure = modality.render_reconstruction(
                inputs=x[:k].cpu(),
                pred=model.pred_to_pixels(x[:k], pred[:k].float()).cpu(),
                mask=mask[:k].cpu(),
                tokenizer=model.tokenizer.cpu(),
                data=cfg.data,
                path=path,
            )
            model.tokenizer.to(device)
    return loss_sum / weight, base_sum / weight, figure


# --- helpers ----------------------------------------------------------------------------------------------
def _inputs(batch: Any) -> torch.Tensor:
    """Datasets yield inputs or (input, label) pairs; pre-training uses the inputs only."""
    return batch[0] if isinstance(batch, (list, tuple)) else batch


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name!r} but CUDA is not available; use 'cpu' or 'auto'")
    return device


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32  # distinct per worker and per epoch, derived from the loader's generator
    np.random.seed(seed)
    random.seed(seed)


def _log(stream: Any, **record: Any) -> None:
    stream.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
    stream.flush()


def _new_run_dir(cfg: Config) -> Path:
    """runs/<name>, or runs/<name>-2, -3, ... when that one already holds a run: nothing is overwritten."""
    base = Path(cfg.train.output_dir) / (cfg.train.run_name or cfg.name)
    run_dir, n = base, 1
    while run_dir.exists() and any(run_dir.iterdir()):
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise OSError(f"train.output_dir: cannot write to {run_dir}: {exc.strerror or exc}") from None
    return run_dir


def _checkpoints(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("checkpoint-*.pt"))


def _resume_path(resume: str, cfg: Config) -> Path:
    """A given path, or for "auto" the newest checkpoint of this run: runs/<name> or its -2, -3, ... siblings."""
    if resume != "auto":
        return Path(resume)
    base = Path(cfg.train.output_dir) / (cfg.train.run_name or cfg.name)
    runs = [
        base,
        *(d for d in base.parent.glob(f"{base.name}-*") if re.fullmatch(r"\d+", d.name[len(base.name) + 1 :])),
    ]
    found = [c for d in runs if d.is_dir() for c in _checkpoints(d)]
    if not found:
        raise CheckpointError(f"--resume auto: no checkpoint-*.pt in {base} (or {base.name}-N beside it)")
    return max(found, key=lambda c: (c.stat().st_mtime, c.name))


def _save(
    run_dir: Path,
    cfg: Config,
    model: MaskedAutoencoder,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    *,
    epoch: int,
    step: int,
) -> Path:
    numpy_state = np.random.get_state()
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": 1,
        "config": config_to_dict(cfg),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "step": step,
        "rng": {
            "torch": torch.get_rng_state(),
            "loader": generator.get_state(),
            "python": _plain(random.getstate()),
            "numpy": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "numpy_pos": int(numpy_state[2]),
        },
    }
    return write_checkpoint(payload, run_dir / f"checkpoint-{epoch + 1:04d}.pt")


def _restore(
    path: Path, model: MaskedAutoencoder, optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> tuple[int, int]:
    payload = read_checkpoint(path)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT or "optimizer" not in payload:
        raise CheckpointError(f"--resume {path}: not an anymae training checkpoint (format='anymae' with optimizer)")
    load_state_dict_checked(model, payload["model"], source=str(path), strict=True)
    optimizer.load_state_dict(payload["optimizer"])
    rng = payload["rng"]
    torch.set_rng_state(rng["torch"])
    generator.set_state(rng["loader"])
    random.setstate(_tuples(rng["python"]))
    np.random.set_state(("MT19937", rng["numpy"].numpy().astype(np.uint32), rng["numpy_pos"], 0, 0.0))
    return payload["epoch"] + 1, payload["step"]


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value
