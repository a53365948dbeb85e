"""Shared benchmark plumbing: model variants, timing, peak memory, peak FLOP/s and the RESULTS.md writer."""

from __future__ import annotations

import ctypes
import datetime
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .flops import MaeShape, shape_from_model, train_flops_per_sample
from .reference_mae import ReferenceMAE, reference_optimizer, reference_step

__all__ = [
    "ARCHS",
    "VARIANTS",
    "Runner",
    "build_runner",
    "device_name",
    "has_reference",
    "input_shape",
    "measure_memory",
    "nominal_peak_flops",
    "time_alternating",
    "write_section",
]

REPO = Path(__file__).resolve().parents[1]

# Architectures as anymae ``model`` sections (reference section 1); ``tiny`` is for tests and ``--quick``.
ARCHS: dict[str, dict[str, Any]] = {
    "vit_b16": {"tokenizer": {"img_size": 224, "patch_size": 16}, "embed_dim": 768, "depth": 12, "num_heads": 12},
    "vit_l16": {"tokenizer": {"img_size": 224, "patch_size": 16}, "embed_dim": 1024, "depth": 24, "num_heads": 16},
    "vit_h14": {"tokenizer": {"img_size": 224, "patch_size": 14}, "embed_dim": 1280, "depth": 32, "num_heads": 16},
    # VideoMAE-B (16 x 224 x 224, tube 0.9) and AudioMAE-B (1024 x 128, 0.8, local decoder): anymae only; the
    # eager reference is the image MAE, so these are timed against anymae with every option off.
    "videomae_b": {
        "modality": "video",
        "tokenizer": {"num_frames": 16, "img_size": 224, "patch_size": 16, "tubelet_size": 2},
        "embed_dim": 768,
        "depth": 12,
        "num_heads": 12,
        "masking": "tube",
        "mask_ratio": 0.9,
        "target": "videomae",
        "cls_token": False,
        "decoder": "videomae",
        "decoder_embed_dim": 384,
        "decoder_depth": 4,
        "decoder_num_heads": 6,
    },
    "audiomae_b": {
        "modality": "audio",
        "tokenizer": {"target_length": 1024, "num_mel_bins": 128, "patch_size": 16},
        "embed_dim": 768,
        "depth": 12,
        "num_heads": 12,
        "mask_ratio": 0.8,
        "norm_pix_loss": True,
        "decoder": "local",
        "decoder_embed_dim": 512,
        "decoder_depth": 16,
        "decoder_num_heads": 16,
    },
    "tiny_video": {
        "modality": "video",
        "tokenizer": {"num_frames": 4, "img_size": 32, "patch_size": 8, "tubelet_size": 2},
        "embed_dim": 32,
        "depth": 1,
        "num_heads": 2,
        "masking": "tube",
        "mask_ratio": 0.75,
        "target": "videomae",
        "cls_token": False,
        "decoder": "videomae",
        "decoder_embed_dim": 16,
        "decoder_depth": 1,
        "decoder_num_heads": 2,
    },
    "tiny_audio": {
        "modality": "audio",
        "tokenizer": {"target_length": 64, "num_mel_bins": 32, "patch_size": 8},
        "embed_dim": 32,
        "depth": 1,
        "num_heads": 2,
        "mask_ratio": 0.8,
        "decoder": "local",
        "decoder_embed_dim": 16,
        "decoder_depth": 2,
        "decoder_num_heads": 2,
    },
    "tiny": {
        "tokenizer": {"img_size": 32, "patch_size": 8},
        "embed_dim": 32,
        "depth": 2,
        "num_heads": 2,
        "decoder_embed_dim": 16,
        "decoder_depth": 1,
        "decoder_num_heads": 2,
    },
}

