"""``--rmb-html PATH``: the run as one self-contained page.

Everything is inline (styles, the script of the misses browser, the charts as SVG drawn by
matplotlib), so the page opens from a file with no network request, today and in a year. Sections
with their intervals and the length baseline; a heatmap of every scenario by kind, coloured by
accuracy, with the cells at or below the length baseline marked; the per-task bars; a misses
browser (filter by scenario, kind and margin; each miss shows the conversation, the answers and the
model's scores or the judge's verdicts); the judge's figures where there are any; provenance.

The summary and the per-sample records are the only inputs, plus the texts of the missed samples,
read again from their data files (the records carry ids, not texts).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_rmb.charts import figure_svg, new_figure
from pytest_rmb.data import PAIRWISE, Sample, uid_sort_key
from pytest_rmb.metrics import margin
from pytest_rmb.report import KIND_TITLES, goal_order, meaning_lines

# The page stays a few megabytes on a weak model's ten thousand misses: every miss is listed, but
# only the surest of each scenario and kind (largest |margin|) carry their texts, each cut here.
TEXT_LIMIT = 1500
TEXTS_PER_CELL = 10

# -- charts -----------------------------------------------------------------------------------------


def scenario_rows(summary: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """The scenarios in the heatmap's order: by goal (helpfulness first), task, then name."""
    return sorted(summary["scenarios"].items(),
                  key=lambda item: (goal_order(item[1]["goal"]), item[1]["task_name"], item[1]["name"]))


def heatmap_svg(summary: Mapping[str, Any]) -> str:
    """Scenarios (rows) by kind (columns), coloured by accuracy; a cell at or below the length
    baseline is outlined and marked. Each cell's SVG group has the id ``cell|SCENARIO|KIND``."""
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    rows = scenario_rows(summary)
    kinds = [k for k in KIND_TITLES if any(row[k]["total"] for _, row in rows)]
    figure = new_figure("--rmb-html", figsize=(2.2 + 1.3 * len(kinds), 0.6 + 0.24 * len(rows)))
    axes = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    colours = colormaps["viridis"]
    for y, (scenario_id, row) in enumerate(rows):
        for x, kind in enumerate(kinds):
            cell = row[kind]
            accuracy = cell["accuracy"]
            null = cell.get("null_accuracy")
            below = accuracy is not None and null is not None and accuracy <= null
            face = "#dddddd" if accuracy is None else colours(accuracy)
            patch = Rectangle((x, y), 1, 1, facecolor=face, edgecolor="#d62728" if below else "white",
                              linewidth=2.0 if below else 0.5)
            patch.set_gid(f"cell|{scenario_id}|{kind}")
            axes.add_patch(patch)
            label = "n/a" if accuracy is None else f"{accuracy:.2f}" + (" ≤len" if below else "")
            dark = accuracy is not None and accuracy < 0.6
            axes.text(x + 0.5, y + 0.5, label, ha="center", va="center", fontsize=7,
                      color="white" if dark else "black")
    axes.set_xlim(0, len(kinds))
    axes.set_ylim(len(rows), 0)
    axes.set_xticks([x + 0.5 for x in range(len(kinds))], [KIND_TITLES[k] for k in kinds])
    axes.xaxis.tick_top()
    axes.set_yticks([y + 0.5 for y in range(len(rows))],
                    [f"{row['task_name']} / {row['name']}" for _, row in rows], fontsize=7)
    axes.tick_params(length=0)
    for spine in axes.spines.values():
        spine.set_visible(False)
    return figure_svg(figure, inline=True, tight=True)


def task_bars_svg(summary: Mapping[str, Any]) -> str:
    """Each task's accuracy per kind, with the length baseline as a black tick."""
    tasks = sorted(summary["tasks"].items(), key=lambda item: (goal_order(item[1]["goal"]), item[1]["name"]))
    kinds = [k for k in KIND_TITLES if any(task[k]["total"] for _, task in tasks)]
    figure = new_figure("--rmb-html", figsize=(7.0, 0.8 + 0.28 * len(tasks) * len(kinds)))
    axes = figure.add_subplot(1, 1, 1)
    labels = []
    y = 0
    colours = {"pairwise": "#1f77b4", "bon": "#ff7f0e"}
    for _, task in tasks:
        for kind in kinds:
            cell = task[kind]
            if cell["accuracy"] is not None:
                axes.barh(y, cell["accuracy"], color=colours[kind], height=0.8,
                          label=KIND_TITLES[kind] if KIND_TITLES[kind] not in axes.get_legend_handles_labels()[1]
                          else None)
                if cell.get("null_accuracy") is not None:
                    axes.plot([cell["null_accuracy"]] * 2, [y - 0.4, y + 0.4], color="black", linewidth=1.5)
            labels.append(f"{task['name']} ({KIND_TITLES[kind]})")
            y += 1
    axes.set_yticks(range(len(labels)), labels, fontsize=7)
    axes.set_ylim(len(labels) - 0.5, -0.5)
    axes.set_xlim(0, 1)
    axes.set_xlabel("accuracy (black tick: the length baseline)")
    axes.legend(loc="lower right", fontsize=7)
    return figure_svg(figure, inline=True, tight=True)


