"""A Hugging Face hub cache written by hand (the layout ``huggingface_hub`` reads offline), so hub names are
tested with no network: ``models--ORG--NAME/refs/<revision>`` holds a commit hash and
``models--ORG--NAME/snapshots/<commit>/`` the files."""

from __future__ import annotations

import hashlib
from pathlib import Path


def write_hub_model(cache: Path, repo: str, files: dict[str, bytes | Path], *, revision: str = "main") -> Path:
    """Put ``files`` (name -> bytes, or a file to copy) into ``cache`` as the snapshot of ``repo`` at ``revision``;
    returns the snapshot folder."""
    commit = hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()
    root = cache / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        data = content.read_bytes() if isinstance(content, Path) else content
        (snapshot / name).write_bytes(data)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / revision).write_text(commit)
    return snapshot