# Variants as dotted anymae config overrides; "reference" is benchmarks/reference_mae.py.
# "anymae" is anymae with every optimization off (its gathers still use expand, not repeat).
VARIANTS: dict[str, dict[str, Any] | None] = {
    "reference": None,
    # The reference under the same glibc setting as the lean variants: the fair memory comparison.
    "reference+mallopt": {"bench.reference": True, "train.malloc_mmap_threshold": 65536},
    "anymae": {"model.fused_attn": False, "model.pred_masked_only": False, "optim.fused": False},
    "+fused_attn": {"model.fused_attn": True, "model.pred_masked_only": False, "optim.fused": False},
    "+pred_masked_only": {"model.fused_attn": False, "model.pred_masked_only": True, "optim.fused": False},
    "+fused_adamw": {"model.fused_attn": False, "model.pred_masked_only": False, "optim.fused": True},
    "+bf16": {"model.fused_attn": False, "optim.fused": False, "train.precision": "bf16"},
    "+compile": {"model.fused_attn": False, "optim.fused": False, "train.compile": True},
    "optimized": {"model.fused_attn": True, "model.pred_masked_only": True, "optim.fused": True},
    "optimized+bf16": {
        "model.fused_attn": True,
        "model.pred_masked_only": True,
        "optim.fused": True,
        "train.precision": "bf16",
    },
    "optimized+bf16+compile": {
        "model.fused_attn": True,
        "model.pred_masked_only": True,
        "optim.fused": True,
        "train.precision": "bf16",
        "train.compile": True,
    },
    # optim.step_in_backward: each parameter's AdamW update runs as soon as its gradient is complete and the
    # gradient is freed, so the gradients never all coexist.
    "optimized+step_in_backward": {
        "model.fused_attn": True,
        "model.pred_masked_only": True,
        "optim.fused": True,
        "optim.step_in_backward": True,
    },
    # Every memory option at once: no full gradient buffer, every block recomputed in backward, mallopt.
    "lean": {
        "model.fused_attn": True,
        "model.pred_masked_only": True,
        "optim.fused": True,
        "optim.step_in_backward": True,
        "train.malloc_mmap_threshold": 65536,
        "train.checkpoint_encoder_blocks": 64,
        "train.checkpoint_decoder_blocks": 64,
    },
    # train.checkpoint_decoder_blocks: activation checkpointing of the first k decoder blocks (recomputed in
    # backward), the decoder holding most of the activation memory (1 + L tokens against 1 + L_vis).
    "optimized+ckpt_decoder4": {
        "model.fused_attn": True,
        "model.pred_masked_only": True,
        "optim.fused": True,
        "train.checkpoint_decoder_blocks": 4,
    },
    "optimized+ckpt_decoder8": {
        "model.fused_attn": True,
        "model.pred_masked_only": True,
        "optim.fused": True,
        "train.checkpoint_decoder_blocks": 8,
    },
    # train.malloc_mmap_threshold: glibc keeps freed large blocks for reuse (its mmap threshold grows up to
    # 32 MiB), so a CPU process's RSS peak is well above its live tensors; a fixed threshold returns them.
    "optimized+mallopt": {
        "model.fused_attn": True,
        "model.pred_masked_only": True,
        "optim.fused": True,
        "train.malloc_mmap_threshold": 65536,
    },
    "optimized+mallopt+ckpt_decoder4": {
        "model.fused_attn": True,
        "model.pred_masked_only": True,
        "optim.fused": True,
        "train.malloc_mmap_threshold": 65536,
        "train.checkpoint_decoder_blocks": 4,
    },
    "optimized+compile": {
        "model.fused_attn": True,
        "model.pred_masked_only": True,
        "optim.fused": True,
        "train.compile": True,
    },
}


@dataclass
class Runner:
    """One variant ready to train: ``step(x)`` runs forward, backward and the optimizer update."""

    name: str
    step: Callable[[torch.Tensor], torch.Tensor]
    shape: MaeShape
    options: dict[str, Any]

    @property
    def flops_per_sample(self) -> float:
        return train_flops_per_sample(self.shape)


