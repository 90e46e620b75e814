"""The ``--rmb-*`` options: declared once, in one table, and resolved into RunSettings.

Each option is one :class:`Option` in ``OPTIONS``: its flag, parser, default, help, section and ini
mirror. Everything else is generated from that table, so that nothing can drift apart: the pytest
options and ini settings (``add_options``), the value lookup (``setting``: command line first, then
the ini file, parsed by the same parser), the options reference of the docs (``options_reference``)
and the shared flags of ``pytest-rmb compare`` (``add_argument``). How text becomes a value
lives in parsers.py; what a value means for the run (paths, data, gates, the backend) is resolved here.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from pytest_rmb.backends import Backend, BackendError, ModelSettings, backend_for, installed_backends, model_args
from pytest_rmb.cache import default_cache_dir
from pytest_rmb.data import BON, PAIRWISE, data_file, sample_dataset
from pytest_rmb.gate import Gate, GateError, check_metric, load_baseline, parse_gate
from pytest_rmb.parsers import (
    DEVICE_HELP,
    SettingError,
    choice,
    closest_names,
    device_name,
    dtype_name,
    fraction,
    non_negative_int,
    positive_int,
    significance_level,
)
from pytest_rmb.scenarios import Scenario, registry
from pytest_rmb.user_sets import UserSetsError, load_user_scenarios, user_sources

DATA_ENV = "RMB_DATA"
# The words --rmb-data (env, ini) takes besides a folder. A word always means its data, whatever
# folders the directory holds, so that one command runs on one dataset wherever it is typed; a
# folder of the same name is written ./sample or ./rmb.
SAMPLE = "sample"  # the sample bundled with the plugin
FETCHED = "rmb"  # the copy `pytest-rmb fetch` verified into the user cache
DATA_WORDS = (SAMPLE, FETCHED)
PREFIX_SHARING_MODES = ("auto", "on", "off")
prefix_sharing_mode = choice(*PREFIX_SHARING_MODES)
# An ini default left to pytest ("" for a string, [] for a linelist).
NOT_SET: Any = object()


def gate_expression(text: str) -> Gate:
    # Scenario and task names are checked in resolve(): the user's scenarios are not known yet.
    try:
        return parse_gate(text, None, None)
    except GateError as exc:
        raise SettingError(str(exc)) from None


# Sections of the options reference, in its order; --help keeps one group, in the table's order.
MODEL, DATA, OUTPUT, STATISTICS, GATES, ENGINE = (
    "Model", "Data and scenarios", "Output", "Statistics", "Gates and baselines", "Scoring engine and cache",
)
SECTIONS = (MODEL, DATA, OUTPUT, STATISTICS, GATES, ENGINE)


@dataclass(frozen=True)
class Ini:
    """The ini mirror of an option: what a project pins in its pytest.ini or pyproject.toml."""

    name: str
    help: str
    type: Literal["string", "bool", "linelist"] = "string"
    default: Any = NOT_SET  # NOT_SET: pytest's own ("" for a string, [] for a linelist)


@dataclass(frozen=True)
class Option:
    """One ``--rmb-*`` option: its command line, its ini mirror and its place in the reference.

    ``parse`` validates the command-line text at parse time (argparse's ``type=``) and the ini text
    alike. An option with an ini mirror defaults to None on the command line, so that "not given"
    can fall back to the ini value, whose default is then the option's.
    """

    flag: str
    section: str
    help: str
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None  # argparse checks these itself, in its own words
    action: str | None = None
    const: Any = None
    default: Any = None
    dest: str | None = None  # None: the flag's, --rmb-seed -> rmb_seed
    ini: Ini | None = None

    @property
    def name(self) -> str:
        return self.dest or self.flag.removeprefix("--").replace("-", "_")

    @property
    def takes_value(self) -> bool:
        return self.action not in ("store_true", "store_const")

    @property
    def default_value(self) -> Any:
        """The value a run gets when neither the command line nor an ini file gives one."""
        if self.ini is not None and self.ini.type == "string" and self.ini.default not in (NOT_SET, ""):
            return self.parse(self.ini.default) if self.parse else self.ini.default
        return self.default

    def argparse_kwargs(self) -> dict[str, Any]:
        given = {
            "action": self.action,
            "type": None if self.choices else self.parse,
            "choices": self.choices,
            "const": self.const,
            "metavar": self.metavar,
            "dest": self.dest,
        }
        # The default always goes in: None must stay None for a store_true flag with an ini mirror.
        return {key: value for key, value in given.items() if value is not None} | {
            "default": self.default, "help": self.help}


OPTIONS: tuple[Option, ...] = (
    Option(
        "--rmb-model", MODEL, metavar="NAME",
        help="run the RMB benchmark on this reward model: a built-in baseline (length, random), a "
        "Hugging Face id or checkpoint (hf: optional), python:package.module:factory, or SCHEME:NAME "
        "of any installed backend (pytest-rmb backends lists them). Without it the plugin "
        "does nothing.",
    ),
    Option(
        "--rmb-model-arg", MODEL, action="append", metavar="KEY=VALUE",
        help="a setting of the model's backend, repeatable (pytest-rmb backends lists each "
        "backend's keys; ini rmb_model_args, one per line)",
        ini=Ini("rmb_model_args", "backend settings, one KEY=VALUE per line", type="linelist", default=[]),
    ),
    Option(
        "--rmb-data", DATA, metavar="PATH",
        help=f"RMB_dataset folder in the upstream layout, or one of two words that mean the same data "
        f"wherever pytest runs: '{SAMPLE}' (the bundled sample, for trying the tool) and '{FETCHED}' (the copy "
        f"`pytest-rmb fetch` verified). A folder named like a word is ./{SAMPLE} or ./{FETCHED}. Also env "
        f"{DATA_ENV}, ini rmb_data; without any, the fetched copy",
        ini=Ini("rmb_data", f"RMB_dataset folder (relative to the ini file), '{SAMPLE}' or '{FETCHED}'"),
    ),
    Option("--rmb-json", OUTPUT, metavar="PATH", help="write the summary (sections, tasks, scenarios) as JSON"),
    Option("--rmb-jsonl", OUTPUT, metavar="PATH", help="write one JSON line per sample: scores and outcome"),
    Option(
        "--rmb-seed", STATISTICS, parse=non_negative_int, metavar="N",
        help="seed for the random baseline and the bootstrap intervals (default 0; ini rmb_seed)",
        ini=Ini("rmb_seed", "seed for the random baseline and bootstrap intervals", default="0"),
    ),
    Option(
        "--rmb-batch-size", ENGINE, parse=positive_int, metavar="N",
        help="most requests sent to the model in one call (default: the model's own, else 64; "
        "ini rmb_batch_size)",
        ini=Ini("rmb_batch_size", "most requests per model call (default 64, or the model's own)", default=""),
    ),
    Option(
        "--rmb-bootstrap", STATISTICS, parse=positive_int, metavar="N",
        help="bootstrap resamples for the 95%% intervals (default 1000; ini rmb_bootstrap)",
        ini=Ini("rmb_bootstrap", "bootstrap resamples for the 95% intervals", default="1000"),
    ),
    Option(
        "--rmb-show-scenarios", OUTPUT, action="store_true", default=False,
        help="print the per-scenario table (also shown with -v)",
    ),
    Option(
        "--rmb-show-misses", OUTPUT, parse=non_negative_int, default=10, metavar="N",
        help="list at most N missed samples, one line each (default 10; all are in --rmb-jsonl)",
    ),
    Option(
        "--rmb-revision", MODEL, metavar="REV", help="model revision: branch, tag or commit (ini rmb_revision)",
        ini=Ini("rmb_revision", "model revision", default=""),
    ),
    Option(
        "--rmb-trust-remote-code", MODEL, action="store_true",
        help="allow the model's own Python code from its repository to run (off by default; "
        "ini rmb_trust_remote_code)",
        ini=Ini("rmb_trust_remote_code", "allow the model's own code to run", type="bool", default=False),
    ),
    Option(
        "--rmb-device", MODEL, parse=device_name, metavar="DEVICE",
        help=f"{DEVICE_HELP}; auto is CUDA when available (default auto; ini rmb_device)",
        ini=Ini("rmb_device", DEVICE_HELP, default="auto"),
    ),
    Option(
        "--rmb-dtype", MODEL, parse=dtype_name, metavar="DTYPE",
        help="auto|float32|bfloat16|float16; auto is bfloat16 on a CUDA device that supports it, "
        "float32 on CPU (default auto; ini rmb_dtype)",
        ini=Ini("rmb_dtype", "auto|float32|bfloat16|float16", default="auto"),
    ),
    Option(
        "--rmb-max-length", MODEL, parse=positive_int, metavar="N",
        help="token limit per text; longer texts lose their start (default: the smaller of the "
        "model's limit and 4096; ini rmb_max_length)",
        ini=Ini("rmb_max_length", "token limit per text", default=""),
    ),
    Option(
        "--rmb-batch-tokens", ENGINE, parse=positive_int, metavar="N",
        help="token budget per batch, padding included (default: 16384 on a GPU, 4096 on CPU; "
        "ini rmb_batch_tokens)",
        ini=Ini("rmb_batch_tokens", "token budget per batch (default: the model's own)", default=""),
    ),
    Option(
        "--rmb-attn-implementation", MODEL, metavar="NAME",
        help="attention implementation passed to transformers, e.g. sdpa, flash_attention_2, eager "
        "(ini rmb_attn_implementation)",
        ini=Ini("rmb_attn_implementation", "attention implementation for transformers", default=""),
    ),
    Option(
        "--rmb-chat-template", MODEL, metavar="FILE",
        help="Jinja chat template for a tokenizer that has none (ini rmb_chat_template)",
        ini=Ini("rmb_chat_template", "Jinja chat template file (relative to the ini file)", default=""),
    ),
    Option(
        "--rmb-reward-index", MODEL, parse=non_negative_int, metavar="N",
        help="which output logit is the reward, for a model with several labels (ini rmb_reward_index)",
        ini=Ini("rmb_reward_index", "which output logit is the reward", default=""),
    ),
    Option(
        "--rmb-gate", GATES, action="append", parse=gate_expression, metavar="EXPR",
        help="fail the run unless METRIC OP NUMBER holds, e.g. 'overall>=0.7', "
        "'helpfulness.bon>0.6', 'task:code.pairwise>=0.75', 'scenario:chat/discussion.bon>=0.5'; "
        "repeatable (ini rmb_gates, one per line)",
        ini=Ini("rmb_gates", "threshold gates, one METRIC OP NUMBER per line", type="linelist", default=[]),
    ),
    Option(
        "--rmb-gate-allow-empty", GATES, action="store_true", default=False,
        help="a gate on a metric with no samples in this run is not evaluated instead of failing",
    ),
    Option(
        "--rmb-require-complete", GATES, action="store_true",
        help="fail the run (status 1) when a selected scenario lacks a data file, naming the files: for "
        "release gates that must stand on the whole benchmark, not on a partial copy of it "
        "(ini rmb_require_complete)",
        ini=Ini("rmb_require_complete", "fail the run when a selected scenario lacks a data file",
                type="bool", default=False),
    ),
    Option(
        "--rmb-baseline", GATES, metavar="FILE",
        help="an earlier --rmb-json summary: fail when overall or a section dropped by more than "
        "--rmb-max-drop and significantly (paired bootstrap over shared samples)",
    ),
    Option(
        "--rmb-max-drop", GATES, parse=fraction, metavar="D",
        help="allowed accuracy drop against the baseline (default 0.01; ini rmb_max_drop)",
        ini=Ini("rmb_max_drop", "allowed accuracy drop against the baseline", default="0.01"),
    ),
    Option(
        "--rmb-alpha", STATISTICS, parse=significance_level, metavar="A",
        help="significance level of the baseline comparison (default 0.05; ini rmb_alpha)",
        ini=Ini("rmb_alpha", "significance level of the baseline comparison", default="0.05"),
    ),
    Option("--rmb-markdown", OUTPUT, metavar="PATH", help="write the tables and gates as GitHub-flavoured Markdown"),
    Option("--rmb-html", OUTPUT, metavar="PATH",
           help="write the run as one self-contained HTML page (opens offline): sections, a heatmap of every "
           "scenario, the tasks, a misses browser, the judge's figures, provenance (needs matplotlib: "
           "pip install 'pytest-rmb[report]')"),
    Option(
        "--rmb-cache-dir", ENGINE, metavar="DIR",
        help="where scores and verdicts are cached between runs, one file per model fingerprint, shared by "
        "every project (default $XDG_CACHE_HOME/pytest-rmb/scores, else ~/.cache/pytest-rmb/scores; "
        "ini rmb_cache_dir; see and trim it with pytest-rmb cache info|prune)",
        ini=Ini("rmb_cache_dir", "score cache directory (relative to the ini file)", default=""),
    ),
    Option("--rmb-no-cache", ENGINE, action="store_true", default=False, help="neither read nor write the score cache"),
    Option(
        "--rmb-limit", DATA, parse=positive_int, metavar="N",
        help="quick smoke run: score at most N samples per scenario and kind, drawn with --rmb-seed, "
        "the same for every model (ini rmb_limit)",
        ini=Ini("rmb_limit", "at most this many samples per scenario and kind (smoke runs)", default=""),
    ),
    Option(
        "--rmb-device-map", MODEL, choices=("auto",),
        help="spread a model too large for one GPU over all visible GPUs (transformers device_map); "
        "single process only, not with -n",
    ),
    # The flag stores False into the setting its ini mirror sets, so the two resolve like the others.
    Option(
        "--rmb-no-null-baseline", OUTPUT, action="store_const", const=False, dest="rmb_null_baseline",
        help="do not show the length baseline's accuracy on the same samples beside the model's "
        "(ini rmb_null_baseline = false)",
        ini=Ini("rmb_null_baseline", "show the length baseline beside every score", type="bool", default=True),
    ),
    Option(
        "--rmb-prefix-sharing", ENGINE, parse=prefix_sharing_mode, choices=PREFIX_SHARING_MODES,
        help="score each conversation once and its answers as continuations of it (decoder models "
        "that take a cache): auto uses it when the model supports it and the texts share enough "
        "(default auto; ini rmb_prefix_sharing)",
        ini=Ini("rmb_prefix_sharing", "auto|on|off: score each conversation prefix once", default="auto"),
    ),
    Option(
        "--rmb-scenarios", DATA, action="append", metavar="TOML",
        help="your own preference sets as extra scenarios: a TOML file of [[scenario]] tables (name, "
        "kind, path to JSONL rows, optional task, goal, markers); repeatable. Without RMB data (--rmb-data, "
        f"env {DATA_ENV}, ini rmb_data) only these run (ini rmb_scenarios, one per line)",
        ini=Ini("rmb_scenarios", "TOML files of your own scenarios (relative to the ini file), one per line",
                type="linelist", default=[]),
    ),
    Option(
        "--rmb-self-check", ENGINE, parse=non_negative_int, metavar="N",
        help="after scoring, re-score N seeded texts one at a time and compare with their batched scores; "
        "a difference above the dtype's tolerance is a warning, and fails a gated run (default 16, 0 "
        "turns it off; models with a score cache only; ini rmb_self_check)",
        ini=Ini("rmb_self_check", "texts re-scored alone to check batch invariance (0: off)", default="16"),
    ),
    Option(
        "--rmb-show-input", OUTPUT, action="append", metavar="UID",
        help="print what the model reads for the sample(s) with this uid (or SCENARIO_ID/UID): the "
        "rendered text, the tokens, the truncation and where the reward is read; repeatable",
    ),
)
BY_NAME = {option.name: option for option in OPTIONS}


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("rmb", "reward-model benchmark (RMB)")
    for option in OPTIONS:
        group.addoption(option.flag, **option.argparse_kwargs())
        if option.ini is not None:
            ini = option.ini
            extra = {} if ini.default is NOT_SET else {"default": ini.default}
            parser.addini(ini.name, ini.help, type=None if ini.type == "string" else ini.type, **extra)


def add_arguments(parser: argparse.ArgumentParser, flags: dict[str, tuple[str, str]]) -> None:
    """Declare options of this table on another command line (``compare --seed``), each under its
    own flag and help (``{"rmb_seed": ("--seed", "seed of the paired bootstrap")}``) and in a group
    named after its section: the same parser and default, so both refuse and default alike."""
    groups: dict[str, Any] = {}  # section -> argparse's argument group
    for name, (flag, help) in flags.items():
        option = BY_NAME[name]
        if option.section not in groups:
            groups[option.section] = parser.add_argument_group(option.section.lower())
        groups[option.section].add_argument(
            flag, type=option.parse or str, default=option.default_value, metavar=option.metavar,
            help=f"{help} (default {option.default_value})")


def setting(config: pytest.Config, name: str) -> Any:
    """An option's value: the command line's, else its ini mirror's parsed alike (None when both
    are empty). A repeatable option gets the ini lines first, then the command line's."""
    option = BY_NAME[name]
    given = config.getoption(option.name)
    ini = option.ini
    if ini is None:
        return given
    if ini.type == "linelist":
        return [*(_ini_value(option, line) for line in config.getini(ini.name)), *(given or ())]
    if given is not None:
        return given
    text = config.getini(ini.name)
    if ini.type == "bool":
        return bool(text)
    return None if text == "" else _ini_value(option, text)


