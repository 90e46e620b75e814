"""The ``--rmb-*`` options: declaration, parse-time validation, and resolution into RunSettings."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_rmb.backends import Backend, BackendError, ModelSettings, backend_for, installed_backends, model_args
from pytest_rmb.data import BON, PAIRWISE, data_file, sample_dataset
from pytest_rmb.gate import Gate, GateError, check_metric, load_baseline, parse_gate
from pytest_rmb.parsers import (
    DEVICE_HELP,
    SettingError,
    choice,
    device_name,
    dtype_name,
    fraction,
    non_negative_int,
    positive_int,
)
from pytest_rmb.scenarios import Scenario, registry
from pytest_rmb.user_sets import UserSetsError, load_user_scenarios, user_sources

DATA_ENV = "RMB_DATA"
SAMPLE = "sample"
# --rmb-data rmb: the copy `python -m pytest_rmb fetch` verified into the user cache.
FETCHED = "rmb"
PREFIX_SHARING_MODES = ("auto", "on", "off")
prefix_sharing_mode = choice(*PREFIX_SHARING_MODES)


def gate_expression(text: str) -> Gate:
    # Scenario and task names are checked in resolve(): the user's scenarios are not known yet.
    try:
        return parse_gate(text, None, None)
    except GateError as exc:
        raise SettingError(str(exc)) from None


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("rmb", "reward-model benchmark (RMB)")
    group.addoption(
        "--rmb-model",
        metavar="NAME",
        help="run the RMB benchmark on this reward model: a built-in baseline (length, random), a "
        "Hugging Face id or checkpoint (hf: optional), python:package.module:factory, or SCHEME:NAME "
        "of any installed backend (python -m pytest_rmb backends lists them). Without it the plugin "
        "does nothing.",
    )
    group.addoption(
        "--rmb-model-arg", action="append", default=None, metavar="KEY=VALUE",
        help="a setting of the model's backend, repeatable (python -m pytest_rmb backends lists each "
        "backend's keys; ini rmb_model_args, one per line)",
    )
    group.addoption(
        "--rmb-data",
        metavar="PATH",
        help=f"RMB_dataset folder in the upstream layout, or 'sample' for the bundled sample "
        f"(also env {DATA_ENV}, ini rmb_data)",
    )
    group.addoption("--rmb-json", metavar="PATH", help="write the summary (sections, tasks, scenarios) as JSON")
    group.addoption("--rmb-jsonl", metavar="PATH", help="write one JSON line per sample: scores and outcome")
    group.addoption(
        "--rmb-seed",
        type=non_negative_int,
        default=None,
        metavar="N",
        help="seed for the random baseline and the bootstrap intervals (default 0; ini rmb_seed)",
    )
    group.addoption(
        "--rmb-batch-size",
        type=positive_int,
        default=None,
        metavar="N",
        help="most requests sent to the model in one call (default: the model's own, else 64; "
        "ini rmb_batch_size)",
    )
    group.addoption(
        "--rmb-bootstrap",
        type=positive_int,
        default=None,
        metavar="N",
        help="bootstrap resamples for the 95%% intervals (default 1000; ini rmb_bootstrap)",
    )
    group.addoption(
        "--rmb-show-scenarios",
        action="store_true",
        default=False,
        help="print the per-scenario table (also shown with -v)",
    )
    group.addoption(
        "--rmb-show-misses",
        type=non_negative_int,
        default=10,
        metavar="N",
        help="list at most N missed samples, one line each (default 10; all are in --rmb-jsonl)",
    )
    group.addoption("--rmb-revision", metavar="REV", help="model revision: branch, tag or commit (ini rmb_revision)")
    group.addoption(
        "--rmb-trust-remote-code",
        action="store_true",
        default=None,
        help="allow the model's own Python code from its repository to run (off by default; "
        "ini rmb_trust_remote_code)",
    )
    group.addoption(
        "--rmb-device", type=device_name, metavar="DEVICE",
        help=f"{DEVICE_HELP}; auto is CUDA when available (default auto; ini rmb_device)",
    )
    group.addoption(
        "--rmb-dtype", type=dtype_name, metavar="DTYPE",
        help="auto|float32|bfloat16|float16; auto is bfloat16 on a CUDA device that supports it, "
        "float32 on CPU (default auto; ini rmb_dtype)",
    )
    group.addoption(
        "--rmb-max-length", type=positive_int, metavar="N",
        help="token limit per text; longer texts lose their start (default: the smaller of the "
        "model's limit and 4096; ini rmb_max_length)",
    )
    group.addoption(
        "--rmb-batch-tokens", type=positive_int, metavar="N",
        help="token budget per batch, padding included (default: 16384 on a GPU, 4096 on CPU; "
        "ini rmb_batch_tokens)",
    )
    group.addoption(
        "--rmb-attn-implementation", metavar="NAME",
        help="attention implementation passed to transformers, e.g. sdpa, flash_attention_2, eager "
        "(ini rmb_attn_implementation)",
    )
    group.addoption(
        "--rmb-chat-template", metavar="FILE",
        help="Jinja chat template for a tokenizer that has none (ini rmb_chat_template)",
    )
    group.addoption(
        "--rmb-reward-index", type=non_negative_int, metavar="N",
        help="which output logit is the reward, for a model with several labels (ini rmb_reward_index)",
    )
    group.addoption(
        "--rmb-gate", action="append", type=gate_expression, default=None, metavar="EXPR",
        help="fail the run unless METRIC OP NUMBER holds, e.g. 'overall>=0.7', "
        "'helpfulness.bon>0.6', 'task:code.pairwise>=0.75', 'scenario:chat/discussion.bon>=0.5'; "
        "repeatable (ini rmb_gates, one per line)",
    )
    group.addoption(
        "--rmb-gate-allow-empty", action="store_true", default=False,
        help="a gate on a metric with no samples in this run is not evaluated instead of failing",
    )
    group.addoption(
        "--rmb-baseline", metavar="FILE",
        help="an earlier --rmb-json summary: fail when overall or a section dropped by more than "
        "--rmb-max-drop and significantly (paired bootstrap over shared samples)",
    )
    group.addoption(
        "--rmb-max-drop", type=fraction, metavar="D",
        help="allowed accuracy drop against the baseline (default 0.01; ini rmb_max_drop)",
    )
    group.addoption(
        "--rmb-alpha", type=fraction, metavar="A",
        help="significance level of the baseline comparison (default 0.05; ini rmb_alpha)",
    )
    group.addoption("--rmb-markdown", metavar="PATH", help="write the tables and gates as GitHub-flavoured Markdown")
    group.addoption(
        "--rmb-cache-dir", metavar="DIR",
        help="where scores are cached between runs, one file per model fingerprint "
        "(default .rmb_cache under the rootdir; ini rmb_cache_dir)",
    )
    group.addoption("--rmb-no-cache", action="store_true", default=False, help="neither read nor write the score cache")
    group.addoption(
        "--rmb-limit", type=positive_int, default=None, metavar="N",
        help="quick smoke run: score at most N samples per scenario and kind, drawn with --rmb-seed, "
        "the same for every model (ini rmb_limit)",
    )
    group.addoption(
        "--rmb-device-map", choices=("auto",), default=None,
        help="spread a model too large for one GPU over all visible GPUs (transformers device_map); "
        "single process only, not with -n",
    )
    group.addoption(
        "--rmb-no-null-baseline", action="store_true", default=False,
        help="do not show the length baseline's accuracy on the same samples beside the model's "
        "(ini rmb_null_baseline = false)",
    )
    parser.addini("rmb_null_baseline", "show the length baseline beside every score", type="bool", default=True)
    parser.addini("rmb_model_args", "backend settings, one KEY=VALUE per line", type="linelist", default=[])
    parser.addini("rmb_cache_dir", "score cache directory (relative to the ini file)", default="")
    parser.addini("rmb_gates", "threshold gates, one METRIC OP NUMBER per line", type="linelist", default=[])
    parser.addini("rmb_max_drop", "allowed accuracy drop against the baseline", default="0.01")
    parser.addini("rmb_alpha", "significance level of the baseline comparison", default="0.05")
    parser.addini("rmb_data", "RMB_dataset folder (relative to the ini file) or 'sample'")
    parser.addini("rmb_seed", "seed for the random baseline and bootstrap intervals", default="0")
    parser.addini("rmb_batch_size", "most requests per model call (default 64, or the model's own)", default="")
    parser.addini("rmb_bootstrap", "bootstrap resamples for the 95% intervals", default="1000")
    parser.addini("rmb_revision", "model revision", default="")
    parser.addini("rmb_trust_remote_code", "allow the model's own code to run", type="bool", default=False)
    parser.addini("rmb_device", DEVICE_HELP, default="auto")
    parser.addini("rmb_dtype", "auto|float32|bfloat16|float16", default="auto")
    parser.addini("rmb_max_length", "token limit per text", default="")
    parser.addini("rmb_batch_tokens", "token budget per batch (default: the scorer's own)", default="")
    parser.addini("rmb_attn_implementation", "attention implementation for transformers", default="")
    parser.addini("rmb_chat_template", "Jinja chat template file (relative to the ini file)", default="")
    parser.addini("rmb_reward_index", "which output logit is the reward", default="")
    parser.addini("rmb_limit", "at most this many samples per scenario and kind (smoke runs)", default="")
    group.addoption(
        "--rmb-prefix-sharing", choices=PREFIX_SHARING_MODES, default=None,
        help="score each conversation once and its answers as continuations of it (decoder models "
        "that take a cache): auto uses it when the model supports it and the texts share enough "
        "(default auto; ini rmb_prefix_sharing)",
    )
    parser.addini("rmb_prefix_sharing", "auto|on|off: score each conversation prefix once", default="auto")
    group.addoption(
        "--rmb-scenarios", action="append", default=None, metavar="TOML",
        help="your own preference sets as extra scenarios: a TOML file of [[scenario]] tables (name, "
        "kind, path to JSONL rows, optional task, goal, markers); repeatable. Without RMB data (--rmb-data, "
        f"env {DATA_ENV}, ini rmb_data) only these run (ini rmb_scenarios, one per line)",
    )
    parser.addini("rmb_scenarios", "TOML files of your own scenarios (relative to the ini file), one per line",
                  type="linelist", default=[])
    group.addoption(
        "--rmb-self-check", type=non_negative_int, default=None, metavar="N",
        help="after scoring, re-score N seeded texts one at a time and compare with their batched scores; "
        "a difference above the dtype's tolerance is a warning, and fails a gated run (default 16, 0 "
        "turns it off; models with a score cache only; ini rmb_self_check)",
    )
    parser.addini("rmb_self_check", "texts re-scored alone to check batch invariance (0: off)", default="16")
    group.addoption(
        "--rmb-show-input", action="append", default=None, metavar="UID",
        help="print what the model reads for the sample(s) with this uid (or SCENARIO_ID/UID): the "
        "rendered text, the tokens, the truncation and where the reward is read; repeatable",
    )


@dataclass(frozen=True)
class RunSettings:
    scorer: ModelSettings
    backend: Backend
    dataset: Path | None  # None: no RMB data, only the user's own scenarios (--rmb-scenarios)
    dataset_label: str
    json_path: Path | None
    jsonl_path: Path | None
    batch_size: int | None  # None: the model's own, else 64
    batch_tokens: int | None  # None: the scorer's preferred budget
    bootstrap: int
    show_scenarios: bool
    show_misses: int
    markdown_path: Path | None
    cache_dir: Path | None
    gates: tuple[Gate, ...]
    allow_empty_gates: bool
    baseline: dict | None
    baseline_path: Path | None
    max_drop: float
    alpha: float
    null_baseline: bool = True  # show the length baseline beside the model's accuracies
    limit: int | None = None  # --rmb-limit: samples per scenario and kind; None for all
    self_check: int = 16  # --rmb-self-check: texts re-scored alone after the run; 0 for none
    show_input: tuple[str, ...] = ()  # --rmb-show-input: uids (or scenario/uid) whose input is printed
    # The run's scenarios, in collection order: RMB's (when there is RMB data) and the user's own
    # (--rmb-scenarios). Everything that asks "which scenarios?" asks this, never the registry.
    scenarios: tuple[Scenario, ...] = ()


def resolve(config: pytest.Config) -> RunSettings | None:
    """The run's settings, or None when no --rmb-model was given (the plugin stays idle)."""
    model = config.getoption("rmb_model")
    if not model:
        return None
    backend, args = _backend(config, model)
    user_scenarios = _user_scenarios(config)
    dataset, label = _dataset(config, optional=bool(user_scenarios))
    if dataset is None:
        label = ", ".join(user_sources(user_scenarios))
    scenarios = tuple(sorted((*(registry() if dataset is not None else ()), *user_scenarios), key=lambda s: s.id))
    trust = config.getoption("rmb_trust_remote_code")
    scorer = ModelSettings(
        model=model,
        args=args,
        seed=_setting(config, "rmb_seed", non_negative_int),
        revision=_setting(config, "rmb_revision", str),
        trust_remote_code=bool(config.getini("rmb_trust_remote_code") if trust is None else trust),
        device=_setting(config, "rmb_device", device_name),
        dtype=_setting(config, "rmb_dtype", dtype_name),
        max_length=_setting(config, "rmb_max_length", positive_int),
        attn_implementation=_setting(config, "rmb_attn_implementation", str),
        chat_template=_chat_template(config),
        reward_index=_setting(config, "rmb_reward_index", non_negative_int),
        device_map=_device_map(config),
        worker_index=_worker_index(config),
        prefix_sharing=_setting(config, "rmb_prefix_sharing", prefix_sharing_mode) or "auto",
    )
    outputs = {name: _output(config, name) for name in ("rmb_json", "rmb_jsonl", "rmb_markdown")}
    for name, path in outputs.items():
        if path is not None:
            check_writable(path, "--" + name.replace("_", "-"))
    return RunSettings(
        scorer=scorer,
        backend=backend,
        dataset=dataset,
        dataset_label=label,
        json_path=outputs["rmb_json"],
        jsonl_path=outputs["rmb_jsonl"],
        batch_size=_setting(config, "rmb_batch_size", positive_int),
        batch_tokens=_setting(config, "rmb_batch_tokens", positive_int),
        bootstrap=_setting(config, "rmb_bootstrap", positive_int),
        show_scenarios=config.getoption("rmb_show_scenarios") or config.getoption("verbose", 0) > 0,
        show_misses=config.getoption("rmb_show_misses"),
        markdown_path=outputs["rmb_markdown"],
        cache_dir=_cache_dir(config, dataset),
        gates=_gates(config, (*registry(), *user_scenarios)),
        allow_empty_gates=config.getoption("rmb_gate_allow_empty"),
        baseline=_baseline(config),
        baseline_path=_output(config, "rmb_baseline"),
        max_drop=_setting(config, "rmb_max_drop", fraction),
        alpha=_setting(config, "rmb_alpha", fraction),
        limit=_setting(config, "rmb_limit", positive_int),
        null_baseline=not config.getoption("rmb_no_null_baseline") and bool(config.getini("rmb_null_baseline")),
        self_check=_setting(config, "rmb_self_check", non_negative_int),
        show_input=tuple(config.getoption("rmb_show_input") or ()),
        scenarios=scenarios,
    )


