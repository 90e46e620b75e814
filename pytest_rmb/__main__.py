"""``python -m pytest_rmb compare ...`` (pytest_rmb/compare.py), ``python -m pytest_rmb fetch ...``
(pytest_rmb/fetch.py) and ``python -m pytest_rmb backends`` (pytest_rmb/backends/__init__.py)."""

import sys

USAGE = (
    "usage: python -m pytest_rmb compare A.json B.json [C.json ...] [--html OUT]\n"
    "       python -m pytest_rmb backends\n"
    "       python -m pytest_rmb fetch [--url BASE] [--dest DIR] [--check [DIR]]"
)

if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    # Import only the subcommand asked for: fetch needs neither torch nor the scenario registry.
    if command == "compare":
        from pytest_rmb.compare import main
    elif command == "fetch":
        from pytest_rmb.fetch import main
    elif command == "backends":
        from pytest_rmb.backends import main
    else:
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[2:]))