# -- the misses -------------------------------------------------------------------------------------


def _cut(text: str) -> str:
    if len(text) <= TEXT_LIMIT:
        return text
    return f"{text[:TEXT_LIMIT]}… ({len(text) - TEXT_LIMIT} more characters)"


def miss_entries(records: Iterable[Mapping[str, Any]], samples: Mapping[tuple[str, str, str], Sample]) -> list[dict]:
    """Every missed record, ready for the page; the ``TEXTS_PER_CELL`` surest of each scenario and
    kind with their texts, where the sample was found."""
    entries = []
    for record in records:
        if record.get("correct"):
            continue
        scores = record.get("scores")
        entries.append({
            "scenario": record["scenario"], "kind": record["kind"], "uid": record["uid"],
            "margin": margin(scores) if scores else None,
            "scores": scores, "verdicts": record.get("verdicts"),
        })
    cells: dict[tuple[str, str], list[dict]] = {}
    for entry in entries:
        cells.setdefault((entry["scenario"], entry["kind"]), []).append(entry)
    for cell in cells.values():
        cell.sort(key=lambda e: (-abs(e["margin"] or 0.0), uid_sort_key(e["uid"])))
        for entry in cell[:TEXTS_PER_CELL]:
            sample = samples.get((entry["scenario"], entry["kind"], entry["uid"]))
            if sample is None:
                continue
            entry["conversation"] = [[m.role, _cut(m.content)] for m in sample.conversation]
            names = ["chosen", "rejected"] if sample.kind == PAIRWISE else \
                ["best"] + [f"loser {i}" for i in range(1, len(sample.responses))]
            entry["answers"] = [{"label": name, "text": _cut(response.text), "generator": response.model}
                                for name, response in zip(names, sample.responses)]
    entries.sort(key=lambda e: (e["scenario"], e["kind"], uid_sort_key(e["uid"])))
    return entries


# -- the page ---------------------------------------------------------------------------------------


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], table_id: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _sections(summary: Mapping[str, Any]) -> str:
    rows = []
    for key, section in summary["sections"].items():
        if not section["total"]:
            continue
        ci = section.get("ci95")
        goal, kind = key.split(".")
        rows.append([f"{goal.capitalize()} {KIND_TITLES[kind]}", _percent(section["accuracy"]),
                     "n/a" if not ci else f"[{ci[0]:.4f}, {ci[1]:.4f}]", f"{section['correct']}/{section['total']}",
                     _percent(section.get("null_accuracy")), _percent(section.get("macro"))])
    overall = summary.get("overall")
    ci = summary.get("overall_ci95")
    rows.append(["Overall", _percent(overall), "n/a" if not ci else f"[{ci[0]:.4f}, {ci[1]:.4f}]", "",
                 _percent(summary.get("overall_null")), ""])
    markdown = (summary.get("analysis") or {}).get("markdown_baseline")
    header = ["Section", "Accuracy", "95% CI", "Correct", "Length baseline", "Macro"]
    if markdown:
        header.append("Markdown baseline")
        keys = [key for key, section in summary["sections"].items() if section["total"]]
        for row, key in zip(rows, keys):
            row.append(_percent(markdown["sections"][key]["accuracy"]))
        rows[-1].append(_percent(markdown["overall"]))
    return _table(header, rows, "sections")