def _setting(config: pytest.Config, name: str, parse):
    """The command-line value, else the ini value parsed like it; None when both are empty."""
    value = config.getoption(name)
    if value is not None:
        return value
    text = config.getini(name)
    if text == "":
        return None
    try:
        return parse(text)
    except argparse.ArgumentTypeError as exc:
        raise pytest.UsageError(f"ini option {name}: {exc}") from None


def _ini_dir(config: pytest.Config) -> Path:
    """Where relative paths in ini options start: the ini file's folder."""
    return config.inipath.parent if config.inipath else config.rootpath


def _output(config: pytest.Config, name: str) -> Path | None:
    given = config.getoption(name)
    return config.invocation_params.dir / given if given else None


def check_writable(path: Path, option: str) -> None:
    """Fail before any scoring, not after it, when an output file cannot be written."""
    if path.is_dir():
        raise pytest.UsageError(f"pytest-rmb: {option} {path}: is a directory; give a file path")
    parent = next((p for p in (path.parent, *path.parent.parents) if p.exists()), None)
    if parent is None or not parent.is_dir():
        raise pytest.UsageError(f"pytest-rmb: {option} {path}: {parent} is not a directory")
    target = path if path.exists() else parent
    if not os.access(target, os.W_OK):
        raise pytest.UsageError(f"pytest-rmb: {option} {path}: {target} is not writable")


