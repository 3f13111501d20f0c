"""Checkpoints, the one module: read weights strictly, write files atomically.

Everything that reads or writes a checkpoint goes through here: the entrypoints'
``weights=``, the config's ``model.weights``, the trainer's checkpoints and resume,
``tools/test_net.py`` and ``tools/export_net.py``.

* :func:`load_weights` reads a local path or an ``http(s)://`` URL (iopath's
  ``PathManager``) with ``torch.load(..., weights_only=True)`` (no pickled code runs),
  finds the state dict in the usual layouts (:func:`extract_state_dict`: a plain state
  dict, PyTorchVideo's model zoo ``{"model_state": ...}``, this project's
  ``{"model": ...}``, ``{"state_dict": ...}``) and loads it strictly
  (:func:`load_state_dict_strict`: every missing, unexpected or mis-shaped key is named in
  a :class:`CheckpointMismatchError`; per-configuration BN statistics load when present and
  are not required).
* :func:`atomic_save` is the one atomic write of a checkpoint (a temporary file in the same
  folder, then ``os.replace``; a remote store's move): a crash mid-save leaves the previous
  file intact. :func:`save_weights` is it for a plain payload.
* :class:`MutualCheckpointer` is fvcore's ``Checkpointer`` with these loads and saves, the
  ``last_checkpoint`` tag written atomically, and pruning of old periodic checkpoints.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from fvcore.common.checkpoint import Checkpointer, _IncompatibleKeys
from iopath.common.file_io import HTTPURLHandler, PathManager
from torch import nn

from .io import atomic_path, atomic_write_text

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "CorruptCheckpointError",
    "MutualCheckpointer",
    "atomic_save",
    "extract_state_dict",
    "load_checkpoint_file",
    "load_state_dict_strict",
    "load_weights",
    "path_manager",
    "save_weights",
]

_MAX_LISTED = 10
_STATE_KEYS = ("model_state", "model", "state_dict", "model_state_dict")
_OPTIONAL = ".config_stats."  # per-configuration BN statistics: loaded when present, never required


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used (the message names the file and why)."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's keys or shapes do not match the model (the message names them)."""


class CorruptCheckpointError(CheckpointError):
    """Not a readable checkpoint: truncated, not a torch file, or holding more than tensors
    and containers (``weights_only=True`` refused it: no pickled code ran)."""


