"""YAML configuration: ``_target_`` nodes (Hydra / PyTorchVideo-trainer style, without Hydra).

A config file is a tree of plain dicts. Nodes with a ``_target_`` key name a callable by
its dotted path; :func:`instantiate` resolves it and calls it with the node's other keys
(nested ``_target_`` nodes are built first; ``_partial_: true`` gives a
``functools.partial``). Strings are resolved once, here, at the edge.

* ``_base_: other.yaml`` (or a list) inherits from files relative to this one; dicts are
  merged key by key, the child wins.
* Command-line overrides ``key.sub=value``: the value is parsed as YAML (``lr=0.1``,
  ``frames=[4,2]``, ``val=null``).
* Every key is checked against :data:`SCHEMA` at load time: unknown keys, wrong types and
  values out of range fail naming the key (``optim.lr: must be > 0, got -1``); the
  kwargs of the ``model`` / ``data.train`` / ``data.val`` / ``data.synthetic`` callables
  are checked against their signatures. Missing keys get the schema's defaults.

See ``configs/README.md`` for the layout.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

__all__ = [
    "ConfigError",
    "SCHEMA",
    "Key",
    "TargetNode",
    "load_config",
    "parse_overrides",
    "validate_config",
    "default_config",
    "resolve_target",
    "accepts_kwarg",
    "accepted_kwargs",
    "instantiate",
    "build_model",
    "build_dataset",
    "dump_config",
]


class ConfigError(ValueError):
    """A configuration key is unknown, missing, or has an invalid value (the message names it)."""


# --------------------------------------------------------------------------------------
# YAML loading (PyYAML reads "5e-5" as a string: accept it as a float)
# --------------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    pass


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _yaml_load(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from exc


# --------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------
_NONE = type(None)


@dataclass(frozen=True)
class Key:
    """A leaf of the schema: allowed types, a range/choice check, the default, a doc line."""

    types: tuple[type, ...]
    default: Any = None
    check: Callable[[Any], str | None] | None = None
    doc: str = ""

    def validate(self, value: Any, path: str) -> Any:
        raw = value
        if float in self.types and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        ok = isinstance(value, self.types) and not (isinstance(value, bool) and bool not in self.types)
        if not ok:
            names = " or ".join("null" if t is _NONE else t.__name__ for t in self.types)
            raise ConfigError(f"{path}: must be {names}, got {value!r} ({type(value).__name__})")
        if value is not None and self.check is not None:
            problem = self.check(value)
            if problem:
                raise ConfigError(f"{path}: {problem}, got {raw!r}")
        return value


@dataclass(frozen=True)
class TargetNode:
    """A ``_target_`` node: kwargs are checked against the callable's signature.

    ``reserved``: keys read by the engine itself (not passed to the callable).
    ``injected``: kwargs the engine passes at build time (not allowed in the file).
    ``default_target``: used when the node has no ``_target_``.
    """

    required: bool = False
    nullable: bool = True
    reserved: Mapping[str, Key] = field(default_factory=dict)
    injected: tuple[str, ...] = ()
    default_target: str | None = None
    doc: str = ""


def _gt(lo: float) -> Callable[[Any], str | None]:
    return lambda v: None if v > lo else f"must be > {lo:g}"


def _ge(lo: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= lo else f"must be >= {lo:g}"


def _in_range(lo: float, hi: float, *, hi_open: bool = False) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if lo <= v and (v < hi if hi_open else v <= hi):
            return None
        return f"must be in [{lo:g}, {hi:g}{')' if hi_open else ']'}"

    return check


def _choice(*choices: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def _device(v: str) -> str | None:
    return None if re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) else "must be auto, cpu, cuda or cuda:N"


def _betas(v: list) -> str | None:
    if len(v) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in v):
        return None
    return "must be two numbers in [0, 1)"


def _str_list(v: list) -> str | None:
    return None if all(isinstance(s, str) for s in v) else "must be a list of config tags like w1000_f4_c160"


def _views(v: list) -> str | None:
    if not v:
        return "must list at least one view spec like 1x1"
    for spec in v:
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", spec) if isinstance(spec, str) else None
        if match is None or int(match.group(1)) < 1:
            return f"must be view specs TEMPORALxSPATIAL like 1x1 or 10x3 ({spec!r} is not)"
        if int(match.group(2)) not in (1, 3):
            return f"spatial crops per clip must be 1 or 3 ({spec!r})"
    return None


def _positive_list(kind: type | tuple[type, ...], name: str) -> Callable[[list], str | None]:
    def check(v: list) -> str | None:
        ok = bool(v) and all(isinstance(x, kind) and not isinstance(x, bool) and x > 0 for x in v)
        return None if ok else f"must be a non-empty list of positive {name}"
    return check


_INT, _FLOAT, _BOOL, _STR = (int,), (float,), (bool,), (str,)
_OPT_INT, _OPT_FLOAT, _OPT_STR = (int, _NONE), (float, _NONE), (str, _NONE)

#: The known sections and keys. ``model``, ``data.train``, ``data.val`` and
#: ``data.synthetic`` are ``_target_`` nodes checked against their callables.
SCHEMA: dict[str, Any] = {
    "output_dir": Key(_STR, "output/run", lambda v: None if v else "must not be empty",
                      "checkpoints, metrics.jsonl, TensorBoard events, config.yaml"),
    "task": TargetNode(doc="what is task-specific in the sandwich step (losses, distillation, views); default: "
                            "classification (mutualnet_video.engine.task.ClassificationTask); 2D heads: "
                            "mutualnet_video.tasks.DetectionTask / SegmentationTask"),
    "model": TargetNode(
        required=True, nullable=False,
        reserved={"weights": Key(_OPT_STR, None, doc="stock PyTorchVideo / our checkpoint to start from (strict)")},
        doc="the model builder, e.g. mutualnet_video.models.create_slimmable_x3d, and its kwargs",
    ),
    "data": {
        "train": TargetNode(injected=("space", "rank", "world_size"),
                            doc="training dataset builder; the trainer passes space/rank/world_size if accepted"),
        "val": TargetNode(injected=("space", "rank", "world_size"), doc="validation dataset builder (full config)"),
        "batch_size": Key(_INT, 8, _gt(0), "clips per process per iteration"),
        "val_batch_size": Key(_OPT_INT, None, _gt(0), "default: batch_size"),
        "num_workers": Key(_INT, 2, _ge(0)),
        "drop_last": Key(_BOOL, True),
        "synthetic": TargetNode(
            reserved={"root": Key(_STR, None, lambda v: None if v else "must not be empty")},
            default_target="mutualnet_video.data.make_synthetic_kinetics",
            doc="if set and root/train.csv is absent, rank 0 calls make_synthetic_kinetics(root, **kwargs)",
        ),
    },
    "optim": {
        "name": Key(_STR, "sgd", _choice("sgd", "adamw")),
        "lr": Key(_FLOAT, 0.1, _gt(0), "base LR at the end of warm-up (per process batch; no auto-scaling)"),
        "momentum": Key(_FLOAT, 0.9, _in_range(0, 1, hi_open=True), "SGD only"),
        "nesterov": Key(_BOOL, True, doc="SGD only; needs momentum > 0"),
        "betas": Key((list,), [0.9, 0.999], _betas, "AdamW only"),
        "weight_decay": Key(_FLOAT, 5e-5, _ge(0)),
        "wd_exclude_bn_bias": Key(_BOOL, True, doc="no weight decay on norm parameters and biases"),
        "wd_exclude_depthwise": Key(_BOOL, False, doc="no weight decay on depthwise conv weights"),
        "warmup_iters": Key(_INT, 0, _ge(0)),
        "warmup_factor": Key(_FLOAT, 0.1, _in_range(0, 1), "LR multiplier at iteration 0"),
        "min_lr_factor": Key(_FLOAT, 0.0, _in_range(0, 1), "LR multiplier at the end of the cosine"),
        "max_iters": Key(_OPT_INT, None, _gt(0), "iterations (exactly one of max_iters / epochs)"),
        "epochs": Key(_OPT_INT, None, _gt(0), "epochs; needs a dataset with a length"),
        "clip_grad_norm": Key(_OPT_FLOAT, None, _gt(0)),
    },
    "mutual": {
        "mode": Key(_STR, "mutual", _choice("mutual", "single"),
                    "mutual: sandwich rule + in-place distillation; single: full configuration only"),
        "temperature": Key(_FLOAT, 1.0, _gt(0)),
        "distill": Key(_STR, "kl", _choice("kl")),
    },
    "train": {
        "seed": Key(_INT, 0, _ge(0)),
        "amp": Key(_BOOL, True, doc="autocast + GradScaler, CUDA only (ignored on the CPU)"),
        "sync_bn": Key(_BOOL, False, doc="synchronized BN over processes (SlimSyncBatchNorm, see configs/README.md)"),
        "log_period": Key(_INT, 10, _gt(0)),
        "checkpoint_period": Key(_INT, 1000, _gt(0)),
        "eval_period": Key(_INT, 0, _ge(0), "0: validate only at the end"),
        "device": Key(_STR, "auto", _device),
        "cpu_threads": Key(_OPT_INT, None, _gt(0),
                           "torch.set_num_threads for this process (null: torch's default); 1 avoids "
                           "oversubscription when several processes share few cores"),
        "resume": Key(_BOOL, False, doc="continue from the newest loadable checkpoint of output_dir if present"),
        "resume_check": Key(_BOOL, True, doc="refuse to resume from a checkpoint of another model / configuration "
                                             "space"),
        "keep_checkpoints": Key(_INT, 3, _gt(0), "periodic checkpoints kept (model_final is always kept)"),
        "progress": Key(_BOOL, True, doc="tqdm progress bar on rank 0"),
        "tensorboard": Key(_BOOL, True),
        "find_unused_parameters": Key(_BOOL, False, doc="DDP option"),
        "compile": Key(_BOOL, False, doc="torch.compile the training forward (engine.compile_slimmable); checkpoints, "
                                         "calibration and evaluation use the uncompiled model"),
    },
    "eval": {
        "configs": Key((list, _NONE), None, _str_list, "config tags evaluated at the end; default: corners"),
        "calib_batches": Key(_INT, 9, _gt(0), "BN calibration batches per config (paper: 9)"),
        "max_batches": Key(_OPT_INT, None, _gt(0), "cap on validation / test batches"),
        # tools/test_net.py (the budget table); the grid is widths x frames x crops x views
        "widths": Key((list, _NONE), None, _positive_list((int, float), "numbers"),
                      "test widths (default: the model space's evaluation widths)"),
        "frames": Key((list, _NONE), None, _positive_list(int, "ints"), "test frame counts (default: the space's)"),
        "crops": Key((list, _NONE), None, _positive_list(int, "ints"), "test crop sizes (default: the space's)"),
        "views": Key((list,), ["1x1"], _views, "test views per video, TEMPORALxSPATIAL (SPATIAL 1 or 3)"),
        "clip_duration": Key(_OPT_FLOAT, None, _gt(0),
                             "seconds per test clip (default: data.val's); needed for more than one temporal view"),
        "batch_size": Key(_OPT_INT, None, _gt(0), "test clips per batch (default: data.val_batch_size / batch_size)"),
    },
}

#: Keys that no longer exist and what replaces them (the 2D projects' own schema, before
#: they shared this one).
REMOVED_KEYS = {
    "seed": "train.seed",
    "solver": "optim (lr, momentum, nesterov, weight_decay; solver.iterations is optim.max_iters) and task "
              "(task_weight, distill_weight)",
    "data.num_images": "data.train.num_images (a kwarg of the dataset node)",
    "data.height": "data.train.height",
    "data.width": "data.train.width",
    "data.max_objects": "data.train.max_objects",
}

#: Kwargs a MutualNet model builder takes on top of the PyTorchVideo builder's.
MUTUAL_KEYS = ("width_range", "frames", "crops")
_STOCK_TO_OURS = {
    "create_x3d": "mutualnet_video.models.create_slimmable_x3d",
    "create_slowfast": "mutualnet_video.models.create_slimmable_slowfast",
    "create_resnet": "mutualnet_video.models.create_slimmable_resnet",
}


# --------------------------------------------------------------------------------------
# _target_ resolution and instantiation
# --------------------------------------------------------------------------------------
def resolve_target(name: str, *, path: str = "_target_") -> Callable:
    """Import ``package.module.attr`` (attributes may be nested) and return it."""
    if not isinstance(name, str) or not name or not re.fullmatch(r"[A-Za-z_][\w.]*", name):
        raise ConfigError(f"{path}: must be a dotted path like 'package.module.function', got {name!r}")
    parts = name.split(".")
    for split in range(len(parts), 0, -1):
        module_name = ".".join(parts[:split])
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and not module_name.startswith(exc.name) and exc.name != module_name:
                raise ConfigError(f"{path}: importing {module_name!r} failed: {exc}") from exc
            continue
        try:
            for attr in parts[split:]:
                obj = getattr(obj, attr)
        except AttributeError as exc:
            raise ConfigError(f"{path}: {name!r} not found ({module_name!r} has no {attr!r})") from exc
        if not callable(obj):
            raise ConfigError(f"{path}: {name!r} is not callable")
        return obj
    raise ConfigError(f"{path}: cannot import {name!r}")


def accepts_kwarg(fn: Callable, name: str) -> bool:
    """Whether ``fn(..., name=...)`` can be called: ``name`` is a parameter or ``fn`` takes
    ``**kwargs`` (False if ``fn`` has no signature). Used to pass ``space``/``rank``/... to
    dataset callables that take them."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())


