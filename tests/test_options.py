"""The option table (options.py) and the setting parsers (parsers.py).

Everything pytest-rmb declares about its options is generated from one table: these tests check
that each generated piece (--help, the ini settings, the value lookup, the docs reference, compare's
shared flags) holds every option, and that each parser accepts and refuses what it says.
"""

from __future__ import annotations

import fnmatch
import math

import pytest

from pytest_rmb import backends, compare, parsers
from pytest_rmb.gate import Gate
from pytest_rmb.options import OPTIONS, SECTIONS, options_reference, setting
from pytest_rmb.parsers import SettingError

INI_OPTIONS = [option for option in OPTIONS if option.ini is not None]

# A value for every ini mirror, unlike its default, and what the run gets from it.
INI_VALUES = {
    "rmb_model_args": ("temperature=0\n    n=2", ["temperature=0", "n=2"]),
    "rmb_data": ("sample", "sample"),
    "rmb_require_complete": ("true", True),
    "rmb_seed": ("7", 7),
    "rmb_batch_size": ("8", 8),
    "rmb_bootstrap": ("50", 50),
    "rmb_revision": ("v1", "v1"),
    "rmb_trust_remote_code": ("true", True),
    "rmb_device": ("cuda:1", "cuda:1"),
    "rmb_dtype": ("bfloat16", "bfloat16"),
    "rmb_max_length": ("128", 128),
    "rmb_batch_tokens": ("512", 512),
    "rmb_attn_implementation": ("eager", "eager"),
    "rmb_chat_template": ("template.jinja", "template.jinja"),
    "rmb_reward_index": ("1", 1),
    "rmb_gates": ("overall>=0.5\n    helpfulness.bon>0.25",
                  [Gate("overall", ">=", 0.5), Gate("helpfulness.bon", ">", 0.25)]),
    "rmb_max_drop": ("0.2", 0.2),
    "rmb_alpha": ("0.1", 0.1),
    "rmb_cache_dir": ("scores", "scores"),
    "rmb_limit": ("3", 3),
    "rmb_null_baseline": ("false", False),
    "rmb_prefix_sharing": ("off", "off"),
    "rmb_scenarios": ("mine.toml\n    yours.toml", ["mine.toml", "yours.toml"]),
    "rmb_self_check": ("0", 0),
}


def test_the_table_names_each_option_and_ini_setting_once():
    names = [option.name for option in OPTIONS]
    flags = [option.flag for option in OPTIONS]
    inis = [option.ini.name for option in INI_OPTIONS]
    assert len(set(names)) == len(names) and len(set(flags)) == len(flags) and len(set(inis)) == len(inis)
    assert all(flag.startswith("--rmb-") for flag in flags)
    assert all(option.section in SECTIONS for option in OPTIONS)
    # The help says where a project pins the option.
    assert [option.flag for option in INI_OPTIONS if option.ini.name not in option.help] == []


def test_every_option_and_ini_setting_is_in_pytest_help(pytester):
    result = pytester.runpytest("-p", "no:cacheprovider", "--help")
    assert result.ret == 0
    text = result.stdout.str()
    for option in OPTIONS:
        assert option.flag in text, option.flag
    for option in INI_OPTIONS:
        result.stdout.fnmatch_lines([f"  {option.ini.name} ({option.ini.type})*"])


def test_defaults_without_command_line_or_ini(pytester):
    config = pytester.parseconfig()
    expected = {"rmb_seed": 0, "rmb_bootstrap": 1000, "rmb_max_drop": 0.01, "rmb_alpha": 0.05,
                "rmb_device": "auto", "rmb_dtype": "auto", "rmb_prefix_sharing": "auto", "rmb_self_check": 16,
                "rmb_show_misses": 10, "rmb_null_baseline": True, "rmb_trust_remote_code": False,
                "rmb_batch_size": None, "rmb_limit": None, "rmb_revision": None, "rmb_gate": [],
                "rmb_model_arg": [], "rmb_show_scenarios": False, "rmb_show_input": None}
    assert {name: setting(config, name) for name in expected} == expected


def test_every_ini_mirror_is_read_from_a_pytest_ini(pytester):
    assert set(INI_VALUES) == {option.ini.name for option in INI_OPTIONS}
    pytester.makeini("[pytest]\n" + "".join(f"{name} = {text}\n" for name, (text, _) in INI_VALUES.items()))
    config = pytester.parseconfig()
    for option in INI_OPTIONS:
        assert setting(config, option.name) == INI_VALUES[option.ini.name][1], option.ini.name


