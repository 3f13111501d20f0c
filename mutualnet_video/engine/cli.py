"""What every command-line tool shares: bad input is one line and exit status 2.

``tools/*.py`` and the 2D projects' ``train_net.py`` parse with :class:`ArgumentParser` and
run their work inside :func:`run_tool`:

* a bad flag, config value, builder argument, data path, checkpoint or budget table prints
  ``<tool>: <file or key>: <problem>`` on stderr and returns 2; nothing is raised;
* ``--debug`` (accepted by every tool) re-raises instead, with the traceback;
* a diverged run (``FloatingPointError``: the NaN guard's message, naming the last good
  checkpoint) prints its one line and returns 1;
* the known third-party deprecation warnings (:data:`mutualnet_video.console.KNOWN_WARNINGS`)
  are not printed while the tool imports and runs (:func:`quiet_imports`; a tool enters it
  before its first import of the library too); logs go to stderr in one format
  (:func:`setup_logging`); ``--quiet`` (accepted by every tool) keeps only the result on
  stdout: no progress bar, no log line below WARNING.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from ..console import quiet_imports, setup_logging

__all__ = ["ArgumentParser", "run_tool", "describe_error", "quiet_imports", "setup_logging"]


def _bad_input_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (a traceback would help nobody): configs, builders,
    data, checkpoints, files. Anything else is a bug and keeps its traceback."""
    from ..checkpoint import CheckpointError
    from ..evaluation import NotCalibratedError
    from .config import ConfigError

    types: list[type[BaseException]] = [ConfigError, CheckpointError, NotCalibratedError, OSError, ValueError,
                                        KeyError, TypeError]
    kinetics = sys.modules.get("mutualnet_video.data.kinetics")  # not imported: none of its errors was raised
    if kinetics is not None and hasattr(kinetics, "DataLoadError"):
        types.append(kinetics.DataLoadError)
    return tuple(types)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line (``<prog>: <problem>``, exit 2)
    and which accepts ``--debug`` (show the traceback of an error instead) and ``--quiet``
    (the tool prints only its result; it calls ``setup_logging(quiet=args.quiet)``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", help="on an error, show the traceback")
        self.add_argument("--quiet", action="store_true", help="print only the result (no progress bar, no log "
                                                               "lines below WARNING)")

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message}", file=sys.stderr)
        raise SystemExit(2)


def describe_error(exc: BaseException) -> str:
    """One line for a bad-input exception: its message, with the file of an ``OSError``."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror.lower()}"
    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def run_tool(tool: str, work: Callable[[], Any], *, debug: bool = False) -> Any:
    """``work()``; a bad-input error becomes one line ``<tool>: <problem>`` on stderr and the
    return value 2 (a ``FloatingPointError`` returns 1). ``debug``: re-raise instead.
    ``work`` runs inside :func:`quiet_imports` (the library imports pytorchvideo lazily)."""
    try:
        with quiet_imports():
            return work()
    except FloatingPointError as exc:
        if debug:
            raise
        print(f"{tool}: {describe_error(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:
        if debug or not isinstance(exc, _bad_input_types()):
            raise
        print(f"{tool}: {describe_error(exc)}", file=sys.stderr)
        return 2