def accepted_kwargs(fn: Callable) -> set[str] | None:
    """Keyword names ``fn`` accepts; None if it takes ``**kwargs`` it does not declare.

    A builder that passes ``**kwargs`` on names the callable it forwards to in its
    ``forwards_to`` attribute (``mutualnet_video.models._builder.forwards_kwargs``); that
    callable's keywords are then accepted too. Without it the keys are not checked.
    """
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    names = {
        n for n, p in sig.parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    var_kw = [p.name for p in sig.parameters.values() if p.kind == inspect.Parameter.VAR_KEYWORD]
    if var_kw:
        inner = getattr(fn, "forwards_to", None)
        if not callable(inner):
            return None
        inner_names = accepted_kwargs(inner)
        return None if inner_names is None else names | inner_names
    return names


def _check_kwargs(fn: Callable, kwargs: Sequence[str], path: str, target: str) -> None:
    accepted = accepted_kwargs(fn)
    if accepted is None:
        return
    for key in kwargs:
        if key not in accepted:
            close = sorted(a for a in accepted if a.startswith(key[:3]))
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"{path}.{key}: unknown keyword argument of {target}{hint}")


def instantiate(node: Mapping[str, Any], /, *, _path: str = "", **extra: Any) -> Any:
    """Build ``node``: ``resolve_target(node['_target_'])(**kwargs, **extra)``.

    Nested ``_target_`` nodes (also inside lists) are built first; ``_partial_: true``
    returns a ``functools.partial`` instead of calling.
    """
    if not isinstance(node, Mapping) or "_target_" not in node:
        raise ConfigError(f"{_path or 'node'}: needs a _target_ key, got {node!r}")
    fn = resolve_target(node["_target_"], path=f"{_path}._target_" if _path else "_target_")
    kwargs = {k: _build_value(v, f"{_path}.{k}") for k, v in node.items() if k not in ("_target_", "_partial_")}
    kwargs.update(extra)
    if node.get("_partial_", False):
        return functools.partial(fn, **kwargs)
    try:
        return fn(**kwargs)
    except ConfigError:
        raise
    except FileNotFoundError as exc:
        raise ConfigFileNotFoundError(_name_the_key(_path, node, exc)) from exc
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(_name_the_key(_path, node, exc)) from exc


