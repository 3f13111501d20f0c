"""Slimmable layers: drop-in subclasses of the ``nn`` layers.

Each layer has the constructor keywords and state-dict keys of its ``nn`` parent
and gives the parent's output at width 1.0. At a narrower width it runs on the
leading slice of its weights, ``weight[:out_w, :in_w]``:

* input channels are read from the input (the first conv keeps its 3 channels);
* output channels are ``scale_channels(out_channels, width)`` when ``slim_out`` is
  True (the default), else all of them (a classifier keeps its classes);
* a depthwise conv (``groups == in_channels == out_channels``) uses
  ``groups = active channels``;
* a layer fed by a concatenation (SlowFast's lateral fusion, its head) describes its
  input as ``in_splits = ((channels, slim), ...)``: each part is sliced on its own.

``slim_out``, ``in_splits`` and ``is_depthwise`` are read-only; a converter changes the
rule of a built layer with :meth:`configure_slicing`. :meth:`active_weight` gives the
weight and bias the layer runs with at the active configuration (what an exporter copies).
The width is set through :func:`mutualnet_video.core.switch.set_config`, never by hand.
BatchNorm layers also keep running statistics per configuration (filled by
calibration), see :class:`SlimBatchNorm`.
"""

from __future__ import annotations

import math
import operator
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .config import SubnetConfig
from .width import scale_channels

__all__ = [
    "SlimmableModule",
    "SlimConv2d",
    "SlimConv3d",
    "SlimLinear",
    "SlimBatchNorm",
    "SlimBatchNorm2d",
    "SlimBatchNorm3d",
    "InSplits",
    "slice_grads",
    "slice_grads_enabled",
    "hint_dynamic_sizes",
]

InSplits = tuple[tuple[int, bool], ...]


class SlimmableModule:
    """Mixin of every layer that follows the active :class:`SubnetConfig`."""

    subnet: SubnetConfig | None = None
    # What the forward needs of the active configuration, computed once per configuration
    # (``(subnet, ...)``; rebuilt whenever ``subnet`` is another object). Class default: a
    # module unpickled from an older version has no instance value.
    _slim_state: tuple | None = None
    # whether the sizes a compiled forward reads (channel counts, stored statistics) are
    # hinted dynamic to torch.compile (see hint_dynamic_sizes)
    _hint_dynamic: bool = True

    def set_subnet(self, cfg: SubnetConfig | None) -> None:
        """Follow ``cfg`` (``None``: the full layer). Called by ``set_config``.

        The layers that have a ``_new_state`` compute what their forward needs of ``cfg``
        here, outside any compiled region: a forward traced by ``torch.compile`` reads it
        (channel counts, the tag) and neither computes nor stores it, so dynamo guards on
        those values only, not on the width (see :func:`mutualnet_video.engine.compile_slimmable`).
        """
        attrs = self.__dict__  # plain attributes: nn.Module.__setattr__ only costs time here
        attrs["subnet"] = cfg
        attrs["_slim_state"] = None
        new_state = getattr(self, "_new_state", None)
        if new_state is not None:
            attrs["_slim_state"] = new_state()

    @property
    def width(self) -> float:
        return 1.0 if self.subnet is None else self.subnet.width


def _check_in_splits(in_splits: Sequence[Sequence] | None, in_features: int, name: str) -> InSplits | None:
    if in_splits is None:
        return None
    parts = []
    for part in in_splits:
        channels = None
        if isinstance(part, Sequence) and not isinstance(part, str | bytes) and len(part) == 2:
            try:
                channels = operator.index(part[0]) if not isinstance(part[0], bool) else None
            except TypeError:
                pass
        if channels is None or channels <= 0:
            raise ValueError(
                f"{name}: each part of in_splits must be a pair (channels, slim) with channels a positive "
                f"integer, got {part!r} in {in_splits!r}"
            )
        parts.append((channels, bool(part[1])))
    splits = tuple(parts)
    if not splits:
        raise ValueError(f"{name}: in_splits is empty (pass None for an input that is not a concatenation)")
    if sum(c for c, _ in splits) != in_features:
        raise ValueError(
            f"{name}: in_splits {splits} add up to {sum(c for c, _ in splits)} channels, "
            f"but the layer has {in_features} inputs"
        )
    return splits


_SLICE_GRADS = threading.local()

# Under slice_grads: a weight of fewer elements is sliced the plain way (autograd's
# full-size gradient of a small weight costs less than _SliceIntoGrad's Python: plain
# slicing was the faster in 459 of 611 such convs, aten's conv on _SliceIntoGrad's copy in
# 52 of the 66 larger ones), and a conv with fewer multiply-adds in its pass stays on
# aten's conv (see _gemm_reads_slice). Both from timing each conv of X3D-XS/S/M, Slow R50
# and SlowFast R50 at widths 0.5 and 0.75 on the CPU, fwd+bwd, batch 1.
_SLICE_INTO_GRAD_MIN_NUMEL = 1 << 15
_GEMM_MIN_MACS = 1 << 20


