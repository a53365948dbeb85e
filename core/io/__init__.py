"""The io room: checkpoint files that survive a crash.

Atomic writes (temp file, fsync, rename), safe reads (``torch.load(weights_only=True)``, safetensors) and the
payload an anymae checkpoint holds. Floor 0: it imports nothing of anymae; which architecture a file's weights
belong to is decided above, in :mod:`anymae.core.weights`.
"""

from anymae.core.io.checkpoint import (
    CheckpointError,
    export_safetensors,
    read_checkpoint,
    read_payload,
    read_safetensors,
    write_checkpoint,
)

__all__ = [
    "CheckpointError",
    "export_safetensors",
    "read_checkpoint",
    "read_payload",
    "read_safetensors",
    "write_checkpoint",
]
