"""Released weights by name: ``hf-hub:ORG/NAME[@REVISION]`` -> a local folder of the model's files.

Resolved with ``huggingface_hub.snapshot_download``, so its cache (``HF_HOME`` / ``HF_HUB_CACHE``), offline mode
(``HF_HUB_OFFLINE=1``: the cache only, no network) and tokens (``huggingface-cli login``, ``HF_TOKEN``) apply as
in transformers and timm. Safetensors are preferred: the weights of a repository that has ``*.safetensors`` are
fetched alone; pickles (``pytorch_model.bin``, ``*.pth``) only when it has none, and they are read later with
``torch.load(weights_only=True)`` like every checkpoint. Nothing is fetched unless a command is given a hub
name; which layout the files hold (transformers ViTMAE / VideoMAE, timm, official) is decided by the checkpoint
formats exactly as for a local folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from anymae.core.io.checkpoint import CheckpointError

__all__ = ["HUB_PREFIX", "is_hub_name", "parse_hub_name", "resolve_hub", "resolve_source"]

HUB_PREFIX = "hf-hub:"  # timm's spelling for hub names (timm.create_model("hf-hub:ORG/NAME"))
# Configs and model cards first; the weights in the safest form the repository has.
_META = ["*.json", "*.md"]
_SAFE = ["*.safetensors"]
_PICKLES = ["*.bin", "*.pth", "*.pt"]


def is_hub_name(source: str | Path) -> bool:
    """True for ``hf-hub:ORG/NAME[@REVISION]``."""
    return isinstance(source, str) and source.startswith(HUB_PREFIX)


def parse_hub_name(name: str) -> tuple[str, str | None]:
    """``hf-hub:ORG/NAME@REVISION`` -> ``("ORG/NAME", "REVISION")`` (revision None when not given)."""
    body = name.removeprefix(HUB_PREFIX)
    repo, _, revision = body.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise CheckpointError(f"{name}: a hub name is hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION")
    return repo, revision or None


def _download(repo: str, revision: str | None, patterns: list[str]) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo, revision=revision, allow_patterns=patterns))


def _has_weights(folder: Path, patterns: list[str]) -> bool:
    return any(next(folder.glob(p), None) for p in patterns)


def resolve_hub(name: str) -> Path:
    """A hub name -> its snapshot in the Hugging Face cache (downloaded when not there, unless offline): the
    folder of a transformers model, else its weights file. Every failure is one :class:`CheckpointError` line
    naming the model and what to do."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo, revision = parse_hub_name(name)
    try:
        folder = _download(repo, revision, _META + _SAFE)
        if not _has_weights(folder, _SAFE):
            folder = _download(repo, revision, _META + _PICKLES)
    except GatedRepoError:
        raise CheckpointError(
            f"{name}: the model is gated; accept its terms on huggingface.co and log in (`hf auth login`)"
        ) from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{name}: the hub has {repo} but no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"{name}: no such model on the hub (check the name with `anymae models`; a private model needs "
            "`hf auth login`)"
        ) from None
    except LocalEntryNotFoundError:
        where = "offline (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else "the hub cannot be reached"
        raise CheckpointError(
            f"{name}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {where}; fetch it once on a "
            f"connected machine (`hf download {repo}{f' --revision {revision}' if revision else ''}`) or point "
            "HF_HOME at a cache that has it"
        ) from None
    except OSError as exc:  # network errors, a full disk
        raise CheckpointError(f"{name}: cannot fetch it from the hub: {exc}") from None
    return _entry(name, folder)


def _entry(name: str, folder: Path) -> Path:
    """What the checkpoint formats read of a snapshot: the folder when it is a transformers model (its
    ``config.json`` names a ``model_type``), else its one weights file (timm's ``model.safetensors``, an official
    ``.pth``)."""
    config = folder / "config.json"
    if config.is_file() and "model_type" in json.loads(config.read_text()):
        return folder
    for pattern in _SAFE + _PICKLES:
        found = sorted(folder.glob(pattern))
        if len(found) == 1:
            return found[0]
        if found:
            raise CheckpointError(f"{name}: several weight files ({', '.join(f.name for f in found)}); name one")
    raise CheckpointError(f"{name}: the repository has no weights (*.safetensors, *.bin, *.pth) at {folder}")


def resolve_source(source: str | Path) -> Path:
    """A checkpoint source as every command takes it: a hub name is resolved to its local folder, a path stays."""
    return resolve_hub(source) if is_hub_name(source) else Path(source)