@contextmanager
def slice_grads(enabled: bool = True) -> Iterator[None]:
    """Inside the block, the backward of a sliced weight adds into the slice of its
    parameter's ``.grad`` instead of building a full-size gradient.

    By default (outside the block) a slimmed layer's weight is a view of the parameter,
    and autograd gives the parameter a full-size gradient, zero outside the active slice,
    which is then added to ``.grad``: two passes over the full weight per layer and per
    sub-network. Inside the block, forwards run at a slimmed width read the slice
    through a function whose backward writes ``param.grad[:out, :in] += grad`` (allocating
    ``.grad`` at zero if it is None) and hands autograd no gradient for the parameter.

    What changes for the parameter, for the passes run inside the block: its
    ``AccumulateGrad`` node and hooks (``register_hook``, post-accumulate hooks, DDP's
    reducer) see no gradient, and ``torch.autograd.grad(loss, param)`` does not report it.
    So use it where gradients are only accumulated in ``.grad`` and read by the optimizer:
    ``mutual_step`` enters it for every backward except DDP's synchronised one. The choice
    is made at forward time (thread-local, like ``torch.no_grad``); a compiled region
    (``torch.compile``) and layers at full width always slice the plain way; so do
    weights of fewer than ``_SLICE_INTO_GRAD_MIN_NUMEL`` (2**15) elements, whose full-size
    gradient costs less than the function's own Python, unless their conv runs as matrix
    products (below), which also adds into ``.grad`` directly.

    Inside the block a conv on a slice of its input channels, on the CPU in float32, whose
    weight slice is large against its input (a ResNet's last stages on a small clip) and
    whose pass has at least ``_GEMM_MIN_MACS`` (2**20) multiply-adds, also skips the copy
    of ``weight[:out, :in]`` that aten's conv needs: it runs as im2col and matrix products
    that read the strided slice in place and add the weight's gradient into ``.grad``
    directly (:meth:`_SlimConvNd._gemm_reads_slice` says where).
    """
    previous = getattr(_SLICE_GRADS, "enabled", False)
    _SLICE_GRADS.enabled = bool(enabled)
    try:
        yield
    finally:
        _SLICE_GRADS.enabled = previous


def slice_grads_enabled() -> bool:
    """Whether :func:`slice_grads` is active in this thread."""
    return getattr(_SLICE_GRADS, "enabled", False)


class _SliceIntoGrad(torch.autograd.Function):
    """``weight[:out]`` (then ``[:, :in]`` or the ``index`` columns); backward adds into
    the same slice of ``weight.grad`` and returns no gradient for ``weight``."""

    @staticmethod
    def forward(ctx, weight, out_active, in_active, index):  # noqa: D102
        ctx.param = weight
        ctx.out_active, ctx.in_active, ctx.index = out_active, in_active, index
        view = weight[:out_active]
        if index is not None:
            return view.index_select(1, index)
        if in_active is None:
            return view  # leading rows: already contiguous
        view = view[:, :in_active]
        # empty + copy_: Tensor.contiguous() on a 1x1x1-kernel slice was ~2x slower (its
        # strides read as ambiguous memory formats)
        return torch.empty(view.shape, dtype=view.dtype, device=view.device).copy_(view)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        param = ctx.param
        target = param.grad
        if target is None:
            target = torch.zeros_like(param)
        rows = target[:ctx.out_active]
        if ctx.index is not None:
            rows.index_add_(1, ctx.index, grad.to(rows.dtype))
        elif ctx.in_active is not None:
            rows[:, :ctx.in_active].add_(grad)
        else:
            rows.add_(grad)
        if param.grad is None:
            param.grad = target
        return None, None, None, None


def _im2col(x: torch.Tensor, ksize: tuple[int, ...], stride: tuple[int, ...],
            padding: tuple[int, ...]) -> torch.Tensor:
    """``x`` ``[N, C, *S]`` as ``[N, C * K, L]``: per sample, the matrix of its convolution
    windows (rows ``(c, *kernel offset)``, the order of a weight's ``view(out, -1)``
    columns; columns the ``L`` output positions). A view of ``x`` for a kernel of ones at
    stride one without padding, else a copy."""
    if any(padding):
        x = F.pad(x, [p for q in reversed(padding) for p in (q, q)])
    for d, (k, s) in enumerate(zip(ksize, stride)):
        x = x.unfold(2 + d, k, s)  # [N, C, *out, *kernel]
    nd = len(ksize)
    perm = [0, 1, *range(2 + nd, 2 + 2 * nd), *range(2, 2 + nd)]
    return x.permute(perm).reshape(x.shape[0], x.shape[1] * math.prod(ksize), -1)


