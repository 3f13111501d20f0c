#!/usr/bin/env python
"""Print the versions of Python and of the packages this project works with.

    python tools/versions.py [--json]

A Markdown table (package, version or "not installed", what it is used for here) after the
platform line, as in the README's compatibility table; ``--json``: one JSON object. The
versions come from the installed distributions' metadata
(:func:`mutualnet_video.compat.package_versions`); none of the packages is imported for it.
"""

from __future__ import annotations

import json
import os
import platform
import sys

try:
    import mutualnet_video  # noqa: F401
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mutualnet_video.console import quiet_imports


def main(argv: list[str] | None = None) -> int:
    with quiet_imports():  # fvcore / pytorchvideo's import-time torch.jit deprecation warnings
        from mutualnet_video.compat import package_versions, versions_table
        from mutualnet_video.engine.cli import ArgumentParser, run_tool, setup_logging

    p = ArgumentParser(prog="versions", description=__doc__)
    p.add_argument("--json", action="store_true", help="a JSON object instead of a Markdown table")
    args = p.parse_args(argv)
    setup_logging(quiet=args.quiet)

    def work() -> int:
        versions = package_versions()
        if args.json:
            print(json.dumps({**versions, "platform": platform.platform()}, indent=1))
        else:
            print(f"{platform.platform()}, {platform.machine()}\n")
            print(versions_table(versions))
        return 0

    return run_tool("versions", work, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