def _ini_value(option: Option, text: str) -> Any:
    if option.parse is None:
        return text
    try:
        return option.parse(text)
    except argparse.ArgumentTypeError as exc:
        raise pytest.UsageError(f"ini option {option.ini.name if option.ini else option.name}: {exc}") from None


def options_reference() -> str:
    """Every ``--rmb-*`` option as a Markdown page, grouped by section: the docs' options reference."""
    lines = [
        "# Options",
        "",
        "Every option of the pytest plugin. An option with an ini name can be pinned in the project's",
        "ini file (`[pytest]` in pytest.ini, `[tool.pytest.ini_options]` in pyproject.toml); the command",
        "line wins over it, and a repeatable option adds to the ini file's lines. Paths in an ini file are",
        "relative to that file.",
    ]
    for section in SECTIONS:
        lines += ["", f"## {section}"]
        for option in (o for o in OPTIONS if o.section == section):
            lines += ["", f"### `{_usage(option)}`"]
            facts = _facts(option)
            if facts:
                lines += ["", *(f"- {fact}" for fact in facts)]
            # argparse formats help with %, so the table's help writes a percent sign as %%.
            text = option.help.replace("%%", "%")
            lines += ["", text if text.endswith(".") else f"{text}."]
    return "\n".join(lines) + "\n"


