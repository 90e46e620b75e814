"""The ``pytest-rmb`` command as users type it: the installed console script and ``python -m pytest_rmb``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pytest_rmb

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(pytest_rmb.__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("pytest-rmb")


def commands() -> list[list[str]]:
    found = [[sys.executable, "-m", "pytest_rmb"]]
    if SCRIPT.exists():
        found.append([str(SCRIPT)])
    return found


def cli(command: list[str], *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run([*command, *args], capture_output=True, text=True, check=False, env=env)


def test_the_console_script_is_installed():
    assert SCRIPT.exists(), f"pip install should have put the pytest-rmb script beside {sys.executable}"


@pytest.mark.parametrize("command", commands(), ids=lambda c: Path(c[-1]).name)
def test_help_lists_every_subcommand_and_a_typo_gets_the_closest(command):
    done = cli(command, "--help")
    assert done.returncode == 0 and done.stderr == ""
    # Each command on a line of its own, with what it does.
    for name in ("compare", "fetch", "backends", "schema", "cache"):
        [line] = [line for line in done.stdout.splitlines() if line.startswith(f"  {name} ")]
        assert len(line.split()) > 3, line
    typo = cli(command, "comapre")
    assert typo.returncode == 2
    assert "pytest-rmb: unknown command 'comapre'; did you mean 'compare'?" in typo.stderr
    assert cli(command).returncode == 2


def test_python_m_pytest_rmb_is_the_same_command_as_the_script():
    if not SCRIPT.exists():
        pytest.skip("the console script is not installed")
    for args in (["--help"], ["cache", "--help"], ["comapre"]):
        module, script = (cli(command, *args) for command in commands())
        assert (module.returncode, module.stdout, module.stderr) == (script.returncode, script.stdout, script.stderr)


@pytest.mark.parametrize("command", commands(), ids=lambda c: Path(c[-1]).name)
def test_subcommands_have_their_own_help(command):
    for name in ("compare", "fetch", "cache"):
        done = cli(command, name, "--help")
        assert done.returncode == 0 and "usage:" in done.stdout and "--" in done.stdout


def test_the_version_is_the_one_pyproject_declares():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    assert pytest_rmb.__version__ == declared
    done = cli(commands()[0], "--version")
    assert done.stdout.strip() == f"pytest-rmb {declared}"


def test_schema_prints_the_shipped_schema():
    done = cli(commands()[0], "schema")
    assert done.returncode == 0
    shipped = json.loads((ROOT / "pytest_rmb" / "summary.schema.json").read_text(encoding="utf-8"))
    assert json.loads(done.stdout) == shipped
