"""Channel arithmetic shared by every slimmable layer.

A layer of ``c`` channels at width multiplier ``w`` keeps its leading
``scale_channels(c, w)`` channels: ``make_divisible(c * w, 8)`` capped at ``c``.
"""

from __future__ import annotations

import math

__all__ = ["make_divisible", "scale_channels", "validate_width"]


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``.

    The result is at least ``min_value`` (``divisor`` by default) and never
    more than 10% below ``value`` (the MobileNet rule).
    """
    if divisor <= 0:
        raise ValueError(f"divisor must be positive, got {divisor}")
    min_value = divisor if min_value is None else min_value
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


def validate_width(width: float) -> float:
    """Return ``width`` as a float, or raise if it is not in ``(0, 1]``."""
    width = float(width)
    if not (0.0 < width <= 1.0) or math.isnan(width):
        raise ValueError(f"width multiplier must be in (0, 1], got {width}")
    return width


def scale_channels(channels: int, width: float, divisor: int = 8) -> int:
    """Active channels of a layer of ``channels`` channels at ``width``.

    Exactly ``channels`` at width 1.0, otherwise ``make_divisible(channels * width,
    divisor)`` capped at ``channels``.
    """
    width = validate_width(width)
    if width == 1.0:
        return channels
    return min(channels, make_divisible(channels * width, divisor))