def test_the_command_line_wins_over_the_ini_and_adds_to_its_lines(pytester):
    pytester.makeini("[pytest]\nrmb_seed = 7\nrmb_null_baseline = true\nrmb_trust_remote_code = false\n"
                     "rmb_gates = overall>=0.5\n")
    config = pytester.parseconfig("--rmb-seed", "3", "--rmb-no-null-baseline", "--rmb-trust-remote-code",
                                  "--rmb-gate", "helpfulness.bon>0.25")
    assert setting(config, "rmb_seed") == 3
    assert setting(config, "rmb_null_baseline") is False
    assert setting(config, "rmb_trust_remote_code") is True
    assert setting(config, "rmb_gate") == [Gate("overall", ">=", 0.5), Gate("helpfulness.bon", ">", 0.25)]


@pytest.mark.parametrize(("ini", "message"), [
    ("rmb_seed = -1", "ini option rmb_seed: expected an integer >= 0, got -1"),
    ("rmb_bootstrap = many", "ini option rmb_bootstrap: expected a positive integer, got 'many'"),
    ("rmb_prefix_sharing = sometimes", "ini option rmb_prefix_sharing: expected one of auto, on, off, got 'sometimes'"),
    ("rmb_gates = overall", "ini option rmb_gates: 'overall': expected METRIC OP NUMBER*"),
])
def test_a_bad_ini_value_is_a_usage_error_naming_the_setting(pytester, ini, message):
    pytester.makeini(f"[pytest]\n{ini}\n")
    config = pytester.parseconfig()
    name = next(option.name for option in INI_OPTIONS if option.ini.name == ini.split(" =")[0])
    with pytest.raises(pytest.UsageError) as info:
        setting(config, name)
    assert fnmatch.fnmatchcase(str(info.value), message), str(info.value)


def test_the_reference_lists_every_option_by_section_with_ini_and_default():
    page = options_reference()
    assert page.startswith("# Options\n")
    headings = [line for line in page.splitlines() if line.startswith("## ")]
    assert headings == [f"## {section}" for section in SECTIONS]
    for option in OPTIONS:
        assert f"### `{option.flag}" in page, option.flag
        if option.ini is not None:
            assert f"- ini: `{option.ini.name}`" in page, option.ini.name
    assert "- default: `1000`" in page and "- default: `rmb_null_baseline = true`" in page
    assert "95% intervals" in page and "%%" not in page
    # Each option sits under its own section.
    seed = page.index("### `--rmb-seed=N`")
    assert page.rindex("## ", 0, seed) == page.index("## Statistics")


@pytest.mark.parametrize("alpha", ["0", "1", "1.5", "nan"])
def test_an_alpha_that_marks_nothing_or_everything_is_refused_by_compare(capsys, alpha):
    with pytest.raises(SystemExit) as info:
        compare.main(["a.json", "b.json", "--alpha", alpha])
    assert info.value.code == 2
    assert "argument --alpha: expected a number between 0 and 1, both excluded" in capsys.readouterr().err


@pytest.mark.parametrize("alpha", ["0", "1"])
def test_an_alpha_that_marks_nothing_or_everything_is_refused_by_the_plugin(pytester, alpha):
    result = pytester.runpytest("-p", "no:cacheprovider", "--rmb-model", "length", "--rmb-data", "sample",
                                "--rmb-alpha", alpha)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*argument --rmb-alpha: expected a number between 0 and 1, both excluded*"])
    pytester.makeini(f"[pytest]\nrmb_alpha = {alpha}\n")
    with pytest.raises(pytest.UsageError, match="ini option rmb_alpha: expected a number between 0 and 1"):
        setting(pytester.parseconfig(), "rmb_alpha")


def test_compare_shares_the_plugins_parsers_and_defaults(capsys):
    with pytest.raises(SystemExit):
        compare.main(["a.json", "b.json", "--alpha", "0"])
    assert "argument --alpha: expected a number between 0 and 1, both excluded, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default 0.05)" in out and "(default holm)" in out