class ConfigFileNotFoundError(ConfigError, FileNotFoundError):
    """A file a config node names does not exist (a :class:`ConfigError` and a ``FileNotFoundError``)."""


def _name_the_key(path: str, node: Mapping[str, Any], exc: BaseException) -> str:
    """``<path>.<key>: <problem>`` when the error of ``node``'s callable starts with one of
    its keys (``width_range: ...``), else ``<path>: <problem>``."""
    message = " ".join((str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)).split())
    message = message or type(exc).__name__
    where = path or "node"
    for key in sorted((k for k in node if isinstance(k, str) and not k.startswith("_")), key=len, reverse=True):
        if message.startswith((f"{key}:", f"{key} ")):
            return f"{where}.{key}: {message[len(key) + 1:].strip()}"
    return f"{where}: {message}"


def _build_value(value: Any, path: str) -> Any:
    if isinstance(value, Mapping) and "_target_" in value:
        return instantiate(value, _path=path)
    if isinstance(value, list):
        return [_build_value(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


# --------------------------------------------------------------------------------------
# Loading, merging, overrides
# --------------------------------------------------------------------------------------
def _merge(base: dict, child: Mapping) -> dict:
    out = copy.deepcopy(base)
    for key, value in child.items():
        base_node = out.get(key)
        if (isinstance(value, Mapping) and isinstance(base_node, dict)
                and value.get("_target_", base_node.get("_target_")) == base_node.get("_target_")):
            out[key] = _merge(base_node, value)  # same (or no new) _target_: merge kwargs
        else:  # a new _target_ replaces the whole node
            out[key] = copy.deepcopy(value)
    return out


def _read_tree(path: str, seen: tuple[str, ...] = ()) -> dict:
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"{path}: _base_ inheritance cycle: {' -> '.join(seen + (path,))}")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        tree = _yaml_load(f.read(), path)
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(tree).__name__}")
    bases = tree.pop("_base_", None)
    if bases is None:
        return tree
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a path or a list of paths, got {bases!r}")
    merged: dict = {}
    for base in bases:
        base_path = base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)
        merged = _merge(merged, _read_tree(base_path, seen + (path,)))
    return _merge(merged, tree)