class _SlicedConvIntoGrad(torch.autograd.Function):
    """A convolution by the active slice of ``weight`` as matrix products that read the
    slice in place: im2col of the input, then per sample ``weight.view(O, -1)[:out, cols]
    @ cols`` (a strided matrix, which BLAS takes as it is) into the output, one product per
    block of input channels (``blocks``: ``(first weight channel, channels)`` per part of
    the input, one block for ``weight[:out, :in]``, one per part of ``in_splits``).
    Backward adds ``grad @ cols.T`` into the same slice of ``weight.grad`` (as
    :class:`_SliceIntoGrad`) and gives the input's gradient by col2im. Output and
    gradients stay in the ``[N, C, *S]`` layout (no transposed copies); a kernel of ones
    at stride one without padding keeps the input itself for backward, as aten's conv does. Zero padding,
    dilation 1, groups 1."""

    @staticmethod
    def forward(ctx, x, weight, bias, out_active, blocks, stride, padding):  # noqa: D102
        ksize = tuple(weight.shape[2:])
        kernel = math.prod(ksize)
        out_size = tuple((s + 2 * p - k) // st + 1 for s, k, st, p in zip(x.shape[2:], ksize, stride, padding))
        cols = _im2col(x, ksize, stride, padding)  # [N, C * K, L]
        matrix = weight.view(weight.shape[0], -1)[:out_active]
        y = cols.new_empty((x.shape[0], out_active, cols.shape[2]))
        for n in range(x.shape[0]):
            row = 0
            for i, (first, channels) in enumerate(blocks):
                part = matrix[:, first * kernel:(first + channels) * kernel]
                block = cols[n, row:row + channels * kernel]
                if i == 0:
                    torch.mm(part, block, out=y[n])
                else:
                    y[n].addmm_(part, block)
                row += channels * kernel
        if bias is not None:
            y += bias.view(-1, 1)
        ctx.save_for_backward(cols)
        ctx.param = weight
        ctx.meta = (out_active, blocks, ksize, stride, padding, tuple(x.shape), out_size)
        return y.view(x.shape[0], out_active, *out_size)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        (cols,) = ctx.saved_tensors
        out_active, blocks, ksize, stride, padding, x_shape, out_size = ctx.meta
        param = ctx.param
        kernel = math.prod(ksize)
        batch = x_shape[0]
        grad3 = grad.reshape(batch, out_active, -1)  # [N, out, L]
        target = param.grad
        if target is None:
            target = torch.zeros_like(param)
        # a .grad in another layout (channels_last) has no (out, in*K) view: add through a buffer
        dest = target if target.is_contiguous() else torch.zeros(param.shape, dtype=target.dtype, device=target.device)
        target2d = dest.view(param.shape[0], -1)[:out_active]
        matrix = param.view(param.shape[0], -1)[:out_active]
        grad_cols = torch.empty_like(cols) if ctx.needs_input_grad[0] else None
        for n in range(batch):
            row = 0
            for first, channels in blocks:
                span = slice(first * kernel, (first + channels) * kernel)
                rows = slice(row, row + channels * kernel)
                target2d[:, span].addmm_(grad3[n], cols[n, rows].t())
                if grad_cols is not None:
                    torch.mm(matrix[:, span].t(), grad3[n], out=grad_cols[n, rows])
                row += channels * kernel
        if dest is not target:
            target.add_(dest)
        if param.grad is None:
            param.grad = target
        grad_x = None
        if grad_cols is not None:
            in_active = x_shape[1]
            if kernel == 1 and not any(padding) and all(s == 1 for s in stride):
                grad_x = grad_cols.view(x_shape)
            else:  # col2im: each kernel offset adds its window positions
                grad_cols = grad_cols.view(batch, in_active, *ksize, *out_size)
                padded = grad.new_zeros((batch, in_active, *(s + 2 * p for s, p in zip(x_shape[2:], padding))))
                for offset in _offsets(ksize):
                    window = tuple(slice(o, o + st * (n - 1) + 1, st) for o, st, n in zip(offset, stride, out_size))
                    padded[(slice(None), slice(None), *window)] += grad_cols[(slice(None), slice(None), *offset)]
                grad_x = padded[(slice(None), slice(None), *(slice(p, p + s) for p, s in zip(padding, x_shape[2:])))]
        grad_bias = None
        if ctx.needs_input_grad[2]:
            grad_bias = grad3.sum(dim=(0, 2))
        return grad_x, None, grad_bias, None, None, None, None


def _offsets(ksize: tuple[int, ...]) -> list[tuple[int, ...]]:
    offsets: list[tuple[int, ...]] = [()]
    for k in ksize:
        offsets = [o + (i,) for o in offsets for i in range(k)]
    return offsets


def _tensor_key(t: torch.Tensor | None) -> tuple[int, int] | None:
    """What identifies ``t``'s values for a cache: storage address and in-place version."""
    return None if t is None else (t.data_ptr(), t._version)


def hint_dynamic_sizes(module: nn.Module, enabled: bool = True) -> None:
    """Whether the slim layers of ``module`` hint ``torch.compile`` that the sizes their
    compiled forward reads change between calls (on by default).

    Those sizes are the active channel counts (read from the shapes of small tensors set
    with the configuration) and BatchNorm's stored statistics of the configuration. With
    the hint (``torch._dynamo.maybe_mark_dynamic``, set once dynamo is imported) the first
    graph that reads them already has them dynamic, where dynamo's automatic dynamic shapes
    would build a graph specialized on the first values, then a dynamic one. A hint
    overrides ``torch.compile(..., dynamic=False)``: turn it off for static shapes, as
    :func:`mutualnet_video.engine.compile_slimmable` does for ``dynamic=False``. Applies
    to the active configuration at once and to every later one.
    """
    for layer in module.modules():
        if isinstance(layer, SlimmableModule):
            layer.__dict__["_hint_dynamic"] = bool(enabled)
            layer.set_subnet(layer.subnet)  # rebuilds what the forward reads, with(out) hints


def _mark_dynamic(t: torch.Tensor, hint: bool) -> torch.Tensor:
    """``t``, its first size hinted dynamic to dynamo if ``hint``. Only once dynamo is
    imported (``torch.compile`` imports it): eager use does not pay for its import."""
    dynamo = sys.modules.get("torch._dynamo") if hint else None
    if dynamo is not None:
        dynamo.maybe_mark_dynamic(t, 0)
    return t


def _size_carriers(state: tuple | None, hint: bool) -> tuple | None:
    """Empty tensors ``[n, 0]`` whose first size is each channel count of ``state`` (the
    active outputs, and each in_splits part's active channels): what a compiled forward
    reads them from, so that dynamo treats them as dynamic tensor sizes, not constants;
    hinted dynamic if ``hint`` (:func:`hint_dynamic_sizes`)."""
    if state is None:
        return None
    parts = None if state[3] is None else tuple(_mark_dynamic(torch.empty((n, 0)), hint) for n in state[3])
    return _mark_dynamic(torch.empty((state[2], 0)), hint), parts


def _part_starts(in_splits: InSplits) -> list[int]:
    """The first input channel of each part of ``in_splits`` (of the full input)."""
    starts = [0]
    for channels, _ in in_splits[:-1]:
        starts.append(starts[-1] + channels)
    return starts


class _SlimWeightMixin(SlimmableModule):
    """Shared slicing for conv and linear layers (weight dims: out, in, ...).

    Without autograd (``torch.no_grad`` / ``inference_mode``), the last sliced weight and
    bias are kept, contiguous, while the configuration, the input channels and the
    parameters are unchanged: the key holds each parameter's address and ``_version``,
    so an in-place update (optimizer step, ``load_state_dict``) or a replaced tensor
    (``.data =``, ``assign=True``) rebuilds it; ``_apply`` (``.to``, ``.half``) drops it.
    One slice per layer (the last one); it also holds aliases of the full tensors, so a
    replaced weight's storage lives until the next call. With autograd on (and a
    trainable weight or bias), the weight is sliced on every call and the gradient
    reaches the shared full tensor.
    """

    _inference_slice: tuple | None = None
    _size_carriers: tuple | None = None

    def _init_slim(self, slim_out: bool, in_splits, full_in: int, full_out: int) -> None:
        self._full_in = full_in
        self._full_out = full_out
        self.configure_slicing(slim_out=slim_out, in_splits=in_splits)

    @property
    def slim_out(self) -> bool:
        """Whether the outputs follow the width (False: all of them, e.g. a classifier)."""
        return self._slim_out

    @property
    def in_splits(self) -> InSplits | None:
        """The parts ``((channels, slim), ...)`` of a concatenated input, or None."""
        return self._in_splits

    def configure_slicing(self, *, slim_out: bool, in_splits: Sequence[Sequence] | None) -> None:
        """Set the slicing rule of the layer: ``slim_out`` and ``in_splits``, as in the constructor.

        Both are given (``in_splits=None``: the input is not a concatenation). Raises
        ``ValueError`` naming the layer type and the problem if ``in_splits`` is not a
        sequence of ``(channels, slim)`` pairs adding up to the layer's inputs (or is
        given to a depthwise conv); the layer is then left unchanged. Every cached slice
        is dropped: the next forward follows the new rule.
        """
        splits = _check_in_splits(in_splits, self._full_in, type(self).__name__)
        self._check_slicing(splits)
        self._slim_out = bool(slim_out)
        self._in_splits = splits
        self._index_cache: dict[tuple[float, int], torch.Tensor] = {}
        self._drop_caches()

    def _check_slicing(self, in_splits: InSplits | None) -> None:
        """Refuse a rule the layer type cannot run (overridden by convs)."""

    def _drop_caches(self) -> None:
        self.__dict__["_slim_state"] = None
        self.__dict__["_inference_slice"] = None
        self.__dict__["_size_carriers"] = None

    def set_subnet(self, cfg: SubnetConfig | None) -> None:  # noqa: D102 (SlimmableModule's)
        super().set_subnet(cfg)
        self.__dict__["_size_carriers"] = _size_carriers(self._slim_state, self._hint_dynamic)

    def _apply(self, fn, recurse=True):  # new tensors (device, dtype): drop the cached slice
        self._drop_caches()
        return super()._apply(fn, recurse)  # type: ignore[misc]

    def active_out(self) -> int:
        """The number of output channels (features) at the active configuration."""
        return scale_channels(self._full_out, self.width) if self._slim_out else self._full_out

    def active_weight(self, in_active: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weight and bias the layer applies, at the active configuration, to an input
        of ``in_active`` channels (features for a linear layer).

        At full width on the full input: the parameters themselves. Otherwise the slice
        ``weight[:out, :in_active]`` (for ``in_splits``, the columns of each part's active
        channels; for a depthwise conv ``weight[:in_active]``, its input dim of 1 kept) and
        ``bias[:out]``, ``out`` being :meth:`active_out` (``in_active`` for a depthwise
        conv). With autograd on these are views of the parameters (gradients reach them);
        without, a cached contiguous copy: read them, do not write them. Raises
        ``RuntimeError`` if ``in_active`` does not fit the layer at this configuration.
        """
        state = self._state()
        if state[1] and in_active == self._full_in:  # full width, every part of in_splits is full
            return self.weight, self.bias
        return self._active_slice(in_active, state)

    def _active_slice(self, in_active: int, state: tuple) -> tuple[torch.Tensor, torch.Tensor | None]:
        self._check_in(in_active)
        return self._sliced_weight(in_active)

    def _new_state(self) -> tuple:
        """``(subnet, full width, active outputs, active channels of each part of
        in_splits or None)`` of the active configuration."""
        parts = None
        if self._in_splits is not None:
            parts = tuple(scale_channels(c, self.width) if slim else c for c, slim in self._in_splits)
        return (self.subnet, self.width == 1.0, self.active_out(), parts)

    def _state(self) -> tuple:
        """The :meth:`_new_state` of the active configuration, kept until it changes
        (not stored from inside a compiled region: dynamo would guard on the cache)."""
        state = self._slim_state
        if state is None or state[0] is not self.subnet:
            state = self._new_state()
            if not torch.compiler.is_compiling():
                self.__dict__["_slim_state"] = state
                self.__dict__["_size_carriers"] = _size_carriers(state, self._hint_dynamic)
        return state

    def _traced_slice(self, in_active: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The active weight and bias inside a compiled region, sized by the shapes of
        :func:`_size_carriers` (set with the configuration, outside the region) instead of
        Python ints: dynamo makes a size that changes between calls dynamic, so a few graphs
        serve every channel pattern, where ints would specialize a graph on each (X3D-XS
        over width [0.5, 1] has 198). No checks here: aten's conv / linear checks the shapes.
        A conv's slice of the input channels is copied contiguous: a strided one is contiguous
        only at full width, and conv's backend choice (with several threads) would guard on that."""
        out_carrier, part_carriers = self._size_carriers
        weight, bias = self.weight, self.bias
        out_active = out_carrier.shape[0]
        if getattr(self, "_depthwise", False):
            if self._slim_out and out_active != in_active:  # eager's check (a guard where it holds)
                raise RuntimeError(
                    f"{type(self).__name__}: depthwise conv got {in_active} channels at width "
                    f"{self.width:g}, which gives {out_active} outputs"
                )
            return weight[:in_active], None if bias is None else bias[:in_active]
        weight = weight[:out_active]
        if part_carriers is None:
            weight = weight[:, :in_active]
            if weight.dim() > 2:  # a conv's: contiguous (see the docstring), no graph specialized on full width
                weight = weight.clone(memory_format=torch.contiguous_format)
        else:
            parts = [torch.arange(start, start + carrier.shape[0], device=weight.device)
                     for start, carrier in zip(_part_starts(self._in_splits), part_carriers)]
            weight = weight.index_select(1, torch.cat(parts))
        return weight, None if bias is None else bias[:out_active]

    def _split_index(self, in_active: int) -> torch.Tensor | None:
        """Indices of the active inputs when the input is a concatenation, else None (kept
        per ``(width, in_active)``; built in the graph inside a compiled region)."""
        if self._in_splits is None:
            return None
        compiling = torch.compiler.is_compiling()
        key = (self.width, in_active)
        if not compiling and key in self._index_cache:
            return self._index_cache[key]
        active_parts = self._state()[3]
        expected = sum(active_parts)
        if in_active != expected:  # plain ints: no graph break (a torch._check message closure breaks the graph)
            raise RuntimeError(
                f"{type(self).__name__}: input has {in_active} channels but in_splits "
                f"{self._in_splits} at width {self.width:g} expect {expected}"
            )
        index = torch.cat([torch.arange(start, start + active, device=self.weight.device)
                           for start, active in zip(_part_starts(self._in_splits), active_parts)])
        if not compiling:
            self._index_cache[key] = index
        return index

    def _check_in(self, in_active: int) -> None:
        if in_active > self._full_in:
            raise RuntimeError(
                f"{type(self).__name__}: input has {in_active} channels, more than the "
                f"{self._full_in} the layer was built for"
            )

    def _sliced_weight(self, in_active: int, depthwise: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight ``[:out, :in]`` (or its in_splits columns) and bias ``[:out]``.

        A depthwise conv passes ``depthwise=True``: ``out = in_active`` and the weight's
        input dim (1) is kept.
        """
        weight, bias = self._parameters["weight"], self._parameters["bias"]
        if torch.compiler.is_compiling():  # no cached slice in a graph (inductor fuses the slicing)
            return self._slice_weight(in_active, depthwise)
        if torch.is_grad_enabled() and (weight.requires_grad or (bias is not None and bias.requires_grad)):
            return self._slice_weight(in_active, depthwise)
        key = (self._state(), in_active, depthwise, _tensor_key(weight), _tensor_key(bias))
        cached = self._inference_slice
        if cached is None or cached[0] != key:
            # the detached aliases keep the sources' storage alive: no new tensor can take
            # their address while the cache holds them
            sources = (weight.detach(), None if bias is None else bias.detach())
            weight, bias = self._slice_weight(in_active, depthwise)
            # detach: a view made under no_grad still reports requires_grad
            cached = (key, weight.detach().contiguous(), None if bias is None else bias.detach(), sources)
            self.__dict__["_inference_slice"] = cached
        return cached[1], cached[2]

    def _slice_weight(self, in_active: int, depthwise: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        params = self._parameters  # (the dict: a per-call path, nn.Module.__getattr__ costs here)
        full, bias = params["weight"], params["bias"]
        if depthwise:
            out_active = in_active
        else:
            state = self._slim_state
            out_active = (state if state is not None and state[0] is self.subnet else self._state())[2]
        index = None if depthwise or self._in_splits is None else self._split_index(in_active)
        if index is not None and index.device != full.device:  # the weight moved since the index was kept
            index = index.to(full.device)
            self._index_cache[(self.width, in_active)] = index
        in_sliced = None if depthwise or index is not None or in_active == full.shape[1] else in_active
        if bias is not None:
            bias = bias[:out_active]
        if (full.requires_grad and torch.is_grad_enabled() and slice_grads_enabled()
                and full.numel() >= _SLICE_INTO_GRAD_MIN_NUMEL
                and not torch.compiler.is_compiling() and full.grad_fn is None
                and (out_active < full.shape[0] or in_sliced is not None or index is not None)):
            return _SliceIntoGrad.apply(full, out_active, in_sliced, index), bias
        weight = full[:out_active]
        if index is not None:
            weight = weight.index_select(1, index)
        elif in_sliced is not None:
            weight = weight[:, :in_sliced]
        return weight, bias


class _SlimConvNd(_SlimWeightMixin):
    _conv: Callable[..., torch.Tensor]  # F.conv2d / F.conv3d, set by the subclass

    def _conv_forward(self, x, weight, bias, groups=None):  # type: ignore[override]
        groups = self.groups if groups is None else groups
        if self.padding_mode != "zeros":
            return self._conv(
                F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode),
                weight, bias, self.stride, 0, self.dilation, groups,
            )
        return self._conv(x, weight, bias, self.stride, self.padding, self.dilation, groups)

    def _init_conv(self, slim_out: bool, in_splits) -> None:
        self._depthwise = self.groups > 1 and self.groups == self.in_channels == self.out_channels
        if self.groups > 1 and not self._depthwise:
            raise ValueError(
                f"{type(self).__name__}: only dense (groups=1) and depthwise convolutions can be "
                f"slimmed, got groups={self.groups} with {self.in_channels}->{self.out_channels} channels"
            )
        self._init_slim(slim_out, in_splits, self.in_channels, self.out_channels)

    @property
    def is_depthwise(self) -> bool:
        """``groups == in_channels == out_channels``: runs with ``groups`` = active channels."""
        return self._depthwise

    def _check_slicing(self, in_splits: InSplits | None) -> None:
        if self._depthwise and in_splits is not None:
            raise ValueError(f"{type(self).__name__}: a depthwise conv cannot take in_splits")

    def _active_slice(self, in_active: int, state: tuple) -> tuple[torch.Tensor, torch.Tensor | None]:
        self._check_in(in_active)
        if not self._depthwise:
            return self._sliced_weight(in_active)
        out_active = state[2] if self._slim_out else in_active
        if out_active != in_active:
            raise RuntimeError(
                f"{type(self).__name__}: depthwise conv got {in_active} channels at width "
                f"{self.width:g}, which gives {out_active} outputs"
            )
        return self._sliced_weight(in_active, depthwise=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_active = x.shape[1]
        if self._size_carriers is not None and torch.compiler.is_compiling():
            weight, bias = self._traced_slice(in_active)
            return self._conv_forward(x, weight, bias, in_active if self._depthwise else 1)
        state = self._slim_state
        if state is None or state[0] is not self.subnet:
            state = self._state()
        if state[1] and in_active == self._full_in:  # full width, every part of in_splits is full
            return self._conv_forward(x, self.weight, self.bias)  # = nn.ConvNd.forward
        if self._gemm_reads_slice(x, state[2]):
            self._check_in(in_active)
            if self._in_splits is None:
                blocks: tuple[tuple[int, int], ...] = ((0, in_active),)
            else:
                self._split_index(in_active)  # checks in_active against the parts (kept, no graph here)
                blocks = tuple(zip(_part_starts(self._in_splits), state[3]))
            bias = None if self.bias is None else self.bias[:state[2]]
            return _SlicedConvIntoGrad.apply(x, self.weight, bias, state[2], blocks, self.stride, self.padding)
        weight, bias = self._active_slice(in_active, state)
        return self._conv_forward(x, weight, bias, in_active if self._depthwise else 1)

    def _gemm_reads_slice(self, x: torch.Tensor, out_active: int) -> bool:
        """Whether this pass runs as :class:`_SlicedConvIntoGrad`: a sub-network's pass
        under :func:`slice_grads` on the CPU in float32, on a slice of the input channels
        (``weight[:out, :in]``, or the columns of the parts of ``in_splits``, is not
        contiguous; aten's conv would copy it), with at least ``_GEMM_MIN_MACS``
        multiply-adds, where the slice is large against the input: small clips on wide
        layers (a ResNet's last stages at a low crop), not the early stages. Kernels of size
        1 in the two last (spatial) dims, whose im2col is a view or a few shifted copies,
        take it while the output positions are at most 16 per active output channel; other
        kernels, whose im2col copies ``kh * kw`` times the input, while the im2col is no
        larger than the weight slice (so the im2col a pass keeps for backward stays near the
        size of what aten's conv keeps). The shape bounds come from timing each conv of Slow
        R50 both ways on the CPU (fwd+bwd, 4x96 batch 1 and 8x160 batch 2); the work bound
        from timing each conv of X3D-XS/S/M, Slow R50 and SlowFast R50 three ways (this
        path, aten's conv on a copy of the slice, plain autograd slicing) at widths 0.5 and
        0.75, batch 1, the inputs of ``benchmarks/slim_overhead.py``: of the convs inside
        the shape bounds, this path was the fastest in 327 of the 345 above the work bound
        and in 6 of the 143 below it (X3D's squeeze-excitation convs and narrow stages,
        where its Python costs more than the copy it saves)."""
        # cheapest checks first: most passes (full width, outside slice_grads, small convs) stop early
        in_active = x.shape[1]
        if (self._depthwise or in_active >= self._full_in or not slice_grads_enabled()
                or isinstance(self.padding, str) or self.groups != 1):
            return False
        weight = self._parameters["weight"]
        ksize = weight.shape[2:]
        positions = x.shape[0]
        for s, k, st, p in zip(x.shape[2:], ksize, self.stride, self.padding):
            positions *= max((s + 2 * p - k) // st + 1, 0)
        if positions == 0 or positions * out_active * in_active * math.prod(ksize) < _GEMM_MIN_MACS:
            return False
        if (not weight.requires_grad or weight.grad_fn is not None
                or not torch.is_grad_enabled() or torch.compiler.is_compiling()):
            return False
        if (x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32
                or torch.is_autocast_enabled("cpu") or not x.is_contiguous() or not weight.is_contiguous()
                or self.padding_mode != "zeros" or any(d != 1 for d in self.dilation)):
            return False
        if all(k == 1 for k in ksize[-2:]):
            return positions <= 16 * out_active
        return positions <= out_active  # im2col (window x positions) <= slice (out x window)


class SlimConv2d(_SlimConvNd, nn.Conv2d):
    """``nn.Conv2d`` that runs on its leading channels at the active width."""

    def __init__(self, *args, slim_out: bool = True, in_splits: Sequence[Sequence] | None = None, **kwargs):
        nn.Conv2d.__init__(self, *args, **kwargs)
        self._init_conv(slim_out, in_splits)

    _conv = staticmethod(F.conv2d)


class SlimConv3d(_SlimConvNd, nn.Conv3d):
    """``nn.Conv3d`` that runs on its leading channels at the active width."""

    def __init__(self, *args, slim_out: bool = True, in_splits: Sequence[Sequence] | None = None, **kwargs):
        nn.Conv3d.__init__(self, *args, **kwargs)
        self._init_conv(slim_out, in_splits)

    _conv = staticmethod(F.conv3d)


class SlimLinear(_SlimWeightMixin, nn.Linear):
    """``nn.Linear`` on the leading features; ``slim_out=False`` by default (classifiers)."""

    def __init__(self, *args, slim_out: bool = False, in_splits: Sequence[Sequence] | None = None, **kwargs):
        nn.Linear.__init__(self, *args, **kwargs)
        self._init_slim(slim_out, in_splits, self.in_features, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_active = x.shape[-1]
        if self._size_carriers is not None and torch.compiler.is_compiling():
            return F.linear(x, *self._traced_slice(in_active))
        state = self._slim_state
        if state is None or state[0] is not self.subnet:
            state = self._state()
        if state[1] and in_active == self._full_in:  # full width, every part of in_splits is full
            return F.linear(x, self.weight, self.bias)  # = nn.Linear.forward
        weight, bias = self._active_slice(in_active, state)
        return F.linear(x, weight, bias)


class SlimBatchNorm(SlimmableModule):
    """BatchNorm over the leading channels, with running statistics per configuration.

    Channels are read from the input. Training uses batch statistics with the shared
    affine parameters and updates the leading slice of the shared running buffers.
    In eval mode, a configuration with stored statistics (``config_stats[cfg.tag]``,
    filled by calibration) uses them; otherwise the shared running buffers are used.

    The stored statistics are saved in the state dict as
    ``<name>.config_stats.<tag>.running_mean`` / ``.running_var``; a state dict
    without them (a stock checkpoint) still loads with ``strict=True``.
    """

    _STATS_KEY = "config_stats."

    # the stored statistics of the active configuration, kept with it (set_subnet) and
    # with every change of config_stats made here: what a compiled forward reads, so that
    # it does not look them up by tag (dynamo would specialize a graph on each tag)
    _active_stats: tuple[torch.Tensor, torch.Tensor] | None = None

    def _init_stats(self) -> None:
        self.config_stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def set_subnet(self, cfg: SubnetConfig | None) -> None:  # noqa: D102 (SlimmableModule's)
        super().set_subnet(cfg)
        self._refresh_active_stats()

    def _refresh_active_stats(self) -> None:
        subnet = self.subnet
        stats = None if subnet is None else self.config_stats.get(subnet.tag)
        if stats is not None:  # aliases (not views) hinted dynamic: their size is the channel count
            stats = tuple(_mark_dynamic(t.detach(), self._hint_dynamic) for t in stats)
        self.__dict__["_active_stats"] = stats

    # -- statistics per configuration -------------------------------------------------
    def store_stats(self, cfg: SubnetConfig, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Keep ``mean``/``var`` (of the active channels) as the statistics of ``cfg``."""
        if mean.shape != var.shape or mean.dim() != 1 or mean.numel() > self.num_features:
            raise ValueError(
                f"statistics for {cfg} must be two equal 1-D tensors of at most "
                f"{self.num_features} channels, got {tuple(mean.shape)} and {tuple(var.shape)}"
            )
        self.config_stats[cfg.tag] = (mean.detach().clone(), var.detach().clone())
        self._refresh_active_stats()

    def has_stats(self, cfg: SubnetConfig) -> bool:
        return cfg.tag in self.config_stats

    def clear_stats(self) -> None:
        self.config_stats.clear()
        self._refresh_active_stats()

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)  # type: ignore[misc]
        for tag, (mean, var) in sorted(self.config_stats.items()):
            destination[f"{prefix}{self._STATS_KEY}{tag}.running_mean"] = mean if keep_vars else mean.detach()
            destination[f"{prefix}{self._STATS_KEY}{tag}.running_var"] = var if keep_vars else var.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        stats_prefix = prefix + self._STATS_KEY
        loaded: dict[str, dict[str, torch.Tensor]] = {}
        for key in [k for k in state_dict if k.startswith(stats_prefix)]:
            tag, _, name = key[len(stats_prefix):].rpartition(".")
            value = state_dict.pop(key)
            if name not in ("running_mean", "running_var") or not tag:
                unexpected_keys.append(key)
                continue
            loaded.setdefault(tag, {})[name] = value
        self.config_stats = {}
        for tag, pair in loaded.items():
            if set(pair) != {"running_mean", "running_var"}:
                error_msgs.append(f"{stats_prefix}{tag}: needs both running_mean and running_var")
                continue
            ref = self.running_mean
            self.config_stats[tag] = tuple(  # type: ignore[assignment]
                pair[n].to(device=ref.device, dtype=ref.dtype) if ref is not None else pair[n]
                for n in ("running_mean", "running_var")
            )
        super()._load_from_state_dict(  # type: ignore[misc]
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._refresh_active_stats()

    # -- forward ----------------------------------------------------------------------
    _eval_cache: tuple | None = None

    def _apply(self, fn, recurse=True):  # keep stored statistics on the module's device/dtype
        self.__dict__["_eval_cache"] = None
        self.__dict__["_train_views"] = None
        result = super()._apply(fn, recurse)  # type: ignore[misc]
        self.config_stats = {tag: (fn(m), fn(v)) for tag, (m, v) in self.config_stats.items()}
        self._refresh_active_stats()
        return result

    def _new_state(self) -> tuple:
        """``(subnet, its tag or None)``."""
        return (self.subnet, None if self.subnet is None else self.subnet.tag)

    def _stored_stats(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The statistics stored for the active configuration (eval only), else None."""
        state = self._slim_state
        if state is None or state[0] is not self.subnet:
            state = self._new_state()
            if not torch.compiler.is_compiling():
                self.__dict__["_slim_state"] = state
        return None if state[1] is None else self.config_stats.get(state[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not torch.compiler.is_compiling():
            return self._train_forward(x)
        # the cached path is for eager only: in a compiled region its cache keys (tensor
        # addresses, versions) would break the graph and be guarded on
        if not self.training and not torch.is_grad_enabled() and not torch.compiler.is_compiling():
            out = self._inference_forward(x)
            if out is not None:
                return out
        return self._slim_forward(x)

    def _inference_forward(self, x: torch.Tensor) -> torch.Tensor | None:
        """Eval without autograd on cached leading slices; None where it does not apply.

        The slices of weight, bias and running statistics are detached views (a leading
        slice of a 1-D tensor is contiguous), which keep their storage alive; the cache key
        holds each tensor's address and ``_version`` and the stored statistics' identity,
        so the cache follows any update or replaced tensor. Same call as the general path
        (``F.batch_norm`` in eval), same output.
        """
        params, buffers = self._parameters, self._buffers
        running_mean, running_var = buffers["running_mean"], buffers["running_var"]
        stored = self._stored_stats()
        if stored is None and (running_mean is None or running_var is None):
            return None  # batch statistics: the general path
        self._check_input_dim(x)  # type: ignore[attr-defined]
        channels = x.shape[1]
        weight, bias = params["weight"], params["bias"]
        # stored statistics by identity (the cache holds them, so the ids stay theirs)
        key = (channels, None if stored is None else (id(stored[0]), id(stored[1])),
               _tensor_key(weight), _tensor_key(bias),
               None if stored is not None else (_tensor_key(running_mean), _tensor_key(running_var)))
        cached = self._eval_cache
        if cached is None or cached[0] != key:
            if channels > self.num_features or (stored is not None and stored[0].numel() != channels):
                return None  # the general path raises
            if stored is not None:
                mean, var = stored
            else:
                mean, var = running_mean.detach()[:channels], running_var.detach()[:channels]
            cached = (key, mean, var,
                      None if weight is None else weight.detach()[:channels],
                      None if bias is None else bias.detach()[:channels])
            self.__dict__["_eval_cache"] = cached
        return F.batch_norm(x, cached[1], cached[2], cached[3], cached[4], False, 0.0, self.eps)

    def _check_channels(self, channels: int) -> None:
        if channels > self.num_features:
            raise RuntimeError(
                f"{type(self).__name__}: input has {channels} channels, more than the "
                f"{self.num_features} the layer was built for"
            )

    def _training_factor(self) -> float:
        """nn.BatchNorm's running-statistics factor of a training pass (``momentum``, or
        the cumulative average when it is None), counting the pass in ``num_batches_tracked``."""
        momentum = self.momentum
        tracked = self.num_batches_tracked
        if self.track_running_stats and tracked is not None:
            tracked.add_(1)
            if momentum is None:
                return 1.0 / float(tracked)
        return 0.0 if momentum is None else momentum

    _train_views: tuple | None = None

    def _train_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training, eager: :meth:`_slim_forward`'s computation in fewer Python steps (at
        X3D's sizes a slimmed BatchNorm's cost is mostly Python): parameters and buffers
        read from their dicts, and the leading slices of the running statistics kept as
        views (F.batch_norm updates them in place, so they write through to the buffers)
        while the buffers and the channel count stay the same."""
        self._check_input_dim(x)  # type: ignore[attr-defined]
        channels = x.shape[1]
        if channels == self.num_features:
            return super().forward(x)  # type: ignore[misc]
        self._check_channels(channels)
        params, buffers = self._parameters, self._buffers
        # (the dicts: nn.Module.__getattr__ costs here; a parametrized weight is not in them)
        weight = params["weight"] if "weight" in params else self.weight
        bias = params["bias"] if "bias" in params else self.bias
        if weight is not None:
            weight = weight[:channels]
        if bias is not None:
            bias = bias[:channels]
        factor = self._training_factor()
        mean, var = buffers.get("running_mean"), buffers.get("running_var")
        if mean is not None and var is not None:
            cached = self._train_views
            if (cached is None or cached[0] != channels or cached[1] is not mean or cached[2] is not var
                    or cached[3] != (mean.data_ptr(), var.data_ptr())):
                cached = (channels, mean, var, (mean.data_ptr(), var.data_ptr()), mean[:channels], var[:channels])
                self.__dict__["_train_views"] = cached
            mean, var = cached[4], cached[5]
        else:
            mean = var = None
        return F.batch_norm(x, mean, var, weight, bias, True, factor, self.eps)

    def _slim_forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)  # type: ignore[attr-defined]
        channels = x.shape[1]
        compiling = torch.compiler.is_compiling()
        if self.training:
            stored = None
        elif compiling and "_active_stats" in self.__dict__:
            stored = self._active_stats
        else:  # (a module unpickled from before _active_stats: looked up by tag, also when compiled)
            stored = self._stored_stats()
        # compiled: the general path at every width (a branch on the channel count would
        # specialize a graph on full width)
        if stored is None and not compiling and channels == self.num_features:
            return super().forward(x)  # type: ignore[misc]
        self._check_channels(channels)
        if stored is not None and stored[0].numel() != channels:
            raise RuntimeError(
                f"{type(self).__name__}: statistics stored for {self.subnet} have "
                f"{stored[0].numel()} channels, the input has {channels}"
            )
        weight = None if self.weight is None else self.weight[:channels]
        bias = None if self.bias is None else self.bias[:channels]

        factor = self._training_factor() if self.training else (0.0 if self.momentum is None else self.momentum)
        if self.training:
            use_batch_stats = True
        else:
            use_batch_stats = stored is None and (self.running_mean is None and self.running_var is None)
        if stored is not None:
            mean, var = stored
        elif self.running_mean is not None:
            mean, var = self.running_mean[:channels], self.running_var[:channels]
        else:
            mean = var = None
        return F.batch_norm(
            x, mean, var, weight, bias,
            use_batch_stats, factor, self.eps,
        )


class SlimBatchNorm2d(SlimBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` over the leading channels, statistics per configuration."""

    def __init__(self, *args, **kwargs):
        nn.BatchNorm2d.__init__(self, *args, **kwargs)
        self._init_stats()


class SlimBatchNorm3d(SlimBatchNorm, nn.BatchNorm3d):
    """``nn.BatchNorm3d`` over the leading channels, statistics per configuration."""

    def __init__(self, *args, **kwargs):
        nn.BatchNorm3d.__init__(self, *args, **kwargs)
        self._init_stats()