def _meaning(summary: Mapping[str, Any]) -> str:
    """The terminal's "what this score means" lines, then the generators and the deciles in full."""
    analysis = summary.get("analysis") or {}
    items = "".join(f"<li>{html.escape(line)}</li>" for line in meaning_lines(summary))
    parts = ["<h2>What this score means</h2>", f"<ul id='meaning'>{items}</ul>"]
    generators = analysis.get("generators")
    if generators:
        rows = [[name, row["samples"], f"{row['label_win_rate']:.3f}", f"{row['model_win_rate']:.3f}",
                 f"{row['label_strength']:+.3f}", f"{row['model_strength']:+.3f}", "yes" if row["favoured"] else ""]
                for name, row in sorted(generators["generators"].items(), key=lambda item: -item[1]["label_strength"])]
        parts.append("<h3>Generators</h3>" + _table(
            ["Generator", "Samples", "Wins (labels)", "Wins (model)", "Strength (labels)", "Strength (model)",
             "Favoured"], rows, "generators"))
    calibrated = analysis.get("calibration")
    if calibrated:
        rows = [[str(i + 1), d["samples"], f"{d['smallest']:.4g} to {d['largest']:.4g}", f"{d['accuracy']:.3f}"]
                for i, d in enumerate(calibrated["deciles"])]
        parts.append("<h3>Accuracy by margin decile</h3>" + _table(["Decile", "Samples", "|margin|", "Accuracy"],
                                                                   rows, "deciles"))
    return "".join(parts)


def _flatten(prefix: str, value: Any) -> Iterable[tuple[str, str]]:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            yield from _flatten(f"{prefix}.{key}" if prefix else str(key), inner)
    else:
        yield prefix, json.dumps(value) if not isinstance(value, str) else value


def _judge(summary: Mapping[str, Any]) -> str:
    judge = summary.get("judge")
    if not judge:
        return ""
    overall = judge.get("overall", judge)
    rows = [[name, value] for name, value in _flatten("", overall)]
    return "<h2>Judge</h2>" + _table(["Figure", "Value"], rows, "judge")