def _usage(option: Option) -> str:
    if option.choices:
        return f"{option.flag}={'|'.join(option.choices)}"
    return f"{option.flag}={option.metavar}" if option.takes_value else option.flag


def _facts(option: Option) -> list[str]:
    facts = []
    if option.ini is not None:
        kind = {"string": "", "bool": " (true or false)", "linelist": " (one per line)"}[option.ini.type]
        facts.append(f"ini: `{option.ini.name}`{kind}")
    if option.action == "append":
        facts.append("repeatable")
    if option.takes_value and option.action != "append" and option.default_value is not None:
        facts.append(f"default: `{option.default_value}`")
    elif option.ini is not None and option.ini.type == "bool":
        facts.append(f"default: `{option.ini.name} = {str(option.ini.default).lower()}`")
    return facts


@dataclass(frozen=True)
class RunSettings:
    model: ModelSettings  # what --rmb-model and its settings name
    backend: Backend
    dataset: Path | None  # None: no RMB data, only the user's own scenarios (--rmb-scenarios)
    dataset_label: str
    json_path: Path | None
    jsonl_path: Path | None
    batch_size: int | None  # None: the model's own, else 64
    batch_tokens: int | None  # None: the model's preferred budget
    bootstrap: int
    show_scenarios: bool
    show_misses: int
    markdown_path: Path | None
    html_path: Path | None
    cache_dir: Path | None
    gates: tuple[Gate, ...]
    allow_empty_gates: bool
    baseline: dict | None
    max_drop: float
    alpha: float
    null_baseline: bool = True  # show the length baseline beside the model's accuracies
    limit: int | None = None  # --rmb-limit: samples per scenario and kind; None for all
    self_check: int = 16  # --rmb-self-check: texts re-scored alone after the run; 0 for none
    show_input: tuple[str, ...] = ()  # --rmb-show-input: uids (or scenario/uid) whose input is printed
    require_complete: bool = False  # --rmb-require-complete: a missing data file fails the run
    # The run's scenarios, in collection order: RMB's (when there is RMB data) and the user's own
    # (--rmb-scenarios). Everything that asks "which scenarios?" asks this, never the registry.
    scenarios: tuple[Scenario, ...] = ()


