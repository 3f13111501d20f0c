"""Make pytorchvideo 0.1.5 work with current torch/torchvision.

Applied by the subpackages that import pytorchvideo (``mutualnet_video.models``,
``mutualnet_video.data``), before they import it; ``import mutualnet_video`` and
``mutualnet_video.core`` import only torch. Idempotent, no other side effect:

* ``pytorchvideo.transforms`` imports ``torchvision.transforms.functional_tensor``,
  removed from torchvision; we alias ``torchvision.transforms._functional_tensor``
  under the old name in ``sys.modules``.

The other traps of 0.1.5 are handled where they bite, not patched globally:
``create_x3d``'s ``nn.Softmax`` head default (our builders pass
``head_activation=None``), fixed-kernel head pools (our models pool adaptively),
``ConstantClipsPerVideoSampler``'s spacing (``mutualnet_video.data``) and the silent
empty ``LabeledVideoDataset`` (``mutualnet_video.data`` counts decode failures).

:func:`package_versions` reads the versions of Python and of the packages this project works
with (:data:`PACKAGES`) from the installed distributions' metadata, importing none of them;
:func:`versions_table` lays them out as a Markdown table (the columns of the README's
compatibility table). ``python tools/versions.py [--json]`` prints them.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
import sys

__all__ = ["apply", "FUNCTIONAL_TENSOR", "PACKAGES", "package_versions", "versions_table"]

FUNCTIONAL_TENSOR = "torchvision.transforms.functional_tensor"

#: The distributions of the compatibility table: (name on PyPI, what it is used for here).
PACKAGES = (
    ("torch", "required"),
    ("torchvision", "required"),
    ("pytorchvideo", "required"),
    ("fvcore", "required (FLOPs, checkpoints)"),
    ("iopath", "required (file I/O)"),
    ("numpy", "required"),
    ("av", "decoder: pyav (default)"),
    ("decord", "decoder: decord (required on x86_64)"),
    ("torchcodec", "decoder: torchcodec (extra [torchcodec])"),
    ("lightning", "integration (extra [lightning])"),
    ("hydra-core", "configs (extra [hydra])"),
    ("omegaconf", "configs (with hydra-core)"),
    ("onnxruntime", "ONNX export check (extra [export])"),
)


def apply() -> None:
    """Install the aliases pytorchvideo 0.1.5 needs. Safe to call more than once."""
    if FUNCTIONAL_TENSOR not in sys.modules:
        try:
            importlib.import_module(FUNCTIONAL_TENSOR)
        except ImportError:
            try:
                module = importlib.import_module("torchvision.transforms._functional_tensor")
            except ImportError:  # torchvision absent: nothing to alias
                return
            sys.modules[FUNCTIONAL_TENSOR] = module


def package_versions() -> dict[str, str | None]:
    """``{"python": ..., name: version or None (not installed)}`` for :data:`PACKAGES`."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name, _ in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def versions_table(versions: dict[str, str | None] | None = None) -> str:
    """A Markdown table of :func:`package_versions` (``versions``: given instead)."""
    versions = package_versions() if versions is None else versions
    uses = dict(PACKAGES, python="")
    rows = ["| package | version | used for |", "|---|---|---|"]
    rows += [f"| {name} | {version or 'not installed'} | {uses.get(name, '')} |" for name, version in versions.items()]
    return "\n".join(rows)