def parse_overrides(overrides: Sequence[str]) -> list[tuple[list[str], Any]]:
    """``["optim.lr=0.1", "model.frames=[4,2]"]`` -> ``[(["optim", "lr"], 0.1), ...]``."""
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
            raise ConfigError(f"override {item!r}: expected key.sub=value")
        parsed.append((key.split("."), _yaml_load(raw, f"override {item!r}") if raw.strip() else None))
    return parsed


def _apply_override(tree: dict, keys: list[str], value: Any) -> None:
    node = tree
    for i, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(keys)}: {'.'.join(keys[: i + 1])} is not a section")
        node = child
    node[keys[-1]] = value


def load_config(path: str, overrides: Sequence[str] = (), *, resolve_targets: bool = True) -> dict:
    """Read ``path`` (following ``_base_``), apply ``key=value`` overrides, validate.

    Returns the full config tree (plain dicts) with schema defaults filled in. Raises
    :class:`ConfigError` naming the first bad key. ``resolve_targets=False`` skips
    importing the ``_target_`` callables (and checking their kwargs).
    """
    tree = _read_tree(path)
    for keys, value in parse_overrides(overrides):
        _apply_override(tree, keys, value)
    return validate_config(tree, resolve_targets=resolve_targets)


def default_config(**sections: Any) -> dict:
    """A validated config from keyword sections (for programmatic use and tests)."""
    return validate_config(copy.deepcopy(sections))


