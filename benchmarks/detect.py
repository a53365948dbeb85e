"""``anymae detect`` speed: samples/s of a Mask R-CNN training step (forward, the five losses, backward, AdamW with
layer-wise decay) and images/s of inference, for ViT-B/16 with ViTDet's simple pyramid, windows of 14 and ViTDet's
heads at 1024 px (the COCO recipe of ``configs/mae_vit_base_coco_maskrcnn.yaml``), on random images with 8 random
boxes and masks each (compute only, no data loading).

    python -m benchmarks.detect --results benchmarks/RESULTS.md                 # ViT-B, 1024 px
    python -m benchmarks.detect --quick                                          # a tiny model, seconds
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from anymae.core.build.detector import build_detector, param_groups_detector
from anymae.core.build.models import build_model
from anymae.core.config import resolve_model_config

from .common import device_name, machine_header, write_section

VIT_B = {"modality": "image", "tokenizer": {"img_size": 224, "patch_size": 16}, "embed_dim": 768, "depth": 12,
         "num_heads": 12}  # fmt: skip
TINY = {"modality": "image", "tokenizer": {"img_size": 64, "patch_size": 8}, "embed_dim": 64, "depth": 4,
        "num_heads": 4}  # fmt: skip
CATEGORIES = [{"id": k, "name": str(k)} for k in range(1, 81)]  # COCO's 80
LIGHT = {"out_channels": 64, "head_channels": 64, "box_convs": 1, "box_fc": 256, "mask_convs": 1}


def _timed(step, *, warmup: int, iters: int, device: torch.device) -> float:
    """Median seconds of ``step()`` over ``iters`` runs after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _targets(batch: int, side: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """8 random boxes per image, each with its box filled as the mask, labels in 1..80."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(batch):
        xy = torch.rand(8, 2, generator=g) * side * 0.7
        wh = torch.rand(8, 2, generator=g) * side * 0.25 + 16
        boxes = torch.cat([xy, (xy + wh).clamp(max=side)], dim=1)
        masks = torch.zeros(8, side, side, dtype=torch.uint8)
        for k, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
            masks[k, y1:y2, x1:x2] = 1
        labels = torch.randint(1, 81, (8,), generator=g)
        out.append({"boxes": boxes.to(device), "labels": labels.to(device), "masks": masks.to(device)})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny ViT and light heads at 128 px (a smoke test)")
    parser.add_argument("--batch", type=int, default=1, help="training batch (ViTDet: 1 image per GPU, 64 GPUs)")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--results", type=Path, help="append the table to this markdown file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    side = 128 if args.quick else 1024
    torch.manual_seed(0)
    mae = build_model(resolve_model_config(TINY if args.quick else VIT_B), with_decoder=False)
    model = build_detector(
        mae, backbone="simple_pyramid", categories=CATEGORIES, min_size=side, max_size=side,
        mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], window=0 if args.quick else 14, drop_path=0.1,
        **(LIGHT if args.quick else {}),
    ).to(device)  # fmt: skip
    optimizer = torch.optim.AdamW(param_groups_detector(model, weight_decay=0.1, layer_decay=0.7), lr=1e-4)
    images = [torch.rand(3, side, side, device=device) for _ in range(args.batch)]
    targets = _targets(args.batch, side, device)
    dtype = torch.bfloat16 if args.precision == "bf16" else None

    def train_step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            losses = model(images, targets)
            loss = sum(value.float() for value in losses.values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    train_s = _timed(train_step, warmup=1, iters=args.iters, device=device)
    model.eval()

    @torch.no_grad()
    def infer() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            model(images[:1])

    infer_s = _timed(infer, warmup=1, iters=args.iters, device=device)
    arch = "tiny ViT 64x4, light heads" if args.quick else "ViT-B/16, simple pyramid, window 14, ViTDet heads"
    table = (
        f"| model | input | precision | training samples/s (batch {args.batch}) | inference images/s |\n"
        f"|---|---|---|---|---|\n"
        f"| {arch} | {side}x{side} | {args.precision} | {args.batch / train_s:.3f} | {1 / infer_s:.3f} |"
    )
    machine = machine_header(device)
    print(f"{device_name(device)}\n{table}")
    if args.results is not None:
        markdown = f"### `anymae detect` speed ({machine})\n\n`python -m benchmarks.detect`\n\n{table}\n"
        write_section(args.results, machine=machine.split(";")[0], script="detect", markdown=markdown)


if __name__ == "__main__":
    main()