def resolve(config: pytest.Config) -> RunSettings | None:
    """The run's settings, or None when no --rmb-model was given (the plugin stays idle)."""
    spec = config.getoption("rmb_model")
    if not spec:
        return None
    backend, args = _backend(config, spec)
    user_scenarios = _user_scenarios(config)
    dataset, label = _dataset(config, optional=bool(user_scenarios))
    if dataset is None:
        label = ", ".join(user_sources(user_scenarios))
    scenarios = tuple(sorted((*(registry() if dataset is not None else ()), *user_scenarios), key=lambda s: s.id))
    model = ModelSettings(
        model=spec,
        args=args,
        seed=setting(config, "rmb_seed"),
        revision=setting(config, "rmb_revision"),
        trust_remote_code=setting(config, "rmb_trust_remote_code"),
        device=setting(config, "rmb_device"),
        dtype=setting(config, "rmb_dtype"),
        max_length=setting(config, "rmb_max_length"),
        attn_implementation=setting(config, "rmb_attn_implementation"),
        chat_template=_chat_template(config),
        reward_index=setting(config, "rmb_reward_index"),
        device_map=_device_map(config),
        worker_index=_worker_index(config),
        prefix_sharing=setting(config, "rmb_prefix_sharing") or "auto",
    )
    check_distinct_outputs(config)
    outputs = {name: _output(config, name) for name in ("rmb_json", "rmb_jsonl", "rmb_markdown", "rmb_html")}
    for name, path in outputs.items():
        if path is not None:
            check_writable(path, "--" + name.replace("_", "-"))
    if outputs["rmb_html"] is not None:
        from pytest_rmb.charts import ChartsUnavailable, require_matplotlib

        try:  # now, not after the scoring it would report
            require_matplotlib("--rmb-html")
        except ChartsUnavailable as exc:
            raise pytest.UsageError(f"pytest-rmb: {exc}") from None
    return RunSettings(
        model=model,
        backend=backend,
        dataset=dataset,
        dataset_label=label,
        json_path=outputs["rmb_json"],
        jsonl_path=outputs["rmb_jsonl"],
        batch_size=setting(config, "rmb_batch_size"),
        batch_tokens=setting(config, "rmb_batch_tokens"),
        bootstrap=setting(config, "rmb_bootstrap"),
        show_scenarios=setting(config, "rmb_show_scenarios") or config.getoption("verbose", 0) > 0,
        show_misses=setting(config, "rmb_show_misses"),
        markdown_path=outputs["rmb_markdown"],
        html_path=outputs["rmb_html"],
        cache_dir=_cache_dir(config, dataset),
        gates=_gates(config, (*registry(), *user_scenarios)),
        allow_empty_gates=setting(config, "rmb_gate_allow_empty"),
        baseline=_baseline(config),
        max_drop=setting(config, "rmb_max_drop"),
        alpha=setting(config, "rmb_alpha"),
        limit=setting(config, "rmb_limit"),
        null_baseline=setting(config, "rmb_null_baseline"),
        self_check=setting(config, "rmb_self_check"),
        show_input=tuple(setting(config, "rmb_show_input") or ()),
        require_complete=setting(config, "rmb_require_complete"),
        scenarios=scenarios,
    )