def _split(options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    sections: dict[str, dict[str, Any]] = {"model": {}, "optim": {}, "train": {}, "bench": {}}
    for dotted, value in options.items():
        section, key = dotted.split(".", 1)
        sections[section][key] = value
    return sections


def build_runner(name: str, arch: str, *, device: torch.device, mask_ratio: float | None = None) -> Runner:
    """Build variant ``name`` of architecture ``arch`` on ``device`` (weights freshly initialised); the mask
    ratio defaults to the architecture's own (0.75 for images)."""
    if mask_ratio is None:
        mask_ratio = ARCHS[arch].get("mask_ratio", 0.75)
    if name not in VARIANTS:
        raise KeyError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    options = VARIANTS[name]
    if options is None or options.get("bench.reference"):
        threshold = (options or {}).get("train.malloc_mmap_threshold")
        if threshold is not None:
            set_malloc_mmap_threshold(threshold)
        return _reference_runner(name, arch, device=device, mask_ratio=mask_ratio)
    return _anymae_runner(name, arch, options, device=device, mask_ratio=mask_ratio)


def _reference_runner(name: str, arch: str, *, device: torch.device, mask_ratio: float) -> Runner:
    a = ARCHS[arch]
    tok = a["tokenizer"]
    keys = ("embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_depth", "decoder_num_heads")
    model = ReferenceMAE(img_size=tok["img_size"], patch_size=tok["patch_size"], **{k: a[k] for k in keys if k in a})
    model.to(device)
    optimizer = reference_optimizer(model)
    tokens = (tok["img_size"] // tok["patch_size"]) ** 2
    d, dd = a["embed_dim"], a.get("decoder_embed_dim", 512)
    p = 3 * tok["patch_size"] ** 2
    shape = MaeShape(
        tokens=tokens,
        keep=int(tokens * (1 - mask_ratio)),
        patch_in=p,
        patch_out=p,
        embed_dim=d,
        depth=a["depth"],
        mlp_ratio=4.0,
        decoder_embed_dim=dd,
        decoder_depth=a.get("decoder_depth", 8),
        decoder_mlp_ratio=4.0,
    )
    return Runner(name, lambda x: reference_step(model, optimizer, x, mask_ratio=mask_ratio), shape, {})


def _anymae_runner(name: str, arch: str, options: dict[str, Any], *, device: torch.device, mask_ratio: float) -> Runner:
    """anymae's model and step as ``anymae pretrain`` runs them (core/train/task_pretrain.py), with ``options`` set."""
    from anymae.core.build.models import (
        build_model,
        checkpoint_decoder_blocks,
        checkpoint_encoder_blocks,
        compile_blocks,
    )
    from anymae.core.config import OptimConfig, TrainConfig, from_dict, resolve_model_config
    from anymae.core.train.optim import param_groups_weight_decay, step_in_backward

    sections = _split(options)
    cfg = resolve_model_config({**ARCHS[arch], "mask_ratio": mask_ratio, **sections["model"]})
    optim = from_dict(OptimConfig, sections["optim"], "optim")
    train = from_dict(TrainConfig, sections["train"], "train")
    if train.malloc_mmap_threshold is not None:
        set_malloc_mmap_threshold(train.malloc_mmap_threshold)
    model = build_model(cfg).to(device)
    model.train()
    checkpoint_decoder_blocks(model, train.checkpoint_decoder_blocks)
    checkpoint_encoder_blocks(model, train.checkpoint_encoder_blocks)
    if train.compile:
        compile_blocks(model)
    groups = param_groups_weight_decay(model, optim.weight_decay)
    bf16 = train.precision == "bf16"
    optimizer = torch.optim.AdamW(groups, lr=1.5e-4, betas=optim.betas, fused=optim.fused or None)
    if optim.step_in_backward:
        step_in_backward(model, optimizer)  # as the engine does: the updates run inside backward
        optimizer = None

    def step(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext():
            loss, _, _ = model(x)
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return Runner(name, step, shape_from_model(model, pred_masked_only=cfg.pred_masked_only), options)


def set_malloc_mmap_threshold(nbytes: int) -> bool:
    """glibc ``mallopt(M_MMAP_THRESHOLD, nbytes)`` for this whole process (later allocations): blocks above
    ``nbytes`` are mapped and unmapped on free. Returns False where there is no glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(-3, int(nbytes)))  # M_MMAP_THRESHOLD = -3 in <malloc.h>


# --- timing --------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_alternating(
    runners: list[Runner],
    make_batch: Callable[[], torch.Tensor],
    *,
    device: torch.device,
    reps: int,
    steps: int,
    warmup: int,
    warmup_seconds: dict[str, float] | None = None,
) -> dict[str, list[float]]:
    """samples/s of each runner over ``reps`` repetitions of ``steps`` steps, the runners interleaved
    (and their order rotated each repetition) so that machine-load drift hits all of them alike. The wall time
    of each runner's ``warmup`` steps (``torch.compile``'s build included) goes into ``warmup_seconds``."""
    x = make_batch()
    for r in runners:
        started = time.perf_counter()
        for _ in range(warmup):
            r.step(x)
        _sync(device)
        if warmup_seconds is not None:
            warmup_seconds[r.name] = time.perf_counter() - started
    rates: dict[str, list[float]] = {r.name: [] for r in runners}
    for rep in range(reps):
        k = rep % len(runners)
        for r in runners[k:] + runners[:k]:
            _sync(device)
            started = time.perf_counter()
            for _ in range(steps):
                loss = r.step(x)
            float(loss)  # waits for the device
            rates[r.name].append(steps * x.shape[0] / (time.perf_counter() - started))
    return rates


def median(values: list[float]) -> float:
    return statistics.median(values)


# --- memory: one fresh process per variant, because RSS peaks never go down -------------------------------
def measure_memory(variant: str, arch: str, *, batch: int, device: str, steps: int = 2) -> dict[str, float]:
    """Peak CPU RSS (and CUDA max allocated) of a few training steps of ``variant`` in a fresh process."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.step",
        "--memory-probe",
        variant,
        "--arch",
        arch,
        "--batch",
        str(batch),
        "--device",
        device,
        "--steps",
        str(steps),
    ]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"memory probe of {variant} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_probe(variant: str, arch: str, *, batch: int, device: torch.device, steps: int) -> dict[str, float]:
    """Run in the probe process: build, train ``steps`` steps, report peaks in MiB."""
    before = _peak_rss_mib()  # after imports, before the model
    runner = build_runner(variant, arch, device=device)
    x = _batch(arch, batch, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(steps):
        runner.step(x)
    _sync(device)
    result = {"peak_rss_mib": _peak_rss_mib(), "rss_imports_mib": before}
    if device.type == "cuda":
        result["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def _peak_rss_mib() -> float:
    """This process's RSS high-water mark. ``VmHWM`` belongs to the process image; ``getrusage``'s
    ``ru_maxrss`` would also carry the parent's peak across fork + exec (Linux keeps it in the signal struct)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # macOS: bytes, but no /proc there


def input_shape(arch: str) -> tuple[int, ...]:
    """One sample's input shape for ``arch``: (3, H, W) images, (3, T, H, W) clips, (1, T, F) spectrograms."""
    a = ARCHS[arch]
    tok = a["tokenizer"]
    if a.get("modality") == "video":
        return (3, tok["num_frames"], tok["img_size"], tok["img_size"])
    if a.get("modality") == "audio":
        return (1, tok["target_length"], tok["num_mel_bins"])
    return (3, tok["img_size"], tok["img_size"])


def has_reference(arch: str) -> bool:
    """The eager reference (``reference_mae.py``) is the image MAE."""
    return ARCHS[arch].get("modality", "image") == "image"


def _batch(arch: str, batch: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, *input_shape(arch), generator=generator).to(device)


# --- machine, peak FLOP/s ----------------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {model}, {os.cpu_count()} cores"


# Dense peak FLOP/s from the vendors' data sheets (no sparsity): (bf16 tensor core, fp32 without TF32).
_GPU_PEAKS = {
    "H100 PCIe": (756e12, 51e12),
    "H100": (989e12, 67e12),  # SXM / HBM3
    "H200": (989e12, 67e12),
    "A100": (312e12, 19.5e12),
}


def nominal_peak_flops(device: torch.device, *, bf16: bool) -> tuple[float | None, str]:
    """(peak FLOP/s, where the number comes from). CPUs: a measured large GEMM in the same dtype."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, (p_bf16, p_fp32) in _GPU_PEAKS.items():
            if key in name:
                return (p_bf16 if bf16 else p_fp32), f"{key} data sheet"
        return None, f"unknown GPU {name}"
    return measured_gemm_flops(torch.bfloat16 if bf16 else torch.float32), "measured 2048^3 GEMM"


_GEMM_BEST: dict[torch.dtype, float] = {}


def measured_gemm_flops(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of an n^3 GEMM, the best seen by any call in this process (scripts call it before and after
    timing, so a burst of load from other jobs during one measurement does not lower the peak)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    for _ in range(reps):
        started = time.perf_counter()
        a @ b
        _GEMM_BEST[dtype] = max(_GEMM_BEST.get(dtype, 0.0), 2 * n**3 / (time.perf_counter() - started))
    return _GEMM_BEST[dtype]


# --- RESULTS.md ---------------------------------------------------------------------------------------------
def machine_header(device: torch.device) -> str:
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"{device_name(device)}; torch {torch.__version__}; {today}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def write_section(path: Path, *, machine: str, script: str, markdown: str) -> None:
    """Append or replace the block of ``script`` for ``machine`` in ``path`` (other blocks stay as they are)."""
    key = f"{_slug(machine)}/{script}"
    begin, end = f"<!-- begin {key} -->", f"<!-- end {key} -->"
    block = f"{begin}\n{markdown.rstrip()}\n{end}\n"
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    if not machine.startswith("CPU"):
        text = _drop_block(text, PENDING_GPU)  # the "not measured" GPU rows give way to measured ones
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


PENDING_GPU = "pending-gpu"


def _drop_block(text: str, key: str) -> str:
    begin, end = f"<!-- begin {key} -->", f"<!-- end {key} -->"
    if begin not in text or end not in text:
        return text
    head, rest = text.split(begin, 1)
    return head + rest.split(end, 1)[1].lstrip("\n")


def report(title: str, table: str, *, script: str, results: Path | None) -> None:
    """Print a CPU measurement's table and, with ``results``, write it as ``script``'s section for this machine
    (title, machine, torch version, date and the command line)."""
    device = torch.device("cpu")
    command = f"python -m benchmarks.{script.split('-')[0]} " + " ".join(sys.argv[1:])
    body = f"{title}\n\n{machine_header(device)}\n\n`{command.strip()}`\n\n{table}\n"
    print(body)
    if results is not None:
        write_section(results, machine=device_name(device), script=script, markdown=body)


def add_transfer_study_arguments(run: Any, sub: Any, *, tag: str, example: str) -> None:
    """The arguments the transfer studies share: ``--start`` (repeatable), ``--tag``, ``--set KEY=VALUE`` on the
    run subcommand ``run``, and the ``report ROOT [--results]`` subcommand on ``sub``."""
    run.add_argument("--start", action="append", required=True, help="'random' or a pre-training checkpoint")
    run.add_argument("--tag", default=tag, help="a name for the regime in the table")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help=f"an override of the recipe (repeatable), e.g. --set {example}")  # fmt: skip
    report = sub.add_parser("report", help="the table of ROOT/results.jsonl")
    report.add_argument("root", type=Path)
    report.add_argument("--results", type=Path, default=None, help="write it into this RESULTS.md")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


SHAPE_NAMES = {
    "vit_b16": "ViT-B/16",
    "vit_l16": "ViT-L/16",
    "vit_h14": "ViT-H/14",
    "videomae_b": "VideoMAE-B 16x224",
    "audiomae_b": "AudioMAE-B 1024x128",
    "tiny": "tiny (test)",
}