def _backend(config: pytest.Config, spec: str) -> tuple[Backend, dict]:
    """The spec's backend and its validated settings: usage errors before anything loads."""
    given = [*config.getini("rmb_model_args"), *(config.getoption("rmb_model_arg") or [])]
    extra = [backend for found in config.hook.pytest_rmb_add_backends(config=config) for backend in found or ()]
    try:
        backend = backend_for(spec, installed_backends(extra))
        return backend, backend.parse_args(model_args(given))
    except BackendError as exc:
        raise pytest.UsageError(f"pytest-rmb: {exc}") from None


def _device_map(config: pytest.Config) -> str | None:
    device_map = config.getoption("rmb_device_map")
    if device_map and (getattr(config.option, "numprocesses", None) or hasattr(config, "workerinput")):
        raise pytest.UsageError(
            "pytest-rmb: --rmb-device-map auto spreads one model over every GPU of one process; "
            "it cannot be combined with -n (pytest-xdist gives each worker its own GPU instead)"
        )
    return device_map


def _worker_index(config: pytest.Config) -> int | None:
    worker = getattr(config, "workerinput", {}).get("workerid", "")
    return int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else None


def _cache_dir(config: pytest.Config, dataset: Path | None) -> Path | None:
    if config.getoption("rmb_no_cache"):
        return None
    given, source = config.getoption("rmb_cache_dir"), "--rmb-cache-dir"
    if given:
        return _outside_dataset(config.invocation_params.dir / given, dataset, f"{source} {given}")
    given, source = config.getini("rmb_cache_dir"), "ini option rmb_cache_dir"
    if given:
        return _outside_dataset(_ini_dir(config) / given, dataset, f"{source} {given}")
    # The rootdir is the project only when pytest found an ini file there; otherwise it may be a
    # far ancestor (path options count when pytest picks it), so use where pytest was started.
    default = (config.rootpath if config.inipath else config.invocation_params.dir) / ".rmb_cache"
    # Started inside the data folder: no folder of the user's to put it in, and never the data's.
    return None if dataset is not None and is_inside(default, dataset) else default


