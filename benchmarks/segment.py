"""``anymae segment`` speed: samples/s of a segmenter training step (forward, loss, backward, AdamW) and of
sliding-window inference (crop 512, stride 341, mmseg's ADE20K test) for ViT-B/16 + UperNet (768 channels, BEiT's
ADE20K head) at 512 px, on random inputs (compute only, no data loading).

    python -m benchmarks.segment --results benchmarks/RESULTS.md                 # ViT-B, 512 px
    python -m benchmarks.segment --quick                                          # a tiny model, seconds
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from anymae.core.build.models import build_model
from anymae.core.build.segmenter import build_segmenter, param_groups_layer_decay
from anymae.core.config import resolve_model_config
from anymae.core.evaluate.segmentation import slide_inference
from anymae.core.model.heads import segmentation_loss

from .common import device_name, machine_header, write_section

VIT_B = {"modality": "image", "tokenizer": {"img_size": 224, "patch_size": 16}, "embed_dim": 768, "depth": 12,
         "num_heads": 12}  # fmt: skip
TINY = {"modality": "image", "tokenizer": {"img_size": 64, "patch_size": 8}, "embed_dim": 64, "depth": 4,
        "num_heads": 4}  # fmt: skip


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny ViT at 128 px (a smoke test)")
    parser.add_argument("--batch", type=int, default=2, help="training batch (BEiT ADE20K: 2 per GPU)")
    parser.add_argument("--image", type=int, default=683, help="inference image side (an ADE20K-like 512x683)")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--results", type=Path, help="append the table to this markdown file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    crop = 128 if args.quick else 512
    torch.manual_seed(0)
    mae = build_model(resolve_model_config(TINY if args.quick else VIT_B), with_decoder=False)
    model = build_segmenter(mae, head="upernet", num_classes=150, crop=(crop, crop),
                            head_options={"channels": 64 if args.quick else 768}, drop_path=0.1).to(device)  # fmt: skip
    optimizer = torch.optim.AdamW(param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.65), lr=1e-4)
    x = torch.randn(args.batch, 3, crop, crop, device=device)
    y = torch.randint(0, 150, (args.batch, crop, crop), device=device)
    dtype = torch.bfloat16 if args.precision == "bf16" else None

    def train_step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits, aux = model(x)
            loss = segmentation_loss(logits.float(), aux.float(), y, aux_weight=0.4, ignore_index=255)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    train_s = _timed(train_step, warmup=2, iters=args.iters, device=device)
    side = crop if args.quick else args.image
    image = torch.randn(1, 3, crop, side, device=device)
    model.eval()

    @torch.no_grad()
    def infer() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            slide_inference(model.predict, image, num_classes=150, crop=(crop, crop), stride=(crop * 2 // 3,) * 2)

    infer_s = _timed(infer, warmup=2, iters=args.iters, device=device)
    windows = 1 if side <= crop else -(-(side - crop) // (crop * 2 // 3)) + 1
    arch = "tiny ViT 64x4" if args.quick else "ViT-B/16 + UperNet 768"
    table = (
        f"| model | crop | precision | training samples/s (batch {args.batch}) | inference images/s ({crop}x{side}, "
        f"{windows} windows) |\n|---|---|---|---|---|\n"
        f"| {arch} | {crop} | {args.precision} | {args.batch / train_s:.2f} | {1 / infer_s:.3f} |"
    )
    machine = machine_header(device)
    print(f"{device_name(device)}\n{table}")
    if args.results is not None:
        markdown = f"### `anymae segment` speed ({machine})\n\n`python -m benchmarks.segment`\n\n{table}\n"
        write_section(args.results, machine=machine.split(";")[0], script="segment", markdown=markdown)


if __name__ == "__main__":
    main()
