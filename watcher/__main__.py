"""`python -m watcher` and the `cbr-watcher` console script."""

from __future__ import annotations

import sys

from watcher.cli.main import main as _cli_main


def main() -> None:
    """Run the command line and exit with its code."""
    sys.exit(_cli_main())


if __name__ == "__main__":
    main()