def _gates(config: pytest.Config, scenarios: tuple[Scenario, ...]) -> tuple[Gate, ...]:
    """Every gate, its scenario or task checked against RMB's and the user's (a gate on RMB in a
    run of the user's sets alone is no typo: it has no samples, and says so)."""
    scenario_ids, task_ids = {s.id for s in scenarios}, {s.task_id for s in scenarios}
    given = [(gate, "pytest-rmb: argument --rmb-gate") for gate in config.getoption("rmb_gate") or []]
    for line in config.getini("rmb_gates"):
        try:
            given.append((gate_expression(line), "ini option rmb_gates"))
        except argparse.ArgumentTypeError as exc:
            raise pytest.UsageError(f"ini option rmb_gates: {exc}") from None
    for gate, source in given:
        try:
            check_metric(gate.metric, scenario_ids, task_ids, f"{gate.metric}{gate.op}{gate.bar:g}")
        except GateError as exc:
            raise pytest.UsageError(f"{source}: {exc}") from None
    return tuple(gate for gate, _ in given)


def _baseline(config: pytest.Config) -> dict | None:
    path = _output(config, "rmb_baseline")
    if path is None:
        return None
    try:
        return load_baseline(path)
    except GateError as exc:
        raise pytest.UsageError(f"pytest-rmb: {exc}") from None


