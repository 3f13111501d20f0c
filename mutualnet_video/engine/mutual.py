"""One MutualNet training iteration: the sandwich rule with in-place distillation.

Per iteration (REFERENCE.md, section 1):

1. the full configuration runs first: ``criterion(logits, targets)``, ``backward()`` at
   once; its logits, detached, are the teacher;
2. every other configuration: ``distill(student_logits, teacher)``, ``backward()`` after
   each (so only one sub-network graph is alive at a time);
3. one optimizer step for the summed gradients.

The step is generic over the task: ``criterion`` and ``distill`` are callables, so 2D
classification, detection or segmentation heads reuse it. The per-configuration inputs
come from a *sampler* ``sampler(video_batch) -> [(cfg, model_input), ...]`` (full
configuration first), :class:`SandwichSampler` by default: every input is built from the
same decoded clip.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..core import ConfigSpace, SubnetConfig, distillation_loss, slice_grads, use_config

__all__ = ["mutual_step", "detach_output", "SandwichSampler", "SingleSampler", "check_full_clip", "full_clip_input",
           "ModelInput", "SubInputs"]

ModelInput = torch.Tensor | list[torch.Tensor]
SubInputs = Sequence[tuple[SubnetConfig | None, ModelInput]]


def _config_name(cfg: SubnetConfig | None) -> str:
    return "model" if cfg is None else cfg.tag


def _check_finite(loss: torch.Tensor, cfg: SubnetConfig | None, index: int, iteration: int | None) -> float:
    value = float(loss.detach())
    if not math.isfinite(value):
        where = "" if iteration is None else f" at iteration {iteration}"
        role = "full configuration" if index == 0 else f"sub-network {index}"
        raise FloatingPointError(
            f"non-finite loss {value} for {role} {_config_name(cfg)} {'' if cfg is None else cfg}{where}; "
            "the optimizer step was not taken"
        )
    return value


def _ddp_of(model: nn.Module) -> nn.parallel.DistributedDataParallel | None:
    """The DDP wrapper ``model`` is, or that ``torch.compile`` wrapped (``_orig_mod``), else None."""
    inner = model._orig_mod if isinstance(model, torch._dynamo.eval_frame.OptimizedModule) else model
    return inner if isinstance(inner, nn.parallel.DistributedDataParallel) else None


def _first_tensor(value: Any) -> torch.Tensor | None:
    """The first tensor in a (nested) tensor / list / tuple / dict input, for its device."""
    if isinstance(value, torch.Tensor):
        return value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    for item in items:
        found = _first_tensor(item)
        if found is not None:
            return found
    return None


def detach_output(output: Any) -> Any:
    """The default teacher: ``output`` detached (a tensor, or a dict / list / tuple of them)."""
    if isinstance(output, torch.Tensor):
        return output.detach()
    if isinstance(output, dict):
        return type(output)((k, detach_output(v)) for k, v in output.items())
    if isinstance(output, (list, tuple)):
        return type(output)(detach_output(v) for v in output)
    raise TypeError(f"cannot detach a model output of type {type(output).__name__}: pass teacher_fn")


def mutual_step(
    model: nn.Module,
    sub_inputs: SubInputs,
    targets: Any,
    *,
    criterion: Callable[[Any, Any], torch.Tensor],
    distill: Callable[..., torch.Tensor] = distillation_loss,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
    clip_grad_norm: float | None = None,
    temperature: float = 1.0,
    amp: bool = False,
    iteration: int | None = None,
    teacher_fn: Callable[[Any], Any] = detach_output,
    backward: Callable[[torch.Tensor], None] | None = None,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> dict[str, float]:
    """Run one sandwich-rule iteration and take ONE optimizer step.

    Args:
        model: a slimmable model, its DDP wrapper or ``torch.compile`` of either. With DDP, gradients are
            accumulated locally (``no_sync``) and all-reduced on the last backward only.
            Slimmed layers add their weight gradients into the active slice of ``.grad``
            (:func:`~mutualnet_video.core.slice_grads`), except in that last backward.
        sub_inputs: ``[(cfg, input), ...]``, the full configuration first. ``cfg=None``
            runs the model as it is (no switching): a single ``[(None, x)]`` is plain
            training of one network ("single-network mode").
        targets: labels handed to ``criterion`` with the full configuration's output.
        criterion: ``criterion(output, targets) -> scalar`` for the full configuration.
        distill: ``distill(student_output, teacher_output, temperature=T) -> scalar``
            for every other configuration; the teacher is already detached.
        optimizer: stepped once, after all backward passes (anything with ``zero_grad``,
            ``step`` and ``param_groups``, e.g. a ``LightningOptimizer``).
        scaler: a CUDA ``GradScaler`` (AMP); ``None`` on the CPU.
        clip_grad_norm: clip the summed gradients to this total norm (after unscaling).
        temperature: distillation temperature (1 in the paper).
        amp: run the forwards under ``torch.autocast`` (only effective on CUDA inputs);
            ``False`` keeps the autocast state of the caller.
        iteration: used in error messages only.
        teacher_fn: turns the full configuration's output into the teacher handed to
            ``distill`` (default: the output detached, also a dict such as segmentation
            heads return; detection passes its sampled proposals and their logits).
        backward: ``backward(loss)`` runs each configuration's backward instead of
            ``loss.backward()``, e.g. Lightning's ``manual_backward`` (its precision plugin
            scales the loss); not together with ``scaler``.
        no_sync: a context-manager factory that blocks the gradient all-reduce of a DDP
            wrapper ``mutual_step`` does not call itself (Lightning wraps the
            LightningModule: ``trainer.strategy.block_backward_sync``). Every backward but
            the last runs inside it, the last one synchronises (and takes every gradient
            from autograd). Default: ``no_sync`` of a DDP ``model``, also of one that
            ``torch.compile`` wrapped (``torch.compile(ddp)``), else none.

    Returns:
        ``{cfg.tag: loss}`` in execution order (repeated tags get a ``#k`` suffix); the
        full configuration's loss is the first entry.

    Raises:
        FloatingPointError: a loss (or, with clipping, the gradient norm) is NaN/inf. The
            optimizer step is not taken, so the weights stay the last good ones.
    """
    if not sub_inputs:
        raise ValueError("sub_inputs is empty: the sampler must return at least the full configuration")
    if backward is not None and scaler is not None:
        raise ValueError("pass either scaler or backward (which scales the loss itself), not both")
    optimizer.zero_grad(set_to_none=True)
    first_tensor = _first_tensor(sub_inputs[0][1])
    device_type = "cpu" if first_tensor is None else first_tensor.device.type
    use_amp = amp and device_type == "cuda"
    ddp = _ddp_of(model)
    if no_sync is None and ddp is not None:
        no_sync = ddp.no_sync
    is_ddp = no_sync is not None
    switch_target = model if ddp is None else ddp.module

    losses: dict[str, float] = {}
    teacher = None
    last = len(sub_inputs) - 1
    for index, (cfg, inputs) in enumerate(sub_inputs):
        synced = is_ddp and index == last
        sync = contextlib.nullcontext() if (not is_ddp or synced) else no_sync()
        switch = contextlib.nullcontext() if cfg is None else use_config(switch_target, cfg)
        # a sliced weight's gradient goes straight into its slice of .grad, except in DDP's
        # synchronised backward, whose reducer needs every parameter's gradient from autograd
        with sync, switch, slice_grads(not synced):
            # amp=False leaves an enclosing autocast on (Lightning's precision plugin wraps the step)
            with torch.autocast(device_type=device_type) if use_amp else contextlib.nullcontext():
                output = model(inputs)
                if index == 0:
                    loss = criterion(output, targets)
                else:
                    loss = distill(output, teacher, temperature=temperature)
            value = _check_finite(loss, cfg, index, iteration)
            if backward is not None:
                backward(loss)
            else:
                (scaler.scale(loss) if scaler is not None else loss).backward()
        if index == 0:
            teacher = teacher_fn(output)
        del output, loss
        key = _config_name(cfg)
        suffix = 2
        while key in losses:
            key = f"{_config_name(cfg)}#{suffix}"
            suffix += 1
        losses[key] = value

    if clip_grad_norm is not None:
        if scaler is not None:
            scaler.unscale_(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = float(torch.nn.utils.clip_grad_norm_(params, clip_grad_norm))
        if not math.isfinite(norm) and scaler is None:
            where = "" if iteration is None else f" at iteration {iteration}"
            raise FloatingPointError(f"non-finite gradient norm {norm}{where}; the optimizer step was not taken")
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return losses


class SandwichSampler:
    """The sandwich-rule configurations of an iteration and their inputs, from one decoded batch.

    ``sampler(video) -> [(cfg, input), ...]`` follows ``space.sandwich(generator)``: the
    full configuration first, then the smallest width, then ``num_subnets - 2`` random
    widths, each with random frames and crop. ``video`` is the full configuration's clip
    batch ``(B, C, T_full, S, S)`` as ``kinetics_dataset`` yields it (``(B, C, S, S)``
    images for a 2D space); every input is cut from that same tensor by
    ``space.model_input`` (frames subsampled over the same span, bilinear resize;
    ``[slow, fast]`` for SlowFast), so nothing is decoded again. ``num_clips_seen``
    counts the clips of the tensor batches received, for comparison with a decoder's
    count. ``input_fn(inputs, cfg)`` replaces the input builder (a task's own, e.g.
    detection feeds the same images to every configuration). The generator's
    state is part of the checkpoint (``state_dict`` / ``load_state_dict``).
    """

    def __init__(self, space: ConfigSpace, *, generator: torch.Generator | None = None,
                 input_fn: Callable[[Any, SubnetConfig], ModelInput] | None = None) -> None:
        if not isinstance(space, ConfigSpace):
            raise TypeError(f"SandwichSampler needs a ConfigSpace, got {type(space).__name__}")
        self.space = space
        self.generator = generator if generator is not None else torch.Generator()
        self.input_fn = input_fn if input_fn is not None else functools.partial(full_clip_input, space)
        self.num_clips_seen = 0

    def configs(self) -> list[SubnetConfig]:
        """The configurations of the next iteration (advances the generator)."""
        return self.space.sandwich(self.generator)

    def inputs_for(self, video: torch.Tensor, configs: Sequence[SubnetConfig]) -> list[tuple[SubnetConfig, ModelInput]]:
        """``[(cfg, input)]`` for given configurations (e.g. an evaluation grid); not counted."""
        return [(cfg, self.input_fn(video, cfg)) for cfg in configs]

    def __call__(self, video: Any) -> list[tuple[SubnetConfig, ModelInput]]:
        pairs = self.inputs_for(video, self.configs())
        if isinstance(video, torch.Tensor):
            self.num_clips_seen += video.shape[0]
        return pairs

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])


class SingleSampler:
    """Single-network mode: only the full configuration (or the model as is without a space)."""

    def __init__(self, space: ConfigSpace | None = None, *,
                 input_fn: Callable[[Any, SubnetConfig], ModelInput] | None = None) -> None:
        self.space = space
        self.input_fn = input_fn if input_fn is not None or space is None else space.model_input

    def __call__(self, video_batch: Any) -> list[tuple[SubnetConfig | None, ModelInput]]:
        if self.space is None:
            return [(None, video_batch)]
        cfg = self.space.full()
        return [(cfg, self.input_fn(video_batch, cfg))]


def full_clip_input(space: ConfigSpace, video: Any, subnet: SubnetConfig) -> ModelInput:
    """``space.model_input(video, subnet)`` after checking that ``video`` is a batch of the
    full configuration's clips (:func:`check_full_clip`)."""
    check_full_clip(space, video)
    return space.model_input(video, subnet)


def check_full_clip(space: ConfigSpace, video: Any) -> None:
    """Raise ``ValueError`` unless ``video`` is a batch of the full configuration's clips."""
    frames, crop = space.full_clip_shape()
    dims = 4 if frames is None else 5
    if not isinstance(video, torch.Tensor) or video.dim() != dims:
        shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        layout = "(B, C, H, W)" if frames is None else "(B, C, T, H, W)"
        raise ValueError(f"expected a decoded batch {layout}, got {shape}")
    got_frames = None if frames is None else video.shape[2]
    if got_frames != frames or video.shape[-1] != crop or video.shape[-2] != crop:
        expected = f"{crop}x{crop}" if frames is None else f"T={frames}, {crop}x{crop}"
        got = f"{video.shape[-2]}x{video.shape[-1]}" if frames is None else \
            f"T={got_frames}, {video.shape[-2]}x{video.shape[-1]}"
        raise ValueError(f"the batch must be the full configuration's clip: {expected}; got {got}")
