import json

import pytest

from pytest_rmb.data import BON, PAIRWISE, DataFileError, Message, data_file, load_samples
from tests.helpers import bon, pair, turn, write_dataset


def write(tmp_path, records, name="f.json"):
    path = tmp_path / name
    path.write_text(records if isinstance(records, str) else json.dumps(records), encoding="utf-8")
    return path


def test_pairs_load_sorted_by_numeric_uid_with_all_fields(tmp_path):
    path = write(tmp_path, [pair("10", "q2", "good2", "bad2"), pair("9", "q1", "good1", "")])
    samples = load_samples(path, PAIRWISE, "code/x")
    assert [s.uid for s in samples] == ["9", "10"]
    first = samples[0]
    assert first.scenario == "code/x"
    assert first.conversation == (Message("user", "q1", "English"),)
    assert (first.chosen.text, first.rejected.text) == ("good1", "")  # empty answers are valid
    assert [r.model for r in first.responses] == ["model-a", "model-b"]


def test_bon_keeps_losers_in_upstream_order(tmp_path):
    path = write(tmp_path, [bon("1", "q", "best", ["l0", "l1", "l2"])])
    (sample,) = load_samples(path, BON, "s")
    assert [r.text for r in sample.responses] == ["best", "l0", "l1", "l2"]


def test_missing_language_and_multi_turn_are_accepted(tmp_path):
    record = pair("1", "q", "a", "b")
    record["conversation_input"] = [turn("user", "hi", None), turn("assistant", "hello", None), turn("user", "more")]
    (sample,) = load_samples(write(tmp_path, [record]), PAIRWISE, "s")
    assert [m.role for m in sample.conversation] == ["user", "assistant", "user"]
    assert sample.conversation[0].language is None


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda r: r.pop("chosen"), "record 1: field 'chosen': missing"),
        (lambda r: r["reject"].update(answer=5), "record 1: field 'reject.answer': expected a string, got int"),
        (lambda r: r.update(pair_uid=7), "record 1: field 'pair_uid': expected a string, got int"),
        (lambda r: r.update(conversation_input=[]), "record 1: field 'conversation_input': empty"),
        (
            lambda r: r["conversation_input"].append(turn("assistant", "x")),
            "record 1: field 'conversation_input[1].role': the last message must come from the user",
        ),
        (
            lambda r: r["conversation_input"][0].pop("content"),
            "record 1: field 'conversation_input[0].content': missing",
        ),
        (lambda r: r.update(chosen="text"), "record 1: field 'chosen': expected an object, got string"),
    ],
)
def test_bad_records_name_file_record_and_field(tmp_path, mutate, expected):
    bad = pair("2", "q", "a", "b")
    mutate(bad)
    path = write(tmp_path, [pair("1", "q", "a", "b"), bad])
    with pytest.raises(DataFileError) as info:
        load_samples(path, PAIRWISE, "s")
    assert str(info.value).startswith(f"{path}: {expected}")


def test_every_bad_record_is_reported_not_only_the_first(tmp_path):
    path = write(tmp_path, [pair("1", "q", "a", "b"), {"pair_uid": "2"}, "junk", pair("1", "q", "c", "d")])
    with pytest.raises(DataFileError) as info:
        load_samples(path, PAIRWISE, "s")
    assert info.value.problems == [
        "record 1: field 'conversation_input': missing",
        "record 2: expected an object, got string",
        "record 3: field 'pair_uid': duplicate uid '1' (first at record 0)",
    ]


def test_bon_without_losers_is_an_error(tmp_path):
    path = write(tmp_path, [bon("1", "q", "best", [])])
    with pytest.raises(DataFileError, match=r"record 0: field 'loser_list': empty"):
        load_samples(path, BON, "s")


def test_malformed_json_names_line_and_column(tmp_path):
    path = write(tmp_path, '[{"pair_uid": "1",\n  "chosen": }]')
    with pytest.raises(DataFileError, match=r"f\.json: invalid JSON at line 2 column 13"):
        load_samples(path, PAIRWISE, "s")


def test_top_level_must_be_an_array(tmp_path):
    with pytest.raises(DataFileError, match="expected a JSON array of records, got object"):
        load_samples(write(tmp_path, {"a": 1}), PAIRWISE, "s")


def test_non_utf8_file_is_reported(tmp_path):
    path = tmp_path / "f.json"
    path.write_bytes(b'[{"pair_uid": "\xff"}]')
    with pytest.raises(DataFileError, match="not UTF-8"):
        load_samples(path, PAIRWISE, "s")


def test_jsonl_twin_is_found_and_loaded(tmp_path):
    write_dataset(tmp_path, {})
    lines = "\n".join(json.dumps(r) for r in [pair("1", "q", "a", "b"), pair("2", "q", "c", "d")])
    (tmp_path / "Pairwise_set").mkdir()
    (tmp_path / "Pairwise_set" / "S1.jsonl").write_text(lines + "\n", encoding="utf-8")
    path = data_file(tmp_path, "Pairwise_set/S1.json")
    assert path == tmp_path / "Pairwise_set" / "S1.jsonl"
    assert [s.uid for s in load_samples(path, PAIRWISE, "s")] == ["1", "2"]
    assert data_file(tmp_path, "Pairwise_set/S2.json") is None


def test_jsonl_bad_line_is_named(tmp_path):
    path = write(tmp_path, json.dumps(pair("1", "q", "a", "b")) + "\n{oops\n", name="f.jsonl")
    with pytest.raises(DataFileError, match=r"f\.jsonl: line 2: invalid JSON"):
        load_samples(path, PAIRWISE, "s")


def test_samples_are_immutable(tmp_path):
    (sample,) = load_samples(write(tmp_path, [pair("1", "q", "a", "b")]), PAIRWISE, "s")
    with pytest.raises(AttributeError):
        sample.uid = "2"
    hash(sample.conversation)  # usable as a dedupe key