def dump_config(cfg: Mapping[str, Any]) -> str:
    """The config as YAML text (saved next to the checkpoints)."""
    return yaml.safe_dump(_plain(cfg), sort_keys=False)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------
def validate_config(tree: Mapping[str, Any], *, resolve_targets: bool = True) -> dict:
    """Check ``tree`` against :data:`SCHEMA`; return it with defaults filled in."""
    if not isinstance(tree, Mapping):
        raise ConfigError(f"config must be a mapping, got {type(tree).__name__}")
    cfg = _validate_section(tree, SCHEMA, "", resolve_targets)
    _cross_checks(cfg)
    return cfg


def _validate_section(node: Mapping[str, Any], schema: Mapping[str, Any], prefix: str, resolve: bool) -> dict:
    if not isinstance(node, Mapping):
        raise ConfigError(f"{prefix.rstrip('.')}: must be a mapping, got {node!r}")
    for key in node:
        if key not in schema:
            if f"{prefix}{key}" in REMOVED_KEYS:
                raise ConfigError(f"{prefix}{key}: removed; use {REMOVED_KEYS[prefix + key]}")
            known = ", ".join(sorted(schema))
            raise ConfigError(f"{prefix}{key}: unknown key (known: {known})")
    out: dict = {}
    for key, spec in schema.items():
        path = f"{prefix}{key}"
        present = key in node
        value = node.get(key)
        if isinstance(spec, Key):
            out[key] = spec.validate(copy.deepcopy(value) if present else copy.deepcopy(spec.default), path)
        elif isinstance(spec, TargetNode):
            out[key] = _validate_target_node(value if present else None, spec, path, resolve)
        else:
            out[key] = _validate_section(value if present and value is not None else {}, spec, f"{path}.", resolve)
    return out