def _ini_dir(config: pytest.Config) -> Path:
    """Where relative paths in ini options start: the ini file's folder."""
    return config.inipath.parent if config.inipath else config.rootpath


def _output(config: pytest.Config, name: str) -> Path | None:
    given = config.getoption(name)
    return config.invocation_params.dir / given if given else None


@dataclass(frozen=True)
class OutputFile:
    """An option that names a file the run writes."""

    flag: str
    dest: str  # where pytest keeps its value (config.getoption)
    expands: bool = False  # its writer expands ~ and $VARS (pytest's --junitxml does)


# Every file a run writes. Two of them on one path would be written one after the other, the later
# silently replacing the earlier: refused up front. A new output file adds a line here.
OUTPUT_FILES = (
    OutputFile("--rmb-json", "rmb_json"),
    OutputFile("--rmb-jsonl", "rmb_jsonl"),
    OutputFile("--rmb-markdown", "rmb_markdown"),
    OutputFile("--rmb-html", "rmb_html"),
    OutputFile("--junitxml", "xmlpath", expands=True),
)


def check_distinct_outputs(config: pytest.Config) -> None:
    """Fail before anything runs when two output options name one file: relative or absolute,
    ``./x`` or ``x``, through a symbolic link or a hard link."""
    seen: list[tuple[OutputFile, str, Path]] = []
    for output in OUTPUT_FILES:
        given = config.getoption(output.dest, None)
        if not given:
            continue
        text = os.path.expanduser(os.path.expandvars(given)) if output.expands else given
        path = (config.invocation_params.dir / text).resolve()
        for other, other_given, other_path in seen:
            if path == other_path or _same_existing_file(path, other_path):
                raise pytest.UsageError(
                    f"pytest-rmb: {other.flag} {other_given} and {output.flag} {given} name the same file "
                    f"({path}); the second would overwrite the first: give each output its own path"
                )
        seen.append((output, given, path))