ACCEPTED = [
    (parsers.positive_int, "3", 3),
    (parsers.non_negative_int, "0", 0),
    (parsers.integer, "-4", -4),
    (parsers.positive_float, "0.5", 0.5),
    (parsers.non_negative_float, "0", 0.0),
    (parsers.fraction, "0", 0.0),
    (parsers.fraction, "1", 1.0),
    (parsers.significance_level, "0.05", 0.05),
    (parsers.boolean, " Yes ", True),
    (parsers.boolean, "off", False),
    (parsers.text_value, "", ""),
    (parsers.choice("a", "b"), "b", "b"),
    (parsers.device_name, "cuda:3", "cuda:3"),
    (parsers.dtype_name, "bfloat16", "bfloat16"),
    (parsers.env_var_name, " MY_JUDGE_KEY ", "MY_JUDGE_KEY"),
]

REFUSED = [
    (parsers.positive_int, "0", "expected a positive integer, got 0"),
    (parsers.positive_int, "1.5", "expected a positive integer, got '1.5'"),
    (parsers.non_negative_int, "-1", "expected an integer >= 0, got -1"),
    (parsers.integer, "x", "expected an integer, got 'x'"),
    (parsers.positive_float, "0", "expected a number > 0, got 0.0"),
    (parsers.positive_float, "inf", "expected a number > 0, got inf"),
    (parsers.non_negative_float, "-0.5", "expected a number >= 0, got -0.5"),
    (parsers.non_negative_float, "nan", "expected a number >= 0, got nan"),
    (parsers.fraction, "1.01", "expected a number between 0 and 1, got 1.01"),
    (parsers.fraction, "half", "expected a number between 0 and 1, got 'half'"),
    (parsers.significance_level, "0", "expected a number between 0 and 1, both excluded, got 0.0"),
    (parsers.significance_level, "1", "expected a number between 0 and 1, both excluded, got 1.0"),
    (parsers.boolean, "maybe", "expected true or false, got 'maybe'"),
    (parsers.choice("a", "b"), "c", "expected one of a, b, got 'c'"),
    (parsers.device_name, "gpu", "expected auto|cpu|cuda|cuda:N, got 'gpu'"),
    (parsers.device_name, "cuda:x", "expected auto|cpu|cuda|cuda:N, got 'cuda:x'"),
    (parsers.dtype_name, "fp16", "expected one of auto, float32, bfloat16, float16, got 'fp16'"),
    (parsers.env_var_name, "MY KEY", "expected the NAME of an environment variable"),
]


@pytest.mark.parametrize(("parse", "text", "value"), ACCEPTED)
def test_parsers_accept(parse, text, value):
    assert parse(text) == value


@pytest.mark.parametrize(("parse", "text", "message"), REFUSED)
def test_parsers_refuse_with_what_they_expected(parse, text, message):
    with pytest.raises(SettingError) as info:
        parse(text)
    assert str(info.value).startswith(message)
    # One error for argparse (it prints the message) and for code that catches ValueError.
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("key", ["hf_abcdefghijklmnop", "sk_live_0123", "aB3dE5gH7jK9mN1pQ3sT5"])
def test_a_key_given_as_a_variable_name_is_refused_without_echoing_it(key):
    with pytest.raises(SettingError) as info:
        parsers.env_var_name(key)
    assert key not in str(info.value)


@pytest.mark.parametrize(("text", "keylike"), [
    ("sk-proj-Abc123", True), ("hf_abcdefghijklmnop", True), ("aB3dE5gH7jK9mN1pQ3sT5", True),
    ("localhost:8000", False), ("http://localhost:8000/v1", False), ("concurrency", False), ("1024", False),
    ("Qwen/Qwen2.5-7B-Instruct", False),
])
def test_only_text_shaped_like_a_key_counts_as_one(text, keylike):
    # What a refused setting hides: a key pasted in, never a URL, a host or a model name.
    assert parsers.looks_like_key(text) is keylike


def test_type_names_for_listings_and_the_backend_api_offers_the_same_parsers():
    assert [parsers.type_name(p) for p in (parsers.positive_int, parsers.positive_float, parsers.boolean)] == [
        "int", "float", "bool"]
    assert parsers.type_name(parsers.choice("both", "random")) == "both|random"
    assert parsers.type_name(lambda text: text) == "<lambda>"
    # README's backend example imports its parsers from pytest_rmb.backends: the very same functions.
    assert backends.positive_int is parsers.positive_int and backends.choice is parsers.choice
    assert math.isclose(parsers.significance_level("0.999"), 0.999)