def _validate_target_node(node: Any, spec: TargetNode, path: str, resolve: bool = True) -> dict | None:
    if node is None:
        if spec.required or not spec.nullable:
            raise ConfigError(f"{path}: required (a mapping with a _target_ key)")
        return None
    if not isinstance(node, Mapping):
        raise ConfigError(f"{path}: must be a mapping with a _target_ key, got {node!r}")
    node = copy.deepcopy(dict(node))
    if path == "model" and "_target_" not in node and ("name" in node or "kwargs" in node):
        raise ConfigError("model.name / model.kwargs: removed; write model._target_: mutualnet_video.models."
                          f"{node.get('name', '<name>')} with the kwargs beside it")
    target = node.get("_target_", spec.default_target)
    if target is None:
        raise ConfigError(f"{path}._target_: required")
    if not isinstance(target, str) or not re.fullmatch(r"[A-Za-z_][\w.]*", target):
        raise ConfigError(f"{path}._target_: must be a dotted path like 'package.module.function', got {target!r}")
    for key, key_spec in spec.reserved.items():
        if key in node:
            node[key] = key_spec.validate(node[key], f"{path}.{key}")
        elif key_spec.default is not None or key == "weights":
            node[key] = key_spec.default
        else:
            raise ConfigError(f"{path}.{key}: required")
    kwargs = [k for k in node if k not in ("_target_", "_partial_") and k not in spec.reserved]
    for key in kwargs:
        if key in spec.injected:
            raise ConfigError(f"{path}.{key}: set by the trainer, remove it from the config")
    if path == "model" and target.startswith("pytorchvideo."):
        _check_stock_builder(None, target, kwargs)
    if resolve:
        fn = resolve_target(target, path=f"{path}._target_")
        if path == "model":
            _check_stock_builder(fn, target, kwargs)
        _check_kwargs(fn, kwargs, path, target)
    return node


def _check_stock_builder(fn: Callable | None, target: str, kwargs: Sequence[str]) -> None:
    module = getattr(fn, "__module__", "") or ""
    if target.startswith("pytorchvideo.") or module.startswith("pytorchvideo."):
        name = getattr(fn, "__name__", target.rsplit(".", 1)[-1])
        ours = _STOCK_TO_OURS.get(name, "mutualnet_video.models.create_slimmable_<family>")
        raise ConfigError(
            f"model._target_: {target} is a stock PyTorchVideo builder: it has no MutualNet keys "
            f"({', '.join(MUTUAL_KEYS)}) and builds a fixed-width network; switch _target_ to {ours} "
            "(same kwargs plus the config space)"
        )


