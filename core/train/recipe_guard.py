"""Recipe/data mismatch check of classifier runs: one printed line when a run takes far fewer optimizer steps
than its recipe assumes.

The released fine-tuning recipes (MAE ImageNet: 100 epochs x 1251 steps; VideoMAE, AudioMAE alike) warm up
for 5% of a run of 10^5 steps and regularise with mixup/CutMix, which pay off over tens of thousands of steps.
Copied onto a folder of a thousand images they take a few hundred steps: the warm-up eats a large share of the
run and the mixed targets keep the head from fitting. The check names the numbers and the bundled
small-data config of the modality, and changes nothing in the run.
"""

from __future__ import annotations

from importlib import resources

from anymae.core.config import ClassifyConfig

__all__ = ["MAX_WARMUP_SHARE", "SMALL_RUN_STEPS", "recipe_warning", "warn_recipe_mismatch"]

MAX_WARMUP_SHARE = 0.1  # warm-up longer than this share of the run's optimizer steps
SMALL_RUN_STEPS = 1000  # mixup/CutMix on fewer optimizer steps than this: an ImageNet-scale recipe on small data


def small_data_config(modality: str, mode: str) -> str:
    """The bundled small-data config of ``modality`` for ``mode`` (finetune or linprobe); the image one when the
    modality has none."""
    name = f"demo_{modality}_{mode}"
    if not (resources.files("anymae.configs") / f"{name}.yaml").is_file():
        name = f"demo_image_{mode}"
    return f"configs/{name}.yaml"


def recipe_warning(cfg: ClassifyConfig, train_items: int, *, world_size: int = 1) -> str | None:
    """The mismatch line for a run of ``cfg`` on ``train_items`` training items, or None when there is none.

    Optimizer steps = epochs x (draws // (batch_size x world_size x accum_iter)), draws being
    ``epoch_samples`` under balanced sampling and ``train_items`` otherwise (the sampler drops the last
    incomplete batch)."""
    head, train, optim = cfg.head, cfg.train, cfg.optim
    draws = head.epoch_samples or train_items
    per_epoch = draws // (train.batch_size * world_size * train.accum_iter)
    steps = train.epochs * per_epoch
    problems = []
    if optim.warmup_epochs > MAX_WARMUP_SHARE * train.epochs:
        share = optim.warmup_epochs / train.epochs
        problems.append(
            f"warm-up {optim.warmup_epochs:g} epochs = {share:.0%} of the run (over {MAX_WARMUP_SHARE:.0%})"
        )
    mixing = cfg.finetune is not None and (cfg.finetune.mixup > 0 or cfg.finetune.cutmix > 0)
    if mixing and steps < SMALL_RUN_STEPS:
        problems.append(
            f"mixup {cfg.finetune.mixup:g} / cutmix {cfg.finetune.cutmix:g} are ImageNet-scale regularisers "
            f"(that recipe: 100 epochs x 1251 steps) on under {SMALL_RUN_STEPS} steps"
        )
    if not problems:
        return None
    return (
        f"recipe check: {steps} optimizer steps ({train.epochs} epochs x {per_epoch} steps of {draws} items); "
        f"{'; '.join(problems)}: for small data see {small_data_config(head.modality, cfg.mode)}"
    )


def warn_recipe_mismatch(cfg: ClassifyConfig, train_items: int, *, world_size: int = 1, main: bool = True) -> None:
    """Print :func:`recipe_warning`'s line, if any, on the main process (``main``)."""
    line = recipe_warning(cfg, train_items, world_size=world_size)
    if line is not None and main:
        print(line, flush=True)
