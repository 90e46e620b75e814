"""``python -m pytest_rmb compare ...``: see pytest_rmb/compare.py."""

import sys

from pytest_rmb.compare import main

USAGE = "usage: python -m pytest_rmb compare A.json B.json [C.json ...] [--html OUT]"

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "compare":
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[2:]))