def _same_existing_file(first: Path, second: Path) -> bool:
    try:
        return first.samefile(second)
    except OSError:  # either does not exist yet: their resolved paths told already
        return False


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
    given = setting(config, "rmb_model_arg")
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
    # Results are keyed by what the model sees, not by project: one folder in the user's cache
    # serves every project and every directory a run starts from.
    default = default_cache_dir()
    # A data folder inside the user's cache folder: never write into the data.
    return None if dataset is not None and is_inside(default, dataset) else default


def _gates(config: pytest.Config, scenarios: tuple[Scenario, ...]) -> tuple[Gate, ...]:
    """Every gate, its scenario or task checked against RMB's and the user's (a gate on RMB in a
    run of the user's sets alone is no typo: it has no samples, and says so)."""
    scenario_ids, task_ids = {s.id for s in scenarios}, {s.task_id for s in scenarios}
    gates = setting(config, "rmb_gate")
    from_ini = len(config.getini("rmb_gates"))  # the ini file's gates come first
    given = [(gate, "ini option rmb_gates" if i < from_ini else "pytest-rmb: argument --rmb-gate")
             for i, gate in enumerate(gates)]
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


def _find_dataset(config: pytest.Config, given: str | None, warn: bool = True) -> tuple[Path, str]:
    """The data folder for a ``--rmb-data`` value (None: env, then ini) and its label; ``warn``:
    say when a word is given where a folder of that name exists (once, from pytest_configure)."""
    base, source = config.invocation_params.dir, "--rmb-data"
    if not given and os.environ.get(DATA_ENV):
        given, source = os.environ[DATA_ENV], f"${DATA_ENV}"
    if not given and config.getini("rmb_data"):
        given, source = config.getini("rmb_data"), "ini option rmb_data"
        base = _ini_dir(config)
    if warn and given in DATA_WORDS and (base / given).is_dir():
        _warn_word_shadows_folder(config, source, given, base)
    if not given or given == FETCHED:
        from pytest_rmb.fetch import cached_dataset, default_dest

        fetched = cached_dataset()
        if fetched is not None:
            return fetched, str(fetched)
        if given == FETCHED:
            folder = f"; the folder {FETCHED}/ here is --rmb-data ./{FETCHED}" if (base / given).is_dir() else ""
            raise pytest.UsageError(
                f"pytest-rmb: {source} {FETCHED}: no fetched copy of RMB under {default_dest()}; "
                f"get one with `pytest-rmb fetch`, or give --rmb-data PATH{folder}"
            )
        raise pytest.UsageError(
            "pytest-rmb: no RMB data configured. Get the benchmark with `pytest-rmb fetch` "
            f"(then --rmb-data {FETCHED} or nothing at all), point at a checkout of the RMB repository's "
            f"RMB_dataset folder with --rmb-data PATH (or env {DATA_ENV}, or ini rmb_data), "
            "or try the bundled sample with --rmb-data sample."
        )
    if given == SAMPLE:
        return sample_dataset(), SAMPLE
    path = (base / given).resolve()
    if not path.is_dir():
        close = closest_names(given, DATA_WORDS, count=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise pytest.UsageError(f"pytest-rmb: {source} {given}: no such directory ({path}){hint}")
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


def describe_dataset(label: str) -> str:
    """Which data a run read, in words for its header: the word's meaning, not only the word (a
    folder named ``sample`` may sit beside the user)."""
    if label == SAMPLE:
        return f"the bundled sample (--rmb-data {SAMPLE})"
    from pytest_rmb.fetch import cached_dataset

    fetched = cached_dataset()
    if fetched is not None and label == str(fetched):
        return f"the fetched copy {label} (--rmb-data {FETCHED})"
    return label


def _warn_word_shadows_folder(config: pytest.Config, source: str, word: str, base: Path) -> None:
    """A word given where a folder of that name exists: the word wins, and the run says so."""
    meaning = "the bundled sample" if word == SAMPLE else "the copy `pytest-rmb fetch` verified"
    config.issue_config_time_warning(pytest.PytestConfigWarning(
        f"pytest-rmb: {source} {word} means {meaning}, not the folder {base / word}; "
        f"to run on that folder give --rmb-data ./{word}"), stacklevel=2)


def sample_limit(config: pytest.Config) -> tuple[int, int] | None:
    """(samples per scenario and kind, seed) of ``--rmb-limit``; None for a full run."""
    limit = setting(config, "rmb_limit")
    if limit is None:
        return None
    return limit, setting(config, "rmb_seed")


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
        dataset, _ = _find_dataset(early_config, getattr(namespace, "rmb_data", None), warn=False)
    except pytest.UsageError:
        return False  # reported by pytest_configure
    cache_dir = Path(os.path.expandvars(os.path.expanduser(early_config.getini("cache_dir"))))
    return is_inside(early_config.rootpath / cache_dir, dataset)
