from pathlib import Path

import pytest

from pytest_rmb.scenarios import RegistryError, join_spaced_words, parse_scenarios, registry, task_markers
from tests.helpers import SAMPLE_DATA, SHARED_DATA

HARM_NAMES = {
    "S1": "Violent Crimes", "S2": "Non-Violent Crimes", "S3": "Sex-Related Crimes",
    "S4": "Child Sexual Exploitation", "S5": "Specialized Advice", "S6": "Privacy",
    "S7": "Intellectual Property", "S8": "Indiscriminate Weapons", "S9": "Hate",
    "S10": "Suicide & Self-Harm", "S11": "Sexual Content",
}
TASKS = {
    "Brainstorming", "Chat", "Classification", "Closed QA", "Code", "Generation", "Open QA",
    "Reasoning", "Rewrite", "Role Playing", "Summarization", "Translation",
}


def test_registry_has_the_49_rmb_scenarios():
    scenarios = registry()
    helpful = [s for s in scenarios if s.goal == "helpfulness"]
    harmless = [s for s in scenarios if s.goal == "harmlessness"]
    assert (len(scenarios), len(helpful), len(harmless)) == (49, 37, 12)
    assert {s.task for s in helpful} == TASKS
    assert [s.id for s in scenarios] == sorted(s.id for s in scenarios)


def test_harmlessness_names_follow_the_hazard_list():
    names = {s.pairwise.rsplit("/", 1)[1][:-5]: s.name for s in registry() if s.goal == "harmlessness"}
    for code, hazard in HARM_NAMES.items():
        assert names[code] == f"{code} {hazard}"
    assert names["multi"] == "Multiple Hazards"


def upstream_paths() -> set[str]:
    manifest = SHARED_DATA.parent / "RMB_MANIFEST.tsv"
    if not manifest.is_file():
        pytest.skip(f"RMB manifest not found at {manifest}")
    rows = [line.split("\t")[1] for line in manifest.read_text().splitlines() if not line.startswith("#")]
    return {row.removeprefix("RMB_dataset/") for row in rows}


def test_every_scenario_file_is_an_upstream_file_and_all_are_covered():
    ours = {s.pairwise for s in registry()} | {s.bon for s in registry()}
    assert ours == upstream_paths()


def test_bundled_sample_has_every_scenario_file_in_upstream_layout():
    for scenario in registry():
        for relative in (scenario.pairwise, scenario.bon):
            assert (SAMPLE_DATA / relative).is_file(), relative


def test_markers_are_the_goal_and_the_snake_case_task():
    by_id = {s.id: s for s in registry()}
    assert by_id["closed_qa/optionbased"].markers == ("helpfulness", "closed_qa")
    assert by_id["harmlessness/s10_suicide_self_harm"].markers == ("harmlessness",)
    assert sorted(task_markers()) == sorted(
        ["brainstorming", "chat", "classification", "closed_qa", "code", "generation", "open_qa",
         "reasoning", "rewrite", "role_playing", "summarization", "translation"]
    )


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("Data Management", "Data_Management"),
        ("Open QA and not Factual", "Open_QA and not Factual"),
        ("(Data Management or Closed QA) and 848", "( Data_Management or Closed_QA ) and 848"),
        ("not Role Playing", "not Role_Playing"),
        ("data_management", "data_management"),  # already valid: untouched
        ("a and (b or c)", "a and (b or c)"),
    ],
)
def test_spaced_names_become_ids_for_k(given, expected):
    assert join_spaced_words(given) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[scenario]]\nid = 'a/b'\n", "scenario 0: field 'goal' must be a non-empty string"),
        ("[[scenario]]\nid='A b'\ngoal='helpfulness'\ntask='t'\nname='n'\npairwise='p'\nbon='b'\n"
         "description='d'\n", "field 'id' must look like 'task/name'"),
        ("[[scenario]]\nid='a/b'\ngoal='fun'\ntask='t'\nname='n'\npairwise='p'\nbon='b'\n"
         "description='d'\n", "field 'goal' must be one of"),
        ("[[scenario]]\nid='a/b'\ngoal='helpfulness'\ntask='t'\nname='n'\npairwise='p'\nbon='b'\n"
         "description='d'\nextra=1\n", "unknown field(s) extra"),
        ("scenario = 3", "'scenario' must be an array of tables"),
        ("[[scenario]\n", "x.toml:"),
    ],
)
def test_bad_scenario_definitions_are_named(text, message):
    with pytest.raises(RegistryError, match=None) as info:
        parse_scenarios(text, "x.toml")
    assert message in str(info.value)
    assert str(info.value).startswith("x.toml")


def test_scenario_files_are_inside_the_package_data_folder():
    # The wheel ships scenarios/ as pytest_rmb.scenario_files; keep the two in step.
    root = Path(__file__).resolve().parents[1]
    assert sorted(p.name for p in (root / "scenarios").glob("*.toml")) == sorted(
        f"{task}.toml" for task in {s.task_id for s in registry()}
    )


@pytest.mark.parametrize(
    ("table", "said"),
    [
        ("pairwise='../../etc/passwd.json'\nbon='b.json'", "field 'pairwise' '../../etc/passwd.json'"),
        ("pairwise='p.json'\nbonn='b.json'", "field 'bon' must be a non-empty string (id 'chat/broken')"),
    ],
)
def test_a_broken_shipped_scenario_file_is_a_usage_error_naming_file_scenario_and_field(
        pytester, monkeypatch, tmp_path, table, said):
    import pytest_rmb.scenarios as scenarios_module

    shipped = Path(__file__).resolve().parents[1] / "scenarios"
    folder = tmp_path / "scenario_files"
    folder.mkdir()
    for path in shipped.glob("*.toml"):
        (folder / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    (folder / "zz_broken.toml").write_text(
        "[[scenario]]\nid='chat/broken'\ngoal='helpfulness'\ntask='Chat'\nname='Broken'\ndescription='d'\n"
        f"{table}\n", encoding="utf-8")
    monkeypatch.setattr(scenarios_module, "files", lambda package: folder)
    registry.cache_clear()
    try:
        result = pytester.runpytest("-p", "no:cacheprovider", "--rmb-model", "length", "--rmb-data", "sample")
    finally:
        registry.cache_clear()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*pytest-rmb: invalid scenario definition: *zz_broken.toml: scenario 0*{said}*"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
