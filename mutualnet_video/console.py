"""The command-line tools' console: known third-party warnings dropped at the edge, one log format.

Only the CLIs (``tools/*.py``, the projects' ``train_net.py``, through
:func:`mutualnet_video.engine.cli.run_tool`) use this; importing it, or the library, changes
no warning filter and no logging handler. Stdlib only, so a tool can enter
:func:`quiet_imports` before it imports the library (``mutualnet_video.engine`` imports fvcore).

* :func:`quiet_imports`: inside it, a warning listed in :data:`KNOWN_WARNINGS` (category, message,
  the module that warns, and a module of the library that triggers it on the call stack) is not
  printed; any other warning is, as usual.
* :func:`setup_logging`: one handler on stderr, one format (``LOG_FORMAT``), INFO, or WARNING
  with ``quiet`` (also when the root logger has other handlers); it writes through
  ``tqdm.write`` while a progress bar is open.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["KnownWarning", "KNOWN_WARNINGS", "quiet_imports", "is_known_warning", "setup_logging", "LOG_FORMAT"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass(frozen=True)
class KnownWarning:
    """A third-party warning the CLIs do not print.

    ``message``: regex matched at the start of the text; ``module``: the module that issues it
    (its file, as the warning reports it); ``triggered_by``: module prefixes, one of which must be
    on the call stack (the library whose code calls the deprecated API).
    """

    category: type[Warning]
    message: str
    module: str
    triggered_by: tuple[str, ...]
    source: str = ""


#: fvcore 0.1.5 and pytorchvideo 0.1.5 apply ``torch.jit.script`` / ``script_method`` at import
#: time; torch >= 2.10 deprecates both with a FutureWarning per call site.
KNOWN_WARNINGS: tuple[KnownWarning, ...] = (
    KnownWarning(FutureWarning, r"`torch\.jit\.script` is deprecated", "torch.jit._script", ("fvcore.",),
                 "fvcore/nn/focal_loss.py: sigmoid_focal_loss_jit = torch.jit.script(...) (imported by "
                 "mutualnet_video.evaluation.flops through fvcore.nn)"),
    KnownWarning(FutureWarning, r"`torch\.jit\.script_method` is deprecated", "torch.jit._script",
                 ("pytorchvideo.",),
                 "pytorchvideo/transforms/transforms.py: @torch.jit.script_method on its transforms (imported by "
                 "mutualnet_video.data)"),
)


def _module_file(module: str) -> str:
    return module.replace(".", "/") + ".py"


def is_known_warning(message: Warning | str, category: type[Warning], filename: str,
                     known: tuple[KnownWarning, ...] = KNOWN_WARNINGS, *, stack_modules: tuple[str, ...] = ()) -> bool:
    """Whether a warning is one of ``known``: same category (or a subclass), message, issuing
    module (``filename``) and a triggering module among ``stack_modules`` (module names)."""
    text = str(message)
    path = filename.replace("\\", "/")
    for k in known:
        if (issubclass(category, k.category) and re.match(k.message, text) and path.endswith(_module_file(k.module))
                and any(m == p.rstrip(".") or m.startswith(p) for m in stack_modules for p in k.triggered_by)):
            return True
    return False


def _stack_modules() -> tuple[str, ...]:
    frame = sys._getframe(2)
    names = []
    while frame is not None:
        names.append(frame.f_globals.get("__name__", ""))
        frame = frame.f_back
    return tuple(names)


@contextlib.contextmanager
def quiet_imports(known: tuple[KnownWarning, ...] = KNOWN_WARNINGS) -> Iterator[None]:
    """Inside, the ``known`` warnings are not shown; every other warning is. The filters and
    ``warnings.showwarning`` are restored on exit (``warnings.catch_warnings``)."""
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if is_known_warning(message, category, filename, known, stack_modules=_stack_modules()):
                return
            shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


class _Handler(logging.StreamHandler):
    """stderr; through ``tqdm.write`` while a tqdm bar is open (the line does not break the bar)."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm = sys.modules.get("tqdm")
        bars = getattr(getattr(tqdm, "tqdm", None), "_instances", None)
        if not bars:
            super().emit(record)
            return
        try:
            tqdm.tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 (logging must not raise)
            self.handleError(record)


def setup_logging(*, quiet: bool = False) -> None:
    """The CLIs' logging: INFO (``quiet``: WARNING and above) to stderr in :data:`LOG_FORMAT`.

    Idempotent (a second call only changes the level); if the root logger already has handlers
    that are not ours (an embedding application, pytest), they are kept, and so is the root
    level, except that ``quiet`` raises it to WARNING if it is lower.
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _Handler)]
    if root.handlers and not ours:
        if quiet and root.level < logging.WARNING:
            root.setLevel(logging.WARNING)
        return
    if not ours:
        handler = _Handler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(logging.WARNING if quiet else logging.INFO)
