"""``--rmb-html``: the page a run writes, opened in a real browser (headless Chromium, driven by
Playwright), as a user opens it from a file: no network, no console error, one heatmap cell per
scenario and kind, and the misses browser's filters showing what the JSONL says they should."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_rmb.data import sample_dataset

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def run_with_page(workdir: Path, model: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", str(workdir), "--rmb-model", model,
         "--rmb-data", "sample", "--rmb-html", "page.html", "--rmb-jsonl", "samples.jsonl", *args],
        cwd=workdir, capture_output=True, text=True, timeout=600, env=env)


def margin_of(scores: list[float]) -> float:
    return scores[0] - max(scores[1:])


@pytest.fixture(scope="module")
def random_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("html")
    done = run_with_page(workdir, "random")
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-3000:]
    assert f"rmb: HTML page written to {workdir / 'page.html'}" in done.stdout
    records = [json.loads(line) for line in (workdir / "samples.jsonl").read_text().splitlines()]
    return workdir / "page.html", records


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); .ci/run installs it")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (test extra)")
    with playwright_api.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def opened(browser, random_run):
    path, records = random_run
    page = browser.new_page()
    problems: list[str] = []
    requests: list[str] = []
    page.on("console", lambda message: problems.append(f"{message.type}: {message.text}")
            if message.type in ("error", "warning") else None)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("request", lambda request: requests.append(request.url))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    yield page, records, problems, requests
    page.close()


def test_the_page_opens_offline_without_errors_or_requests(opened, random_run):
    page, _, problems, requests = opened
    assert problems == []
    # The page itself and nothing else: no stylesheet, script, font or image fetched.
    assert requests == [random_run[0].as_uri()]
    assert page.title() == "RMB: random on sample"


def test_the_heatmap_has_one_cell_per_scenario_and_kind(opened):
    page, records = opened[0], opened[1]
    cells = page.eval_on_selector_all("#heatmap [id^='cell|']", "nodes => nodes.map(n => n.id)")
    expected = {f"cell|{r['scenario']}|{r['kind']}" for r in records}
    assert len(expected) == 98  # the sample has both kinds of all 49 scenarios
    assert sorted(cells) == sorted(expected)


def test_the_sections_table_shows_the_jsonl_counts(opened):
    page, records = opened[0], opened[1]
    rows = page.eval_on_selector_all("#sections tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.innerText))")
    correct = {}
    for record in records:
        goal = "Harmlessness" if record["scenario"].startswith("harmlessness/") else "Helpfulness"
        key = f"{goal} {'Pairwise' if record['kind'] == 'pairwise' else 'BoN'}"
        right, total = correct.get(key, (0, 0))
        correct[key] = (right + record["correct"], total + 1)
    shown = {row[0]: row[3] for row in rows if row[0] != "Overall"}
    assert shown == {key: f"{right}/{total}" for key, (right, total) in correct.items()}


def test_the_misses_browser_filters_by_scenario_kind_and_margin(opened):
    page, records = opened[0], opened[1]
    misses = [r for r in records if not r["correct"]]

    def shown() -> int:
        return page.eval_on_selector_all("#misses-table tbody tr", "rows => rows.length")

    assert shown() == len(misses)
    assert page.inner_text("#misses-count") == f"{len(misses)} of {len(misses)} misses shown"
    scenario = "chat/casual_conversation"
    page.select_option("#filter-scenario", scenario)
    assert shown() == sum(r["scenario"] == scenario for r in misses)
    page.select_option("#filter-kind", "bon")
    assert shown() == sum(r["scenario"] == scenario and r["kind"] == "bon" for r in misses)
    page.select_option("#filter-scenario", "")
    page.select_option("#filter-kind", "")
    limit = sorted(abs(margin_of(r["scores"])) for r in misses)[len(misses) // 2]
    page.fill("#filter-margin", repr(limit))
    assert shown() == sum(abs(margin_of(r["scores"])) <= limit for r in misses)


def test_a_miss_shows_its_conversation_answers_and_scores(opened):
    page, records = opened[0], opened[1]
    miss = next(r for r in records if not r["correct"] and r["kind"] == "pairwise")
    page.select_option("#filter-scenario", miss["scenario"])
    page.select_option("#filter-kind", "pairwise")
    row = page.locator("#misses-table tbody tr", has_text=miss["uid"]).first
    row.click()
    detail = page.inner_text("#miss-detail")
    found = [item for path in (sample_dataset() / "Pairwise_set").rglob("*.json")
             for item in json.loads(path.read_text()) if str(item["pair_uid"]) == miss["uid"]]
    assert len(found) == 1
    raw = found[0]
    assert raw["conversation_input"][-1]["content"][:200] in detail
    assert raw["chosen"]["answer"][:200] in detail and raw["reject"]["answer"][:200] in detail
    assert f"chosen (score {miss['scores'][0]}" in detail or f"chosen (score {miss['scores'][0]:g}" in detail
    assert f"by {raw['chosen']['llm_name']}" in detail


def test_without_matplotlib_the_run_refuses_before_scoring(tmp_path):
    blocker = tmp_path / "blocker"
    (blocker / "matplotlib").mkdir(parents=True)
    (blocker / "matplotlib" / "__init__.py").write_text("raise ImportError('not installed here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])}
    done = run_with_page(tmp_path / "run", "length", env=env)
    assert done.returncode == pytest.ExitCode.USAGE_ERROR
    assert ("--rmb-html draws its charts with matplotlib, which is not installed: pip install 'pytest-rmb[report]'"
            in done.stderr)
    assert not (tmp_path / "run" / "page.html").exists()


def test_a_judge_run_shows_its_figures_and_each_missed_verdict(browser, stubs, tmp_path):
    stub = stubs()
    workdir = tmp_path / "judge"
    done = run_with_page(workdir, "openai:stub-judge", "--rmb-model-arg", f"base_url={stub.base_url}",
                         "--rmb-json", "summary.json")
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-3000:]
    judge = json.loads((workdir / "summary.json").read_text())["judge"]["overall"]
    records = [json.loads(line) for line in (workdir / "samples.jsonl").read_text().splitlines()]
    page = browser.new_page()
    try:
        page.goto((workdir / "page.html").as_uri())
        figures = dict(page.eval_on_selector_all("#judge tbody tr",
                                                 "rows => rows.map(r => [r.cells[0].innerText, r.cells[1].innerText])"))
        # The stand-in prefers the longer answer in either order: no flip, and A named on about half.
        assert json.loads(figures["flips"]) == sum(
            bool((v.get("detail") or {}).get("flip")) for r in records for v in r["verdicts"] if v) == judge["flips"]
        votes = [vote for r in records for v in r["verdicts"] if v
                 for order in v["detail"]["orders"] for vote in order["votes"]]
        assert json.loads(figures["a_share"]) == pytest.approx(votes.count("A") / len(votes))
        miss = next(r for r in records if not r["correct"])
        page.select_option("#filter-scenario", miss["scenario"])
        page.locator("#misses-table tbody tr", has_text=miss["uid"]).first.click()
        lost = next(v for v in miss["verdicts"] if v is not None and v["won"] is not True)
        assert f'"won": {json.dumps(lost["won"])}' in page.inner_text("#miss-detail")
        assert lost["reason"] in page.inner_text("#miss-detail")
    finally:
        page.close()


def test_only_the_surest_misses_of_a_cell_carry_their_texts():
    from pytest_rmb.data import Message, PairSample, Response
    from pytest_rmb.html_report import TEXTS_PER_CELL, miss_entries

    margins = [-0.5, -3.0, -0.1, -7.0, -2.0, -0.0, -1.0, -4.0, -6.0, -0.2, -5.0, -0.3]
    records = [{"scenario": "chat/discussion", "kind": "pairwise", "uid": str(i), "correct": False,
                "scores": [0.0, -m]} for i, m in enumerate(margins)]
    samples = {("chat/discussion", "pairwise", str(i)): PairSample("chat/discussion", str(i),
                                                                   (Message("user", f"question {i}"),),
                                                                   Response("gen-a", f"chosen {i}"),
                                                                   Response("gen-b", f"rejected {i}"))
               for i in range(len(margins))}
    entries = miss_entries(records, samples)
    assert [e["uid"] for e in entries] == [str(i) for i in range(len(margins))]  # every miss, in uid order
    surest = sorted(range(len(margins)), key=lambda i: margins[i])[:TEXTS_PER_CELL]
    assert {e["uid"] for e in entries if "answers" in e} == {str(i) for i in surest}
    first = next(e for e in entries if e["uid"] == str(surest[0]))
    assert first["answers"][0] == {"label": "chosen", "text": f"chosen {surest[0]}", "generator": "gen-a"}
