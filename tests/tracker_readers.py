"""Read back what each tracker stored, from its own files: TensorBoard events, a W&B offline run file, an MLflow
store. Used to check that every tracker holds the same metrics."""

from __future__ import annotations

import struct
from pathlib import Path


def tensorboard_scalars(run_dir: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {e.step: round(e.value, 6) for e in events.Scalars(tag)}


def _wandb_records(path: Path) -> list[bytes]:
    """The records of a ``.wandb`` file: a 7-byte header, then LevelDB-log framing (32 KiB blocks; each record
    a crc32, a little-endian length and a type: 1 full, 2 first, 3 middle, 4 last)."""
    data, pos, block, out, part = path.read_bytes(), 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            out.append(chunk)
        elif kind in (2, 3):
            part += chunk
        elif kind == 4:
            out.append(part + chunk)
            part = b""
    return out


def wandb_scalars(run_dir: Path, tag: str) -> dict[int, float]:
    from wandb.proto import wandb_internal_pb2 as pb

    values: dict[int, float] = {}
    for path in sorted(run_dir.glob("wandb/*run-*/run-*.wandb")):
        for raw in _wandb_records(path):
            record = pb.Record()
            record.ParseFromString(raw)
            if record.WhichOneof("record_type") != "history":
                continue
            items = {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
            if tag in items:
                values[int(items["_step"])] = round(float(items[tag]), 6)
    return values


def mlflow_scalars(run_id: str, tag: str) -> dict[int, float]:
    import mlflow

    history = mlflow.MlflowClient().get_metric_history(run_id, tag)
    steps = [m.step for m in history]
    assert len(steps) == len(set(steps)), f"MLflow holds a step twice: {sorted(steps)}"
    return {m.step: round(m.value, 6) for m in history}
