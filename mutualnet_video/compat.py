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
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["apply", "FUNCTIONAL_TENSOR"]

FUNCTIONAL_TENSOR = "torchvision.transforms.functional_tensor"


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
