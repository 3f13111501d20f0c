"""The launch edge: everything a run sets up once per process, before the Trainer is built.

``with launch(cfg) as device: ...`` (what ``tools/train_net.py`` runs):

0. rank 0 checks that ``output_dir`` can be written (``ConfigError`` before anything runs);
1. ``train.cpu_threads``: ``torch.set_num_threads`` for this process;
2. under ``torchrun`` (``WORLD_SIZE > 1``): joins the process group (env://; gloo on the
   CPU, nccl on CUDA) and leaves it at exit if it created it;
3. seeds torch (CPU and CUDA), numpy and python with ``train.seed`` (the same on every rank);
4. ``data.synthetic``: rank 0 writes the synthetic dataset if it is absent, the others wait.

The :class:`~mutualnet_video.engine.trainer.Trainer` itself changes no process-global state.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from .config import ConfigError, resolve_target
from .distributed import barrier, get_rank, init_distributed, resolve_device

__all__ = ["launch", "seed_everything", "make_synthetic_data", "check_writable"]

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def make_synthetic_data(cfg: Mapping[str, Any]) -> None:
    """``data.synthetic``: write the dataset (``_target_(root, **kwargs)``, default
    ``make_synthetic_kinetics``) if ``root/train.csv`` is absent. Call it on one process."""
    node = cfg["data"].get("synthetic")
    if not node or os.path.isfile(os.path.join(node["root"], "train.csv")):
        return
    target = node.get("_target_", "mutualnet_video.data.make_synthetic_kinetics")
    kwargs = {k: v for k, v in node.items() if k not in ("_target_", "root")}
    logger.info("data.synthetic: writing a synthetic dataset to %s", node["root"])
    resolve_target(target, path="data.synthetic._target_")(node["root"], **kwargs)


def check_writable(path: str, *, key: str) -> None:
    """Create ``path`` if needed and write a file in it; ``ConfigError`` naming ``key`` if that fails."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test."):
            pass
    except OSError as exc:
        raise ConfigError(f"{key}: {path}: not writable ({exc.strerror or exc})") from None


@contextmanager
def launch(cfg: Mapping[str, Any]) -> Iterator[torch.device]:
    """Set this process up for ``cfg`` (see the module doc); yields the training device."""
    tcfg = cfg["train"]
    if tcfg.get("cpu_threads"):
        torch.set_num_threads(tcfg["cpu_threads"])
    device = resolve_device(tcfg["device"])
    owns_group = init_distributed(device)
    try:
        if get_rank() == 0:
            check_writable(cfg["output_dir"], key="output_dir")
        seed_everything(tcfg["seed"])
        if cfg["data"].get("synthetic"):
            if get_rank() == 0:
                make_synthetic_data(cfg)
            barrier()
        yield device
    finally:
        if owns_group:
            torch.distributed.destroy_process_group()
