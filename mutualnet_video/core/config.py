"""The configuration of a sub-network and the space a model is trained over."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from .width import validate_width

__all__ = ["SubnetConfig", "ConfigSpace"]

_TAG = re.compile(r"^w(\d+)_f(\d+|n)_c(\d+)$")


@dataclass(frozen=True, order=True)
class SubnetConfig:
    """One runnable configuration of an adaptive network.

    Args:
        width: channel-width multiplier in ``(0, 1]``.
        frames: input frames (for SlowFast, frames of the Slow pathway); ``None`` for
            2D networks.
        crop: spatial input size (square crop, or the image resolution in 2D).
    """

    width: float
    frames: int | None
    crop: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "width", validate_width(self.width))
        if self.frames is not None and (
            not isinstance(self.frames, int) or isinstance(self.frames, bool) or self.frames < 1
        ):
            raise ValueError(f"frames must be a positive int or None, got {self.frames!r}")
        if not isinstance(self.crop, int) or isinstance(self.crop, bool) or self.crop < 1:
            raise ValueError(f"crop must be a positive int, got {self.crop!r}")
        # computed once: slim layers read the tag in forward (per-configuration BN statistics),
        # where torch.compile can read a string attribute but fails to trace this formatting
        frames = "n" if self.frames is None else str(self.frames)
        object.__setattr__(self, "_tag", f"w{round(self.width * 1000):04d}_f{frames}_c{self.crop}")

    @property
    def tag(self) -> str:
        """A short key without dots, e.g. ``w0500_f8_c160`` (width in thousandths)."""
        return self._tag

    @classmethod
    def from_tag(cls, tag: str) -> SubnetConfig:
        match = _TAG.match(tag)
        if match is None:
            raise ValueError(f"not a SubnetConfig tag: {tag!r} (expected e.g. 'w0500_f8_c160')")
        width, frames, crop = match.groups()
        return cls(int(width) / 1000, None if frames == "n" else int(frames), int(crop))

    def __str__(self) -> str:
        frames = "" if self.frames is None else f", frames={self.frames}"
        return f"(width={self.width:g}{frames}, crop={self.crop})"


def _as_sorted_tuple(values: Sequence[int | None], name: str) -> tuple:
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise ValueError(f"{name}: must be a list of positive ints, got {values!r}")
    values = tuple(values)
    if not values:
        raise ValueError(f"{name}: must not be empty")
    if any(v is None for v in values):
        if values != (None,):
            raise ValueError(f"{name}: None (2D network) cannot be mixed with frame counts: {values}")
        return values
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name}: must hold positive ints, got {v!r}")
    return tuple(sorted(set(values), reverse=True))


@dataclass(frozen=True)
class ConfigSpace:
    """The configurations a model is trained to run: a width range x frames x crops.

    Args:
        width_range: ``(w_min, w_max)``; training samples widths in this interval.
        frames: the temporal resolutions (``(None,)`` for 2D networks).
        crops: the spatial resolutions.
        num_subnets: sub-networks per iteration under the sandwich rule, the full one
            included (4 in the paper).
        widths: the widths evaluated and calibrated after training (default: the ends of
            ``width_range`` and quarter steps between them).
        slowfast_alpha: for SlowFast models, the Fast pathway's frame-rate ratio: the Fast
            input has ``alpha * frames`` frames; ``None`` for single-pathway models.
    """

    width_range: tuple[float, float]
    frames: tuple[int, ...] | tuple[None] = (None,)
    crops: tuple[int, ...] = (224,)
    num_subnets: int = 4
    widths: tuple[float, ...] = field(default=(), compare=False)
    slowfast_alpha: int | None = None

    def __post_init__(self) -> None:
        # every message starts with the field it is about (the config loader names the key from it)
        if not isinstance(self.width_range, Sequence) or isinstance(self.width_range, str) or \
                len(self.width_range) != 2:
            raise ValueError(f"width_range: must be (min, max), got {self.width_range!r}")
        try:
            lo, hi = (validate_width(w) for w in self.width_range)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"width_range: {exc}") from None
        if lo > hi:
            raise ValueError(f"width_range: min {lo:g} is above max {hi:g}")
        object.__setattr__(self, "width_range", (lo, hi))
        object.__setattr__(self, "frames", _as_sorted_tuple(self.frames, "frames"))
        object.__setattr__(self, "crops", _as_sorted_tuple(self.crops, "crops"))
        if self.crops == (None,):
            raise ValueError("crops: must hold positive ints")
        if not isinstance(self.num_subnets, int) or isinstance(self.num_subnets, bool) or self.num_subnets < 1:
            raise ValueError(f"num_subnets: must be a positive int, got {self.num_subnets!r}")
        if self.slowfast_alpha is not None and (
            not isinstance(self.slowfast_alpha, int) or self.slowfast_alpha < 1 or not self.is_video
        ):
            raise ValueError(f"slowfast_alpha: must be a positive int on a video space, got {self.slowfast_alpha!r}")
        if not self.widths:
            object.__setattr__(self, "widths", _default_widths(lo, hi))
        else:
            try:
                widths = tuple(sorted({validate_width(w) for w in self.widths}, reverse=True))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"widths: {exc}") from None
            for w in widths:
                if not lo - 1e-9 <= w <= hi + 1e-9:
                    raise ValueError(f"widths: {w} is outside width_range {self.width_range}")
            object.__setattr__(self, "widths", widths)

    @property
    def is_video(self) -> bool:
        return self.frames != (None,)

    def full(self) -> SubnetConfig:
        """The largest configuration: max width, most frames, largest crop."""
        return SubnetConfig(self.width_range[1], self.frames[0], self.crops[0])

    def smallest(self) -> SubnetConfig:
        """The cheapest configuration: min width, fewest frames, smallest crop."""
        return SubnetConfig(self.width_range[0], self.frames[-1], self.crops[-1])

    def validate(self, cfg: SubnetConfig) -> SubnetConfig:
        """Return ``cfg`` if the space contains it, else raise naming the bad value."""
        lo, hi = self.width_range
        if not lo - 1e-9 <= cfg.width <= hi + 1e-9:
            raise ValueError(f"width {cfg.width:g} is outside the trained range [{lo:g}, {hi:g}]")
        if cfg.frames not in self.frames:
            raise ValueError(f"frames={cfg.frames} is not in this model's frames {self.frames}")
        if cfg.crop not in self.crops:
            raise ValueError(f"crop={cfg.crop} is not in this model's crops {self.crops}")
        return cfg

    def contains(self, cfg: SubnetConfig) -> bool:
        try:
            self.validate(cfg)
        except ValueError:
            return False
        return True

    def sample(self, generator: torch.Generator | None = None, *, width: float | None = None) -> SubnetConfig:
        """A random configuration: uniform width in the range (unless given), random frames and crop."""
        lo, hi = self.width_range
        if width is None:
            width = lo + (hi - lo) * float(torch.rand((), generator=generator))
        frames = self.frames[int(torch.randint(len(self.frames), (), generator=generator))]
        crop = self.crops[int(torch.randint(len(self.crops), (), generator=generator))]
        return SubnetConfig(width, frames, crop)

    def sandwich(self, generator: torch.Generator | None = None) -> list[SubnetConfig]:
        """The configurations of one iteration under the sandwich rule.

        The full configuration first, then (if ``num_subnets >= 2``) the smallest width
        and ``num_subnets - 2`` uniformly drawn widths, each with random frames and crop.
        """
        configs = [self.full()]
        if self.num_subnets >= 2:
            configs.append(self.sample(generator, width=self.width_range[0]))
        for _ in range(self.num_subnets - 2):
            configs.append(self.sample(generator))
        return configs

    def model_input(self, clip: torch.Tensor, cfg: SubnetConfig):
        """The input of the sub-network ``cfg`` cut from ``clip``, the full configuration's
        clip (:func:`~mutualnet_video.core.inputs.clip_for_config` with this space's
        ``slowfast_alpha``: ``[slow, fast]`` for SlowFast, one tensor otherwise)."""
        from .inputs import clip_for_config

        return clip_for_config(clip, cfg, slowfast_alpha=self.slowfast_alpha)

    def full_clip_shape(self) -> tuple[int | None, int]:
        """``(frames, crop)`` of the clip every input is cut from: the full configuration's
        crop and frames (``alpha x frames`` for SlowFast; ``None`` frames for 2D)."""
        full = self.full()
        frames = None if full.frames is None else full.frames * (self.slowfast_alpha or 1)
        return frames, full.crop

    def grid(self, widths: Sequence[float] | None = None) -> list[SubnetConfig]:
        """Every (width, frames, crop) combination, widths defaulting to ``self.widths``."""
        widths = self.widths if widths is None else tuple(widths)
        return [SubnetConfig(w, f, c) for w in widths for f in self.frames for c in self.crops]

    def __iter__(self) -> Iterator[SubnetConfig]:
        return iter(self.grid())


def _default_widths(lo: float, hi: float) -> tuple[float, ...]:
    """Evaluation widths: the ends of the range and quarter steps between them."""
    if math.isclose(lo, hi):
        return (hi,)
    steps = 4
    return tuple(round(hi - (hi - lo) * i / steps, 4) for i in range(steps + 1))