def _provenance(summary: Mapping[str, Any]) -> str:
    provenance = dict(summary.get("provenance") or {})
    files = provenance.pop("data_files", {}) or {}
    rows = [[name, value] for name, value in _flatten("", provenance)]
    rows.append(["data files", f"{len(files)} (digests in the summary JSON)"])
    rows += [[f"engine.{name}", value] for name, value in _flatten("", summary.get("engine") or {})]
    return _table(["Field", "Value"], rows, "provenance")


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:70em;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.2em .6em;text-align:left}
th{background:#f3f3f3}.banner{background:#fff3cd;border:1px solid #e0c060;padding:.5em 1em}
#misses-table tr{cursor:pointer}#misses-table tr:hover{background:#eef}
.answer{border-left:3px solid #999;margin:.5em 0;padding:.2em .8em;white-space:pre-wrap}
.turn{white-space:pre-wrap;margin:.3em 0}.filters label{margin-right:1.5em}
pre{white-space:pre-wrap;background:#f8f8f8;padding:.5em}
"""

SCRIPT = """
(function () {
  const misses = JSON.parse(document.getElementById('misses-data').textContent);
  const scenario = document.getElementById('filter-scenario');
  const kind = document.getElementById('filter-kind');
  const maxMargin = document.getElementById('filter-margin');
  const body = document.querySelector('#misses-table tbody');
  const count = document.getElementById('misses-count');
  const detail = document.getElementById('miss-detail');
  for (const id of [...new Set(misses.map(m => m.scenario))]) {
    const option = document.createElement('option');
    option.value = id; option.textContent = id; scenario.appendChild(option);
  }
  function text(tag, content, cls) {
    const node = document.createElement(tag); node.textContent = content;
    if (cls) node.className = cls; return node;
  }
  function show(miss) {
    detail.replaceChildren(text('h3', miss.scenario + ' ' + miss.kind + ' [' + miss.uid + ']'));
    if (!miss.conversation) {
      detail.appendChild(text('p', 'Its texts are not in this page (only the surest misses of each scenario '
        + 'and kind carry theirs); the data file has them.'));
    }
    for (const [role, content] of (miss.conversation || [])) {
      detail.appendChild(text('div', role + ': ' + content, 'turn'));
    }
    (miss.answers || []).forEach((answer, i) => {
      const score = miss.scores ? ' (score ' + miss.scores[i] + ')' : '';
      const who = answer.generator ? ', by ' + answer.generator : '';
      detail.appendChild(text('h4', answer.label + score + who));
      detail.appendChild(text('div', answer.text, 'answer'));
    });
    if (miss.verdicts) detail.appendChild(text('pre', JSON.stringify(miss.verdicts, null, 2)));
  }
  function render() {
    const limit = maxMargin.value === '' ? Infinity : Number(maxMargin.value);
    const shown = misses.filter(m => (!scenario.value || m.scenario === scenario.value)
      && (!kind.value || m.kind === kind.value)
      && (m.margin === null || Math.abs(m.margin) <= limit));
    body.replaceChildren(...shown.map(m => {
      const row = document.createElement('tr');
      row.appendChild(text('td', m.scenario)); row.appendChild(text('td', m.kind));
      row.appendChild(text('td', m.uid));
      row.appendChild(text('td', m.margin === null ? 'n/a' : m.margin.toPrecision(4)));
      row.addEventListener('click', () => show(m));
      return row;
    }));
    count.textContent = shown.length + ' of ' + misses.length + ' misses shown';
  }
  for (const control of [scenario, kind, maxMargin]) control.addEventListener('input', render);
  render();
})();
"""


def render_html(summary: Mapping[str, Any], misses: Sequence[Mapping[str, Any]]) -> str:
    """The page, as text."""
    title = f"RMB: {summary.get('model')} on {summary.get('dataset')}"
    banner = ""
    if summary.get("partial"):
        banner = (f"<p class='banner'>Partial run: {html.escape(str(summary.get('stop_reason') or 'stopped early'))}. "
                  "These numbers cover only the items that ran.</p>")
    data = json.dumps(list(misses), ensure_ascii=False).replace("</", "<\\/")
    kinds = "".join(f"<option value='{k}'>{v}</option>" for k, v in KIND_TITLES.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<style>{STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>{banner}
<h2>Sections</h2>{_sections(summary)}
<h2>Every scenario</h2><p>Accuracy per scenario and kind; a red outline and "≤len" mark a cell at or below the
length baseline (the longer answer wins) on the same samples.</p>
<div id="heatmap">{heatmap_svg(summary)}</div>
<h2>Tasks</h2><div id="task-bars">{task_bars_svg(summary)}</div>
{_meaning(summary)}
{_judge(summary)}
<h2>Misses</h2><p>Every miss is listed; click a row to read it. The {TEXTS_PER_CELL} surest misses of each
scenario and kind (largest |margin|) carry their texts, cut at {TEXT_LIMIT} characters.</p>
<div class="filters"><label>Scenario <select id="filter-scenario"><option value="">all</option></select></label>
<label>Kind <select id="filter-kind"><option value="">all</option>{kinds}</select></label>
<label>|margin| at most <input id="filter-margin" type="number" step="any" min="0"></label></div>
<p id="misses-count"></p>
<table id="misses-table"><thead><tr><th>Scenario</th><th>Kind</th><th>Id</th><th>Margin</th></tr></thead>
<tbody></tbody></table><div id="miss-detail"></div>
<h2>Provenance</h2>{_provenance(summary)}
<script type="application/json" id="misses-data">{data}</script>
<script>{SCRIPT}</script>
</body></html>
"""


def missed_samples(records: Iterable[Mapping[str, Any]], scenarios: Iterable[Any],
                   dataset: Path | None) -> dict[tuple[str, str, str], Sample]:
    """The samples of the missed records, read again from their data files; a file that cannot be
    read now leaves its misses without texts (the page says only what it knows)."""
    wanted: dict[tuple[str, str], set[str]] = {}
    for record in records:
        if not record.get("correct"):
            wanted.setdefault((record["scenario"], record["kind"]), set()).add(record["uid"])
    by_id = {scenario.id: scenario for scenario in scenarios}
    found: dict[tuple[str, str, str], Sample] = {}
    for (scenario_id, kind), uids in wanted.items():
        scenario = by_id.get(scenario_id)
        if scenario is None:
            continue
        try:
            path, _ = scenario.locate(dataset, kind)
            if path is None:
                continue
            contents = scenario.read(path, kind)
        except Exception:  # noqa: BLE001 - a page without some texts beats no page
            continue
        for sample in contents.samples:
            if sample.uid in uids:
                found[(scenario_id, kind, sample.uid)] = sample
    return found


def write_html(path: Path, summary: Mapping[str, Any], records: Sequence[Mapping[str, Any]],
               scenarios: Iterable[Any], dataset: Path | None) -> None:
    misses = miss_entries(records, missed_samples(records, scenarios, dataset))
    path.write_text(render_html(summary, misses), encoding="utf-8")
