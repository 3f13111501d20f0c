"""Checks shared by the model tests, written from the reference, not from the library."""

from __future__ import annotations

import torch

from mutualnet_video.core import get_space, use_config


def width_rule(channels: int, width: float) -> int:
    """The width rule, computed here (REFERENCE.md Sec. 1): a layer of ``channels`` keeps the
    nearest multiple of 8 of ``channels * width``, at least 8, never below 90% of it, capped at
    ``channels``, and exactly ``channels`` at width 1."""
    if width == 1.0:
        return channels
    value = channels * width
    rounded = max(8, int(value + 4) // 8 * 8)
    if rounded < 0.9 * value:
        rounded += 8
    return min(channels, rounded)


def assert_full_width_equals(stock: torch.nn.Module, slim: torch.nn.Module, x) -> None:
    """``slim`` at its full configuration, and never switched, gives ``stock``'s output on ``x``."""
    def copy(value):
        return [t.clone() for t in value] if isinstance(value, list) else value.clone()

    space = get_space(slim)
    with torch.no_grad():
        expected = stock(copy(x))
        with use_config(slim, space.full()):
            got = slim(copy(x))
        got_unset = slim(copy(x))
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_unset, expected)
