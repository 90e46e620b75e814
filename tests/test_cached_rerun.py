"""A rerun that the score cache answers in full loads no weights and runs no self-check.

Loading is observed outside the code under test: a conftest in the run's directory counts the
calls to transformers' ``from_pretrained`` for weights (not tokenizers or configs, which rendering
and cache keys need) in a file. Served models are covered in test_served.py, where the stand-in
server counts requests.
"""

import json

import pytest

from tests.tiny_models import save_causal_lm, save_decoder

COUNTING_CONFTEST = '''
import json, pathlib, transformers

LOG = pathlib.Path(__file__).parent / "loads.jsonl"
_saved = {}


def pytest_configure(config):
    for name in ("AutoModelForSequenceClassification", "AutoModelForCausalLM"):
        cls = getattr(transformers, name)
        original = cls.from_pretrained.__func__
        _saved[name] = cls.from_pretrained

        def counting(klass, *args, _original=original, _name=name, **kwargs):
            with LOG.open("a") as log:
                log.write(json.dumps({"class": _name}) + "\\n")
            return _original(klass, *args, **kwargs)

        cls.from_pretrained = classmethod(counting)


def pytest_unconfigure(config):
    for name, method in _saved.items():
        setattr(getattr(transformers, name), "from_pretrained", method)
'''


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("rerun")
    return {"decoder": save_decoder(root / "decoder"), "policy": save_causal_lm(root / "policy", seed=1),
            "reference": save_causal_lm(root / "reference", seed=2)}


def loads(pytester) -> int:
    log = pytester.path / "loads.jsonl"
    return len(log.read_text().splitlines()) if log.exists() else 0


def run(pytester, name: str, spec: str, *args: str):
    result = pytester.runpytest("-p", "no:cacheprovider", "--rmb-data", "sample", "--rmb-model", spec,
                                "--rmb-device", "cpu", "--rmb-cache-dir", "cache", "--rmb-json", f"{name}.json",
                                "--rmb-jsonl", f"{name}.jsonl", *args)
    summary = json.loads((pytester.path / f"{name}.json").read_text())
    samples = (pytester.path / f"{name}.jsonl").read_text()
    return result, summary, samples


@pytest.mark.parametrize(("kind", "weights"), [("hf", 1), ("dpo", 2)])
def test_a_rerun_the_cache_answers_loads_nothing_and_checks_nothing(pytester, checkpoints, kind, weights):
    pytester.makeconftest(COUNTING_CONFTEST)
    if kind == "hf":
        spec, args = str(checkpoints["decoder"]), ()
    else:
        spec, args = f"dpo:{checkpoints['policy']}", ("--rmb-model-arg", f"ref={checkpoints['reference']}")
    cold, cold_summary, cold_samples = run(pytester, "cold", spec, *args)
    assert loads(pytester) == weights  # the policy and its reference for dpo:
    assert cold_summary["engine"]["model_loads"] == 1 and cold_summary["engine"]["texts_scored"] > 0
    assert cold_summary["self_check"] is not None

    warm, warm_summary, warm_samples = run(pytester, "warm", spec, *args)
    assert loads(pytester) == weights  # not one more
    assert warm.ret == cold.ret
    assert warm_samples == cold_samples
    assert warm_summary["outcomes"] == cold_summary["outcomes"]
    engine = warm_summary["engine"]
    assert (engine["texts_scored"], engine["model_loads"]) == (0, 0)
    assert engine["cache_hits"] == cold_summary["engine"]["texts_scored"]
    assert warm_summary["self_check"] is None
    warm.stdout.fnmatch_lines(["engine: 0 texts scored now; model not loaded; * from the score cache, *"])
    assert "rmb: self-check" not in warm.stdout.str()
