"""``python -m pytest_rmb``: the ``pytest-rmb`` command (pytest_rmb/cli.py)."""

import sys

from pytest_rmb.cli import main

if __name__ == "__main__":
    sys.exit(main())