def _chat_template(config: pytest.Config) -> str | None:
    given = config.getoption("rmb_chat_template")
    base = config.invocation_params.dir
    if not given and config.getini("rmb_chat_template"):
        given = config.getini("rmb_chat_template")
        base = _ini_dir(config)
    if not given:
        return None
    path = (base / given).resolve()
    if not path.is_file():
        raise pytest.UsageError(f"pytest-rmb: --rmb-chat-template {given}: no such file ({path})")
    return str(path)


def _dataset(config: pytest.Config, optional: bool = False) -> tuple[Path | None, str]:
    """The RMB data folder and its label; (None, "") when ``optional`` (the user's own scenarios
    are given) and no data is configured anywhere."""
    given = config.getoption("rmb_data")
    if optional and not given and not os.environ.get(DATA_ENV) and not config.getini("rmb_data"):
        return None, ""
    return _find_dataset(config, given)


def _user_scenarios(config: pytest.Config) -> tuple[Scenario, ...]:
    """The scenarios of --rmb-scenarios and ini rmb_scenarios (ini files first), sorted by id."""
    files = [_ini_dir(config) / line for line in config.getini("rmb_scenarios")]
    files += [config.invocation_params.dir / given for given in config.getoption("rmb_scenarios") or []]
    unique = list(dict.fromkeys(path.resolve() for path in files))
    try:
        return load_user_scenarios(unique, registry())
    except UserSetsError as exc:
        raise pytest.UsageError(f"pytest-rmb: --rmb-scenarios: {exc}") from None


