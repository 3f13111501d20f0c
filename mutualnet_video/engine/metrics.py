"""Training logs: a JSON-lines metrics file and TensorBoard scalars (rank 0 only)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["MetricsWriter"]


class MetricsWriter:
    """Appends ``{"iteration": i, ...}`` lines to ``<output_dir>/metrics.jsonl`` and
    writes the same scalars to TensorBoard (``<output_dir>/tb``) if ``tensorboard``.

    Nothing is created before the first :meth:`write` (building a trainer writes no file);
    a write after :meth:`close` opens a new TensorBoard event file.
    """

    def __init__(self, output_dir: str, *, tensorboard: bool = True, enabled: bool = True) -> None:
        self.enabled = enabled
        self.output_dir = output_dir
        self.tensorboard = tensorboard
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self._tb = None

    def write(self, iteration: int, scalars: Mapping[str, Any], **extra: Any) -> None:
        if not self.enabled:
            return
        os.makedirs(self.output_dir, exist_ok=True)
        record = {"iteration": iteration, **{k: _jsonable(v) for k, v in scalars.items()}, **extra}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard and scalars:
            if self._tb is None:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=os.path.join(self.output_dir, "tb"))
            for key, value in scalars.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, iteration)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