def path_manager() -> PathManager:
    """A ``PathManager`` for local paths and ``http(s)://`` / ``ftp://`` URLs."""
    manager = PathManager()
    manager.register_handler(HTTPURLHandler())
    return manager


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------
def load_checkpoint_file(path: str | os.PathLike, *, source: str | None = None,
                         manager: PathManager | None = None) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` of a local path or URL.

    Raises ``FileNotFoundError`` naming ``source`` (default: the path) if nothing is there,
    and :class:`CorruptCheckpointError` naming the file if it is truncated, not a torch
    file, or holds more than tensors and containers (``weights_only`` refuses it).
    """
    path = os.fspath(path)
    label = path if source is None else f"{source}: {path}"
    local = (manager or path_manager()).get_local_path(path) if not _is_local(path) else path.removeprefix("file://")
    if not os.path.isfile(local):
        raise FileNotFoundError(f"checkpoint not found: {label}")
    try:
        return torch.load(local, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if found:
            raise CorruptCheckpointError(f"{label}: holds more than tensors and containers (it pickles "
                                         f"{found.group(1)}); weights_only=True refused it, no code ran") from None
        raise CorruptCheckpointError(f"{label}: not a readable checkpoint, truncated or not a torch file "
                                     f"({_weights_only_reason(exc)})") from None
    except Exception as exc:  # a damaged file can make the unpickler fail in any way (struct.error, KeyError, ...)
        raise CorruptCheckpointError(f"{label}: not a readable checkpoint, truncated or not a torch file "
                                     f"({type(exc).__name__}: {_short(exc)})") from None


def _weights_only_reason(exc: BaseException) -> str:
    """The unpickler's own complaint inside torch's long ``weights_only`` message."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines()]
    for line in lines:
        if line.startswith("WeightsUnpickler error:"):
            return line[len("WeightsUnpickler error:"):].strip()[:120]
    return _short(exc)


def _short(exc: BaseException) -> str:
    """The first sentence of an exception's message, without terminal escapes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    cut = first.find(". ", 20)
    return (first if cut < 0 else first[:cut])[:120]


def extract_state_dict(checkpoint: Any, *, source: str) -> dict[str, torch.Tensor]:
    """The model state dict inside ``checkpoint`` (any layout of the module docstring)."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointMismatchError(f"{source}: expected a dict checkpoint, got {type(checkpoint).__name__}")
    for key in _STATE_KEYS:
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return dict(inner)
    if checkpoint and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in checkpoint.items()):
        return dict(checkpoint)
    raise CheckpointMismatchError(
        f"{source}: no model state dict found (looked for a plain state dict and the keys "
        f"{' / '.join(_STATE_KEYS)}; top-level keys: {sorted(map(str, checkpoint))[:_MAX_LISTED]})"
    )


def _listed(keys: list[str]) -> str:
    return ", ".join(keys[:_MAX_LISTED]) + (f", ... ({len(keys)} in all)" if len(keys) > _MAX_LISTED else "")


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
    """``model.load_state_dict(state_dict)``, strict, with an error naming every bad key.

    A ``module.`` prefix on every key (saved from a DDP wrapper) is dropped first.
    Per-configuration BN statistics (``*.config_stats.*``) load when present and are not
    required. Raises :class:`CheckpointMismatchError` ("<source> does not match the model
    strictly: missing keys: ...; unexpected keys: ...; shape mismatch: ...").
    """
    model = getattr(model, "module", model) if isinstance(model, nn.parallel.DistributedDataParallel) else model
    state = dict(state_dict)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    own = model.state_dict()
    shapes = [f"{k} (checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)})" for k, v in state.items()
              if k in own and isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(own[k].shape)]
    if shapes:
        raise CheckpointMismatchError(f"{source} does not match the model strictly: shape mismatch: {_listed(shapes)}")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # e.g. a SlimBatchNorm's malformed per-configuration statistics
        raise CheckpointMismatchError(f"{source} does not match the model strictly: {exc}") from None
    missing = sorted(k for k in result.missing_keys if _OPTIONAL not in k)
    unexpected = sorted(result.unexpected_keys)
    if missing or unexpected:
        problems = [f"{label}: {_listed(keys)}" for label, keys in
                    (("missing keys", missing), ("unexpected keys", unexpected)) if keys]
        raise CheckpointMismatchError(f"{source} does not match the model strictly: " + "; ".join(problems))


def load_weights(model: nn.Module, path: str | os.PathLike, *, source: str | None = None,
                 manager: PathManager | None = None) -> dict[str, Any]:
    """Load the checkpoint at ``path`` (a local path or a URL) into ``model``, strictly.

    ``source`` names the weights in errors (e.g. ``"model.weights"`` for a config key).
    Returns the whole checkpoint payload (``{"model": state}`` for a plain state dict).
    Raises ``FileNotFoundError``, :class:`CorruptCheckpointError` or
    :class:`CheckpointMismatchError`, each naming the file.
    """
    label = os.fspath(path) if source is None else f"{source} {os.fspath(path)}"
    payload = load_checkpoint_file(path, source=source, manager=manager)
    state = extract_state_dict(payload, source=label)
    load_state_dict_strict(model, state, source=label)
    if isinstance(payload, Mapping) and any(key in payload for key in _STATE_KEYS):
        return dict(payload)
    return {"model": state}


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------
def atomic_save(obj: Any, path: str | os.PathLike, *, manager: PathManager | None = None) -> Path:
    """``torch.save(obj)`` to ``path`` atomically: readers see the old file or the new one.

    Local paths: a temporary file in the same folder, flushed to disk, then ``os.replace``
    (:func:`mutualnet_video.io.atomic_path`). Remote paths: the store's ``open`` of a
    temporary name, then its ``mv``.
    """
    path = os.fspath(path)
    if _is_local(path):
        with atomic_path(path.removeprefix("file://")) as tmp, open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        return Path(path.removeprefix("file://"))
    manager = manager or path_manager()
    tmp = f"{path}.tmp"
    with manager.open(tmp, "wb") as f:
        torch.save(obj, f)
    manager.mv(tmp, path)
    return Path(path)


def save_weights(payload: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write a checkpoint payload (e.g. ``{"model": state_dict, ...}``) atomically; returns the path."""
    return atomic_save(dict(payload), path)


class MutualCheckpointer(Checkpointer):
    """fvcore ``Checkpointer`` with atomic saves, ``weights_only`` loads and strict keys.

    Saving refuses non-finite weights (``FloatingPointError``), so a diverged run never
    overwrites its last good checkpoint. ``keep`` periodic ``model_*.pth`` files are
    kept (``model_final.pth`` is never deleted).
    """

    def __init__(self, model: nn.Module, save_dir: str = "", *, save_to_disk: bool = True, keep: int | None = None,
                 **checkpointables: Any) -> None:
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.keep = keep

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        state = self.model.state_dict()
        bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise FloatingPointError(
                f"refusing to save checkpoint {name}: non-finite values in {', '.join(bad[:_MAX_LISTED])}; "
                "the last good checkpoint is kept"
            )
        data: dict[str, Any] = {"model": state}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.path_manager.mkdirs(self.save_dir)
        self.logger.info("Saving checkpoint to %s", save_file)
        atomic_save(data, save_file, manager=self.path_manager)
        self.tag_last_checkpoint(basename)
        self._prune(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        save_file = os.path.join(self.save_dir, "last_checkpoint")
        if _is_local(save_file):
            atomic_write_text(save_file, last_filename_basename)
            return
        tmp = f"{save_file}.tmp"
        with self.path_manager.open(tmp, "w") as f:
            f.write(last_filename_basename)
        self.path_manager.mv(tmp, save_file)

    def _prune(self, latest: str) -> None:
        if self.keep is None:
            return
        periodic = sorted(
            f for f in self.path_manager.ls(self.save_dir)
            if f.startswith("model_") and f.endswith(".pth") and f != "model_final.pth"
        )
        for old in periodic[: max(0, len(periodic) - self.keep)]:
            if old != latest:
                self.path_manager.rm(os.path.join(self.save_dir, old))

    def _load_file(self, f: str) -> dict[str, Any]:
        checkpoint = load_checkpoint_file(f)
        if not isinstance(checkpoint, dict) or "model" not in checkpoint:
            checkpoint = {"model": extract_state_dict(checkpoint, source=f)}
        self._source = f
        return checkpoint

    def _load_model(self, checkpoint: Any) -> _IncompatibleKeys:
        state = checkpoint.pop("model")
        load_state_dict_strict(self.model, state, source=f"checkpoint {getattr(self, '_source', '?')}")
        return _IncompatibleKeys(missing_keys=[], unexpected_keys=[], incorrect_shapes=[])
