"""RMB scenario definitions (one TOML file per task) and the bundled sample dataset.

This folder ships inside the wheel as ``pytest_rmb.scenario_files`` (the registry module is pytest_rmb/scenarios.py) so that the benchmark runs from any
working directory.
"""
