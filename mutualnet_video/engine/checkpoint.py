"""Checkpoints: fvcore's ``Checkpointer`` made atomic, ``weights_only`` and strict.

* ``save`` writes ``<name>.pth.tmp`` and ``os.replace``-s it (also the ``last_checkpoint``
  tag), so a crash mid-save leaves the previous file intact.
* ``_load_file`` uses ``torch.load(..., weights_only=True)``: no pickled code runs.
* ``_load_model`` loads strictly: missing, unexpected or mis-shaped keys raise a
  ``RuntimeError`` that names them (fvcore only logs them).
* :func:`load_pretrained` starts a model from a stock PyTorchVideo checkpoint (a plain
  state dict, ``{"model_state": ...}`` from the model zoo, or our ``{"model": ...}``).
* :func:`capture_rng_state` / :func:`restore_rng_state`: torch, CUDA, numpy and python
  RNGs as tensors and lists (loadable with ``weights_only=True``).
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from fvcore.common.checkpoint import Checkpointer, _IncompatibleKeys
from torch import nn

__all__ = [
    "MutualCheckpointer",
    "load_pretrained",
    "load_state_dict_strict",
    "extract_state_dict",
    "capture_rng_state",
    "restore_rng_state",
    "atomic_torch_save",
]

_MAX_LISTED = 10


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def atomic_torch_save(obj: Any, path: str, *, path_manager=None) -> None:
    """``torch.save`` to ``path + '.tmp'``, then ``os.replace`` onto ``path``."""
    tmp = f"{path}.tmp"
    try:
        if path_manager is None:
            with open(tmp, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
        else:
            with path_manager.open(tmp, "wb") as f:
                torch.save(obj, f)
        if _is_local(path):
            os.replace(tmp, path)
        else:  # remote stores: the handler's move
            path_manager.mv(tmp, path)
    except BaseException:
        if _is_local(tmp) and os.path.exists(tmp):
            os.remove(tmp)
        raise


def _describe_mismatch(missing: list[str], unexpected: list[str], shapes: list[tuple[str, tuple, tuple]],
                       source: str) -> str:
    parts = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected)):
        if keys:
            shown = ", ".join(keys[:_MAX_LISTED]) + (f", ... ({len(keys)} in all)" if len(keys) > _MAX_LISTED else "")
            parts.append(f"{label}: {shown}")
    if shapes:
        shown = ", ".join(f"{k} (checkpoint {tuple(a)} vs model {tuple(b)})" for k, a, b in shapes[:_MAX_LISTED])
        parts.append(f"shape mismatch: {shown}")
    return f"{source} does not match the model strictly: " + "; ".join(parts)


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
    """``model.load_state_dict(state_dict, strict=True)`` with an error naming every bad key."""
    state = dict(state_dict)
    if state and all(k.startswith("module.") for k in state):  # saved from a DDP wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    own = model.state_dict()
    shapes = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
              if k in own and isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(own[k].shape)]
    if shapes:
        raise RuntimeError(_describe_mismatch([], [], shapes, source))
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(_describe_mismatch(list(result.missing_keys), list(result.unexpected_keys), [], source))


def extract_state_dict(checkpoint: Any, *, source: str) -> dict[str, torch.Tensor]:
    """The model state dict inside a checkpoint of any of the usual layouts."""
    if not isinstance(checkpoint, Mapping):
        raise RuntimeError(f"{source}: expected a dict checkpoint, got {type(checkpoint).__name__}")
    for key in ("model_state", "model", "state_dict", "model_state_dict"):
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return dict(inner)
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return dict(checkpoint)
    raise RuntimeError(
        f"{source}: no model state dict found (looked for a plain state dict and the keys "
        f"model_state / model / state_dict; top-level keys: {sorted(checkpoint)[:_MAX_LISTED]})"
    )


def load_pretrained(model: nn.Module, path: str) -> None:
    """Load weights into ``model`` from ``path`` (stock PyTorchVideo or ours), strictly."""
    from iopath.common.file_io import PathManager

    local = PathManager().get_local_path(path)
    if not os.path.isfile(local):
        raise FileNotFoundError(f"model.weights: checkpoint not found: {path}")
    checkpoint = torch.load(local, map_location="cpu", weights_only=True)
    state = extract_state_dict(checkpoint, source=f"model.weights {path}")
    load_state_dict_strict(getattr(model, "module", model), state, source=f"model.weights {path}")


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
        atomic_torch_save(data, save_file, path_manager=self.path_manager)
        self.tag_last_checkpoint(basename)
        self._prune(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        save_file = os.path.join(self.save_dir, "last_checkpoint")
        tmp = f"{save_file}.tmp"
        with self.path_manager.open(tmp, "w") as f:
            f.write(last_filename_basename)
        if _is_local(save_file):
            os.replace(tmp, save_file)
        else:
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
        checkpoint = torch.load(f, map_location=torch.device("cpu"), weights_only=True)
        if not isinstance(checkpoint, dict) or "model" not in checkpoint:
            checkpoint = {"model": extract_state_dict(checkpoint, source=f)}
        self._source = f
        return checkpoint

    def _load_model(self, checkpoint: Any) -> _IncompatibleKeys:
        state = checkpoint.pop("model")
        load_state_dict_strict(self.model, state, source=f"checkpoint {getattr(self, '_source', '?')}")
        return _IncompatibleKeys(missing_keys=[], unexpected_keys=[], incorrect_shapes=[])


# --------------------------------------------------------------------------------------
# RNG states
# --------------------------------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """torch (CPU and every CUDA device), numpy and python RNG states, ``weights_only``-safe."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": int(version), "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
