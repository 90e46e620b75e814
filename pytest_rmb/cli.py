"""``pytest-rmb``: the commands around a benchmark run (``python -m pytest_rmb`` is the same).

The run itself is ``pytest --rmb-model ...``; these read or prepare what it reads and writes. Each
subcommand is imported only when asked for: ``fetch`` needs neither torch nor the scenario registry.
"""

from __future__ import annotations

import sys

from pytest_rmb.version import __version__

COMMANDS = {
    "compare": "compare --rmb-json summaries side by side on the samples they share (--html for a page)",
    "leaderboard": "rank many --rmb-json summaries, with significance and the scenario-by-model heatmap",
    "validity": "correlate runs' accuracies with their models' downstream results (--downstream CSV)",
    "fetch": "download RMB's data files and check them against the pinned manifest",
    "backends": "list the --rmb-model schemes installed and the --rmb-model-arg keys of each",
    "schema": "print the JSON Schema of the --rmb-json run summary",
    "cache": "see where the score cache is and what it holds (info), or trim it (prune)",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: pytest-rmb COMMAND [ARGS...]   (COMMAND --help for its own options)", "",
             "Benchmark runs are pytest runs: pytest --rmb-model MODEL [--rmb-data DIR] ...", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    if args[0] == "--version":
        print(f"pytest-rmb {__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command == "compare":
        from pytest_rmb.compare import main as run
    elif command == "leaderboard":
        from pytest_rmb.leaderboard import main as run
    elif command == "validity":
        from pytest_rmb.validity import main as run
    elif command == "fetch":
        from pytest_rmb.fetch import main as run
    elif command == "backends":
        from pytest_rmb.backends import main as run
    elif command == "schema":
        from pytest_rmb.summary import main as run
    elif command == "cache":
        from pytest_rmb.cache import main as run
    else:
        from pytest_rmb.parsers import closest_names

        close = closest_names(command, COMMANDS, count=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        print(f"pytest-rmb: unknown command {command!r}{hint}\n\n{usage()}", file=sys.stderr)
        return 2
    return run(rest)