def _find_dataset(config: pytest.Config, given: str | None) -> tuple[Path, str]:
    """The data folder for a ``--rmb-data`` value (None: env, then ini) and its label."""
    base, source = config.invocation_params.dir, "--rmb-data"
    if not given and os.environ.get(DATA_ENV):
        given, source = os.environ[DATA_ENV], f"${DATA_ENV}"
    if not given and config.getini("rmb_data"):
        given, source = config.getini("rmb_data"), "ini option rmb_data"
        base = _ini_dir(config)
    if not given or (given == FETCHED and not (base / given).is_dir()):
        from pytest_rmb.fetch import cached_dataset, default_dest

        fetched = cached_dataset()
        if fetched is not None:
            return fetched, str(fetched)
        if given == FETCHED:
            raise pytest.UsageError(
                f"pytest-rmb: --rmb-data {FETCHED}: no fetched copy of RMB under {default_dest()}; "
                "get one with `python -m pytest_rmb fetch`, or give --rmb-data PATH"
            )
        raise pytest.UsageError(
            "pytest-rmb: no RMB data configured. Get the benchmark with `python -m pytest_rmb fetch` "
            f"(then --rmb-data {FETCHED} or nothing at all), point at a checkout of the RMB repository's "
            f"RMB_dataset folder with --rmb-data PATH (or env {DATA_ENV}, or ini rmb_data), "
            "or try the bundled sample with --rmb-data sample."
        )
    if given == SAMPLE:
        return sample_dataset(), SAMPLE
    path = (base / given).resolve()
    if not path.is_dir():
        raise pytest.UsageError(f"pytest-rmb: {source} {given}: no such directory ({path})")
    # Accept the repository root as well as its RMB_dataset folder.
    if (path / "RMB_dataset").is_dir() and not (path / "Pairwise_set").is_dir():
        path = path / "RMB_dataset"
    if not (path / "Pairwise_set").is_dir() and not (path / "BoN_set").is_dir():
        raise pytest.UsageError(
            f"pytest-rmb: {source} {given}: {path} has neither Pairwise_set/ nor BoN_set/; "
            "expected RMB's upstream layout (RMB_dataset/Pairwise_set/..., RMB_dataset/BoN_set/...)"
        )
    # Some absent files are a partial copy (each is skipped and named); none at all is a mistake.
    wanted = [scenario.file(kind) for scenario in registry() for kind in (PAIRWISE, BON)]
    if not any(data_file(path, relative) for relative in wanted):
        raise pytest.UsageError(
            f"pytest-rmb: {source} {given}: no RMB data file in {path}; expected the JSON files of "
            f"RMB's upstream layout there, e.g. {path / wanted[0]} or {path / wanted[-1]} "
            f"({len(wanted)} files in all)"
        )
    return path, str(path)


def sample_limit(config: pytest.Config) -> tuple[int, int] | None:
    """(samples per scenario and kind, seed) of ``--rmb-limit``; None for a full run."""
    limit = _setting(config, "rmb_limit", positive_int)
    if limit is None:
        return None
    return limit, _setting(config, "rmb_seed", non_negative_int)


def is_inside(path: Path, folder: Path) -> bool:
    """True when ``path`` is ``folder`` or lies below it, symbolic links resolved."""
    return path.resolve().is_relative_to(folder.resolve())


def _outside_dataset(path: Path, dataset: Path | None, source: str) -> Path:
    if dataset is not None and is_inside(path, dataset):
        raise pytest.UsageError(
            f"pytest-rmb: {source}: {path} is inside the data folder {dataset}; pytest-rmb never "
            "writes into the data folder, choose a cache folder outside it"
        )
    return path


def cacheprovider_writes_into_dataset(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> bool:
    """True when pytest's own cache (``.pytest_cache``) would be written into the RMB data folder.

    That happens when pytest is started inside the data folder, or below it (with no ini file
    pytest takes the common ancestor of the invocation dir and the path arguments, and counts the
    value of ``--rmb-data`` as one). Called before the cache exists, on the known arguments only.
    """
    if not early_config.pluginmanager.has_plugin("cacheprovider"):
        return False
    namespace = parser.parse_known_args(args)
    if not getattr(namespace, "rmb_model", None):
        return False
    try:
        dataset, _ = _find_dataset(early_config, getattr(namespace, "rmb_data", None))
    except pytest.UsageError:
        return False  # reported by pytest_configure
    cache_dir = Path(os.path.expandvars(os.path.expanduser(early_config.getini("cache_dir"))))
    return is_inside(early_config.rootpath / cache_dir, dataset)