def _cross_checks(cfg: dict) -> None:
    optim = cfg["optim"]
    if (optim["max_iters"] is None) == (optim["epochs"] is None):
        raise ConfigError(
            f"optim.max_iters / optim.epochs: set exactly one, got max_iters={optim['max_iters']!r}, "
            f"epochs={optim['epochs']!r}"
        )
    if optim["name"] == "sgd" and optim["nesterov"] and optim["momentum"] <= 0:
        raise ConfigError(f"optim.nesterov: needs optim.momentum > 0, got momentum={optim['momentum']!r}")
    if optim["max_iters"] is not None and optim["warmup_iters"] >= optim["max_iters"]:
        raise ConfigError(
            f"optim.warmup_iters: must be < optim.max_iters ({optim['max_iters']}), got {optim['warmup_iters']}"
        )
    if cfg["data"]["synthetic"] is not None and cfg["data"]["train"] is None:
        raise ConfigError("data.train: required when data.synthetic is set")


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------
def build_model(cfg: Mapping[str, Any]):
    """Instantiate ``cfg['model']``; load ``model.weights`` (strict) if given.

    In ``mutual.mode: mutual`` the built model must carry a ``ConfigSpace`` (our
    builders attach one); otherwise the error says to switch ``_target_``.
    """
    from ..checkpoint import load_weights
    from ..core import get_space

    node = dict(cfg["model"])
    weights = node.pop("weights", None)
    model = instantiate(node, _path="model")
    mode = cfg.get("mutual", {}).get("mode", "mutual")
    if mode == "mutual" and get_space(model) is None:
        raise ConfigError(
            f"model._target_: {node['_target_']} built a model without a ConfigSpace, so it cannot be "
            "trained with mutual.mode=mutual; use a mutualnet_video.models builder (e.g. "
            "mutualnet_video.models.create_slimmable_x3d) or set mutual.mode=single"
        )
    if weights:
        load_weights(model, weights, source="model.weights")
    return model


def build_dataset(cfg: Mapping[str, Any], split: str, *, space: Any = None, seed: int | None = None, rank: int = 0,
                  world_size: int = 1, options: Mapping[str, Any] | None = None,
                  required: Mapping[str, Any] | None = None, optional_node: bool = True) -> Any:
    """Instantiate ``data.<split>`` (``None`` if it is not configured and ``optional_node``).

    The one place the engine hands keywords to a dataset callable (the trainer, test_net's
    test and calibration sets, compare_methods). Each is passed only if the callable's
    signature takes it (:func:`accepts_kwarg`):

    * ``space`` (when given), ``seed`` (when given and the node does not set it),
      ``rank`` / ``world_size`` (both, or neither: then an iterable dataset cannot be
      sharded over several processes, a :class:`ConfigError`);
    * ``options``: keywords that override the node's (e.g. ``split="test"``);
    * ``required``: keywords that must be taken (:class:`ConfigError` naming the callable
      otherwise), e.g. ``temporal_clips`` for multi-view testing.
    """
    node = cfg["data"].get(split)
    if node is None:
        if optional_node:
            return None
        raise ConfigError(f"data.{split}: required (a dataset _target_ node)")
    node = dict(node)
    fn = resolve_target(node["_target_"], path=f"data.{split}._target_")
    for key, value in (required or {}).items():
        if not accepts_kwarg(fn, key):
            raise ConfigError(f"data.{split}._target_: {node['_target_']} takes no {key!r}, needed for "
                              f"{key}={value!r} (use e.g. mutualnet_video.data.kinetics_dataset)")
        node[key] = value
    node.update({k: v for k, v in (options or {}).items() if accepts_kwarg(fn, k)})
    extra: dict[str, Any] = {}
    if space is not None and accepts_kwarg(fn, "space"):
        extra["space"] = space
    if seed is not None and "seed" not in node and accepts_kwarg(fn, "seed"):
        extra["seed"] = seed
    shardable = accepts_kwarg(fn, "rank") and accepts_kwarg(fn, "world_size")
    if shardable:
        extra.update(rank=rank, world_size=world_size)
    dataset = instantiate(node, _path=f"data.{split}", **extra)
    from .stream import is_map_style

    if world_size > 1 and not shardable and not is_map_style(dataset):
        raise ConfigError(
            f"data.{split}._target_: {node['_target_']} takes no rank/world_size, so an iterable dataset "
            "cannot be sharded over the DDP processes"
        )
    return dataset
