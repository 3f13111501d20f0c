"""Evaluation of adaptive networks: FLOPs and parameters per configuration."""

from .flops import count_flops, count_params

__all__ = ["count_flops", "count_params"]
