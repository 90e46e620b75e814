"""Rendering of a run: rich tables on the terminal, JSON, JSONL and Markdown files. No computation here.

Tables fit the terminal (80 columns in a CI log or a file) by wrapping names between their words
(``Name``); a number is never wrapped or cut: a table whose numbers and longest words cannot fit is
drawn wider than the terminal instead (``fit_width``). Each column is explained once, below the
first table that shows it (``LEGEND``). The compare command's rendering lives beside it in compare.py.
"""

from __future__ import annotations

import io
import re
import textwrap
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonlines
from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from pytest_rmb.backends import split_spec
from pytest_rmb.backends.baselines import LengthScorer
from pytest_rmb.data import uid_sort_key
from pytest_rmb.gate import OPERATORS
from pytest_rmb.metrics import KINDS, SECTIONS, section_key
from pytest_rmb.options import SAMPLE
from pytest_rmb.scenarios import GOALS
from pytest_rmb.self_check import describe as describe_self_check
from pytest_rmb.summary import RunSummary, partial_account

KIND_TITLES = {"pairwise": "Pairwise", "bon": "BoN"}
# Pointing at a partial copy of RMB should not print a line for each of 98 files.
MISSING_SHOWN = 10


def fmt_accuracy(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def fmt_interval(interval: list[float] | None) -> str:
    return "-" if interval is None else f"[{interval[0]:.4f}, {interval[1]:.4f}]"


def fmt_tally(tally: Mapping[str, Any]) -> str:
    if not tally["total"]:
        return "-"
    return f"{tally['accuracy']:.4f} ({tally['correct']}/{tally['total']})"


NULL_HEADER = "Length"
NULL_MARK = "!"


def fmt_null(null: float | None, beats: bool | None) -> str:
    """The length baseline's accuracy, marked where the model does not beat it."""
    if null is None:
        return "-"
    return f"{null:.4f}{NULL_MARK}" if beats is False else f"{null:.4f} "


def has_null(entries: Iterable[Mapping[str, Any]]) -> bool:
    return any(entry.get("null_accuracy") is not None for entry in entries)


def is_length_model(summary: Mapping[str, Any]) -> bool:
    """The run's model is the length baseline itself: a Length column would repeat its accuracy."""
    model = summary.get("model")
    return isinstance(model, str) and split_spec(model) == ("baseline", LengthScorer.name)


def shows_null(summary: Mapping[str, Any], null_baseline: bool) -> bool:
    """Whether the tables get a Length column (when the summary has the figures for one)."""
    return null_baseline and not is_length_model(summary)


# What each column header means, printed once below the first table that shows it. The random
# baseline keeps its Length column: how far below the length baseline chance lies is worth seeing.
LEGEND = {
    "Section": "goal and kind of sample",
    "Task": "a helpfulness task of RMB, its harmlessness part, or a task of your own sets; under its goal",
    "Scenario": "the scenario's id (as -k, gates and compare name it), under its goal",
    "Accuracy": "right samples over all samples (micro average): a pair is right when the chosen answer "
                "scores strictly higher, a Best-of-N list when the best answer beats every loser",
    NULL_HEADER: f"the length baseline (longer answer wins) on the same samples; {NULL_MARK} where the model "
                 "does not beat it",
    "95% CI": "95% bootstrap interval of the value (--rmb-bootstrap resamples)",
    "Correct": "right samples / samples",
    "Macro": "mean of the section's scenario accuracies, each scenario weighing the same",
    "Pairwise": "accuracy on pairs (right/total)",
    "BoN": "accuracy on Best-of-N lists (right/total)",
    "Tie-adj.": "accuracy with each flip counted as half right",
    "Flips": "comparisons whose verdict changed with the order of the answers (each one a loss)",
    "A share": "verdicts for the answer shown first; far from 50% (1/N of N answers, listwise) is a position bias",
    "No verdict": "comparisons left without a verdict",
    "Empty": "comparisons that got only empty replies (a rerun asks them again)",
    "API fail": "comparisons lost to failed requests",
    "Metric": "overall, a section, task:ID.KIND or scenario:ID.KIND",
    "Value": "this run's value of the metric",
    "Bar": "what the value must meet",
    "Result": "the gate's verdict; why one failed or was not evaluated is in its detail",
    "Now": "this run's accuracy on the samples it shares with the baseline",
    "Baseline": "the baseline run's accuracy on the same samples",
    "Delta": "Now minus Baseline",
    "Delta 95% CI": "95% paired-bootstrap interval of Delta",
}
LEGEND_INDENT = "    "


def legend_lines(headers: Iterable[str], explained: set[str], width: int) -> list[str]:
    """One entry per header not yet explained in this output (``explained`` records it), wrapped at
    words to ``width`` with continuation lines indented."""
    lines = []
    for header in headers:
        if header in explained or header not in LEGEND:
            continue
        explained.add(header)
        lines += textwrap.wrap(f"{header}: {LEGEND[header]}", width=max(width, 40),
                               subsequent_indent=LEGEND_INDENT, break_on_hyphens=False)
    return lines


def table_headers(table: Table) -> list[str]:
    return [str(column.header) for column in table.columns]


# Where a name may break: after a path or word separator, or at a space. Never inside a word.
_NAME_PIECE = re.compile(r"[^\s/_.:-]*(?:[/_.:-]+|\s+|$)")


class Name:
    """A name in a table cell that wraps only between its words (at spaces, and after ``/``, ``_``,
    ``.``, ``:`` or ``-`` in an id), so that a narrow column never shows half a word; its narrowest
    width is its longest word, which ``fit_width`` honours. ``indent`` sets every line in."""

    def __init__(self, text: str, indent: int = 0):
        self.text = text
        self.indent = indent

    def pieces(self) -> list[str]:
        return [piece for piece in _NAME_PIECE.findall(self.text.strip()) if piece]

    def lines(self, width: int) -> list[str]:
        width -= self.indent
        lines = [""]
        for piece in self.pieces():
            if lines[-1] and cell_len((lines[-1] + piece).rstrip()) > width:
                lines.append("")
            lines[-1] += piece
        return [" " * self.indent + line.rstrip() for line in lines]

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        longest = max((cell_len(piece.rstrip()) for piece in self.pieces()), default=0)
        return Measurement(self.indent + longest, self.indent + cell_len(self.text.strip()))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Text]:
        yield Text("\n".join(self.lines(options.max_width)))

    def __str__(self) -> str:
        return self.text


def new_table(title: str | None = None) -> Table:
    """The look of every table: a rule under the header, no outer edges, two spaces between columns
    (three would push the headline's six columns past 80 on the full data)."""
    return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
                 collapse_padding=True)


def fit_width(console: Console, table: Table) -> Console:
    """The console to print ``table`` on: this one, or a wider twin when the table cannot fit.

    A no-wrap column (numbers, intervals) keeps its widest cell on one line; a name (``Name``) breaks
    only between words. When even the narrowest layout does not fit, the table is drawn wider than
    the terminal rather than with numbers or words cut.
    """
    for column in table.columns:
        if column.no_wrap:
            cells = [Text.from_markup(c).plain for c in (column.header, *column.cells) if isinstance(c, str)]
            column.min_width = max([column.min_width or 0, *(cell_len(cell) for cell in cells)])
    needed = Measurement.get(console, console.options.update_width(1 << 16), table).minimum
    if needed <= console.width:
        return console
    return Console(file=console.file, width=needed, force_terminal=console.is_terminal,
                   color_system=console.color_system, highlight=False)  # type: ignore[arg-type]


def sample_caveat(summary: Mapping[str, Any]) -> str:
    """Why the bundled sample's numbers judge no model: said wherever a sample run's numbers are shown."""
    if summary.get("dataset") != SAMPLE:
        return ""
    return ("the bundled sample is small and favours longer answers: its numbers are for trying the tool, "
            "not for judging a model (`pytest-rmb fetch` gets RMB itself)")


def run_title(summary: RunSummary) -> str:
    title = f"RMB: {summary['model']} on {summary['dataset']}"
    if sample_caveat(summary):
        # Short, so that the title keeps to one line at 80 columns; the line below it says why.
        title += " (for trying the tool only)"
    if summary.get("limit"):
        title += f", limited to {summary['limit']} samples per scenario and kind (seed {summary['seed']})"
    if summary.get("complete") is False:
        title += f", {incomplete_phrase(summary)}"
    if summary.get("partial"):
        title += f", {partial_phrase(summary)}"
    return title


def incomplete_phrase(summary: RunSummary) -> str:
    """What a run on a partial copy of the data says wherever its numbers are shown."""
    files = len({entry["file"] for entry in summary["missing"]})
    return f"INCOMPLETE DATA ({files} data file{'s' if files != 1 else ''} missing)"


def partial_phrase(summary: RunSummary) -> str:
    items = summary.get("items")
    ran = f": {items['ran']} of {items['selected']} items ran" if items else ""
    return f"PARTIAL RUN{ran}"




def missing_line(entry: Mapping[str, Any]) -> str:
    """One line for a scenario and kind without data: absent, empty, or something else there."""
    where = f"{entry['scenario']} {entry['kind']}: {entry['file']}"
    problem = entry.get("problem", "")
    if problem == "empty":
        return f"empty data: {where} (the file holds no records)"
    return f"missing data: {where}" + (f" ({problem})" if problem else "")


def has_sections(summary: Mapping[str, Any]) -> bool:
    """Whether any of RMB's four sections has samples: a run on only the user's own sets has none,
    and an RMB table of four empty rows would say nothing."""
    return any(summary["sections"][section_key(goal, kind)]["total"] for goal, kind in SECTIONS)


def overall_label(summary: Mapping[str, Any]) -> str:
    sections = summary["overall_sections"]
    return "Overall" if sections == len(SECTIONS) else f"Overall ({sections}/{len(SECTIONS)})"


def overall_note(summary: Mapping[str, Any]) -> str:
    sections = summary["overall_sections"]
    if sections == len(SECTIONS):
        return "Overall: unweighted mean of the four sections"
    return (f"{overall_label(summary)}: unweighted mean of the {sections} of {len(SECTIONS)} sections "
            "that have samples in this run")


def headline_table(summary: RunSummary, *, null_baseline: bool = True) -> Table:
    entries = [summary["sections"][section_key(goal, kind)] for goal, kind in SECTIONS]
    show_null = shows_null(summary, null_baseline) and has_null(entries)
    title = "RMB accuracy"
    # The headline's overall must not read like a figure of the whole benchmark when it is not one.
    qualifiers = [phrase for phrase, applies in ((incomplete_phrase, summary.get("complete") is False),
                                                  (partial_phrase, summary.get("partial"))) if applies]
    if qualifiers:
        title += " - " + ", ".join(phrase(summary) for phrase in qualifiers)
    table = new_table(title)
    table.add_column("Section")
    table.add_column("Accuracy", justify="right", no_wrap=True)
    if show_null:
        table.add_column(NULL_HEADER, justify="right", no_wrap=True)
    for column in ("95% CI", "Correct", "Macro"):
        table.add_column(column, justify="right", no_wrap=True)
    for (goal, kind), entry in zip(SECTIONS, entries):
        null = [fmt_null(entry.get("null_accuracy"), entry.get("beats_null"))] if show_null else []
        table.add_row(
            Name(f"{goal.capitalize()} {KIND_TITLES[kind]}"),
            fmt_accuracy(entry["accuracy"]),
            *null,
            fmt_interval(entry["ci95"]),
            f"{entry['correct']}/{entry['total']}",
            fmt_accuracy(entry["macro"]),
        )
    null = [fmt_null(summary.get("overall_null"), summary.get("overall_beats_null"))] if show_null else []
    table.add_row(
        Name(overall_label(summary)), fmt_accuracy(summary["overall"]), *null, fmt_interval(summary["overall_ci95"]),
        "", "", style="bold",
    )
    return table


def goal_order(goal: str) -> tuple:
    """RMB's goals first, in their order, then those of the user's own sets in natural order."""
    return (GOALS.index(goal), uid_sort_key("")) if goal in GOALS else (len(GOALS), uid_sort_key(goal))


def grouped_table(title: str, first_column: str, rows: Mapping[str, Mapping[str, Any]], name_key: str, *,
                  null_baseline: bool = True) -> Table:
    """Per task or per scenario: one row each, under a line naming their goal, in natural order
    (s1, s2, s10). The goal heads its rows rather than filling a column: a Goal column would push the
    numbers past 80 columns."""
    # A kind no row has samples of (a user's pairwise-only sets) would be a column of dashes.
    kinds = [kind for kind in KINDS if any(row[kind]["total"] for row in rows.values())] or list(KINDS)
    null_kinds = {kind for kind in kinds if null_baseline and has_null(row[kind] for row in rows.values())}
    table = new_table(title)
    table.add_column(first_column)
    for kind in kinds:
        table.add_column(KIND_TITLES[kind], justify="right", no_wrap=True)
        if kind in null_kinds:
            table.add_column(NULL_HEADER, justify="right", no_wrap=True)
    goals = sorted({row["goal"] for row in rows.values()}, key=goal_order)
    for goal in goals:
        table.add_row(Name(goal), *[""] * (len(table.columns) - 1), style="bold")
        members = [(row_id, row) for row_id, row in rows.items() if row["goal"] == goal]
        for row_id, row in sorted(members, key=lambda item: uid_sort_key(item[0])):
            label = row[name_key] if name_key else row_id
            cells: list[Any] = [Name(label, indent=2)]
            for kind in kinds:
                cells.append(fmt_tally(row[kind]))
                if kind in null_kinds:
                    cells.append(fmt_null(row[kind].get("null_accuracy"), row[kind].get("beats_null")))
            table.add_row(*cells)
    return table


def fmt_share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def judge_table(judge: Mapping[str, Any], *, show_scenarios: bool = False) -> Table:
    """A pairwise model's protocol figures per section (and per scenario with ``show_scenarios``):
    what the plain accuracy does not show."""
    table = new_table("Judge")
    table.add_column("Section")
    # Empty: comparisons with only empty replies (misses a rerun asks again), shown when there are
    # any, so the usual table keeps its width at 80 columns; summaries written before they were
    # counted apart lack the key.
    empty = bool(judge["overall"].get("empty_replies"))
    # Cut off: misses whose reply hit the reply limit before its verdict; shown, like Empty, when any.
    cut = bool(judge["overall"].get("cut_off"))
    for column in ("Accuracy", "Tie-adj.", "Flips", "A share", "No verdict", *(("Cut off",) if cut else ()),
                   *(("Empty",) if empty else ()), "API fail"):
        table.add_column(column, justify="right", no_wrap=True)

    def add(label: Name, entry: dict, style: str | None = None) -> None:
        cells = [fmt_accuracy(entry["accuracy"]), fmt_accuracy(entry["tie_adjusted"]), fmt_share(entry["flip_rate"]),
                 fmt_share(entry["a_share"]), str(entry["no_verdict"])]
        if cut:
            cells.append(str(entry.get("cut_off", 0)))
        if empty:
            cells.append(str(entry.get("empty_replies", 0)))
        table.add_row(label, *cells, str(entry["api_failures"]), style=style)

    # The headline's order; a section of no sample is not in the judge's figures.
    order = {section_key(goal, kind): index for index, (goal, kind) in enumerate(SECTIONS)}
    for name in sorted(judge["sections"], key=lambda name: (order.get(name, len(order)), uid_sort_key(name))):
        add(Name(name), judge["sections"][name])
    # Micro over every sample of the run (the headline's Overall is the mean of the sections).
    add(Name("all samples"), judge["overall"], "bold")
    if show_scenarios:
        table.add_section()
        for scenario in sorted(judge["scenarios"], key=uid_sort_key):
            for kind, entry in judge["scenarios"][scenario].items():
                add(Name(f"{scenario} {kind}"), entry)
    return table


def inexact_line(judge: Mapping[str, Any]) -> str:
    """Best-of-N lists stopped early after a flip: their tie-adjusted value is an upper bound."""
    count = judge["overall"].get("tie_adjusted_inexact", 0)
    if not count:
        return ""
    return (f"tie-adjusted: {count} Best-of-N list(s) stopped early after a flip count their skipped "
            "comparisons as won (an upper bound for those lists)")


def position_line(judge: Mapping[str, Any]) -> str:
    """Listwise votes: the A share a judge blind to positions would give is 1/N, not one half."""
    expected = judge["overall"].get("a_share_expected")
    share = judge["overall"].get("a_share")
    if expected is None or share is None or abs(expected - 0.5) < 1e-9:
        return ""
    return (f"A share: {share:.1%} of the votes named the answer shown first; a judge blind to positions "
            f"would give {expected:.1%} (1/N over lists of N answers)")


def panel_lines(judge: Mapping[str, Any]) -> list[str]:
    """A panel's judges, one line each: agreement with the majority, and the judge alone."""
    lines = []
    for member in judge.get("panel") or []:
        agreement = ("no comparison decided by both" if member["agreement"] is None else
                     f"agrees with the panel on {member['agreement']:.1%} ({member['agree']}/{member['decided']})")
        alone = ("" if member["accuracy"] is None else
                 f"; alone {member['accuracy']:.4f} on the {member['pairwise_judged']} pairwise samples it judged")
        lines.append(f"panel judge {member['judge']}: {agreement}{alone}")
    return lines


def token_line(engine: dict) -> str:
    """Tokens the run's requests used, and those its cached verdicts had cost, apart."""
    if not any(engine.get(key) for key in ("prompt_tokens", "completion_tokens", "cached_prompt_tokens")):
        return ""
    return (f"tokens: {engine.get('prompt_tokens', 0):.0f} prompt + {engine.get('completion_tokens', 0):.0f} "
            f"completion{_reasoning_part(engine, '')} in {engine.get('requests', 0):.0f} requests now; from the "
            f"cache {engine.get('cached_prompt_tokens', 0):.0f} + {engine.get('cached_completion_tokens', 0):.0f}"
            f"{_reasoning_part(engine, 'cached_')}")


def _reasoning_part(engine: Mapping[str, Any], prefix: str) -> str:
    """Of the completion tokens, the reasoning and the answer apart, where any reasoning was counted;
    and the replies that reasoned without the server saying how many tokens it took."""
    reasoning = engine.get(f"{prefix}reasoning_tokens", 0)
    unknown = engine.get(f"{prefix}reasoning_tokens_unknown", 0)
    parts = []
    if reasoning:
        answer = engine.get(f"{prefix}completion_tokens", 0) - reasoning
        parts.append(f"{reasoning:.0f} reasoning + {answer:.0f} answer")
    if unknown:
        parts.append(f"reasoning tokens unknown in {unknown:.0f} replies")
    return f" ({'; '.join(parts)})" if parts else ""


def engine_line(engine: dict) -> str:
    """The terminal's account of the work: what the results rest on, scored now and from the cache apart."""
    seconds = f"{engine.get('scoring_seconds', 0):.2f} s"
    batches = f"{engine.get('batches', 0)} batches"
    cached = engine.get("cache_hits", 0)
    # Stats written before the engine counted loads do not say: take the model as loaded.
    loaded = engine.get("model_loads", 1) != 0
    not_loaded = "," if loaded else "; model not loaded;"
    if engine.get("comparison_slots"):
        made = engine.get("comparisons_made", 0)
        line = (f"engine: {made} comparisons judged now{not_loaded} {cached} from the cache, for "
                f"{engine['comparison_slots']} comparison slots in {batches}, {seconds}")
        if engine.get("comparisons_skipped"):
            line += f", {engine['comparisons_skipped']} skipped after a lost comparison"
    else:
        scored = engine.get("texts_scored", 0)
        texts = "unique texts" if loaded else "texts"
        line = (f"engine: {scored} {texts} scored now{not_loaded} {cached} from the score cache, for "
                f"{engine.get('response_slots', 0)} response slots in {batches}, {seconds}")
        if engine.get("truncated"):
            line += f"; {engine['truncated']} of {scored + cached} truncated"
    if engine.get("oom_retries"):
        line += f", {engine['oom_retries']} out-of-memory retries"
    if engine.get("listwise_requests_saved"):
        line += (f"; listwise: {engine['listwise_requests_saved']:.0f} requests fewer than comparing each "
                 "list's best with every other answer")
    if engine.get("empty_replies"):
        line += f"; {engine['empty_replies']} comparisons got only empty replies (a rerun asks them again)"
    if engine.get("cut_off_replies"):
        # A rater's replies are cut off before their rating, a judge's before their verdict.
        said = "rating" if "no_rating" in engine else "verdict"
        line += (f"; {engine['cut_off_replies']:.0f} replies cut off at the reply limit before their {said}, "
                 f"{engine.get('cut_offs_rescued', 0):.0f} rescued by a follow-up turn")
    if engine.get("no_rating"):
        cut = f", {engine['no_rating_cut_off']:.0f} of them cut off" if engine.get("no_rating_cut_off") else ""
        line += f"; {engine['no_rating']:.0f} answers got no rating (their samples are misses{cut})"
    if engine.get("cache_write_failures"):
        line += f"; {engine['cache_write_failures']} results not saved in the cache (a rerun asks them again)"
    return line


GATE_STYLES = {"PASS": "green", "FAIL": "bold red", "NOT EVALUATED": "yellow"}


def is_baseline_gate(gate: Mapping[str, Any]) -> bool:
    # A baseline gate's reference reads 'baseline VALUE' ('baseline -' when nothing was shared).
    return gate["reference"].startswith("baseline ")


def gate_name(gate: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> str:
    """A gate as the line of failed gates names it: which metric, and against what."""
    metric, reference = gate["metric"], gate["reference"]
    if is_baseline_gate(gate):
        entry = (baseline or {}).get("sections", {}).get(metric)
        if entry is None or baseline is None:
            return f"{metric} vs baseline (no shared samples)"
        return f"{metric} vs baseline ({entry['delta']:+.4f} < -{baseline['max_drop']:g})"
    if reference.split(" ")[0] in OPERATORS:
        return f"{metric} {reference} (threshold)"
    return f"{metric} ({reference})"


def fmt_status(status: str) -> str:
    return f"[{GATE_STYLES[status]}]{status}[/]"


def gates_table(gates: Sequence[Mapping[str, Any]]) -> Table:
    """Bars on this run's own values (thresholds, the data's completeness, the self-check): metric,
    value, bar, the value's interval, result. Baseline gates have a table of their own."""
    table = new_table("Gates")
    table.add_column("Metric")
    table.add_column("Value", no_wrap=True, justify="right")
    table.add_column("Bar", no_wrap=True)
    table.add_column("95% CI", no_wrap=True, justify="right")
    table.add_column("Result", no_wrap=True)
    for gate in gates:
        table.add_row(Name(gate["metric"]), fmt_accuracy(gate["value"]), gate["reference"],
                      fmt_interval(gate["interval"]), fmt_status(gate["status"]))
    return table


def baseline_gates_table(gates: Sequence[Mapping[str, Any]], baseline: Mapping[str, Any] | None) -> Table:
    """This run against the baseline on the samples both share: the two accuracies, their difference
    and the difference's paired interval (not a value's interval: that is the other table's)."""
    table = new_table("Baseline gates")
    table.add_column("Metric")
    for column in ("Now", "Baseline", "Delta", "Delta 95% CI"):
        table.add_column(column, no_wrap=True, justify="right")
    table.add_column("Result", no_wrap=True)
    for gate in gates:
        table.add_row(Name(gate["metric"]), *baseline_cells(gate, baseline), fmt_status(gate["status"]))
    return table


def baseline_cells(gate: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> list[str]:
    """Now, Baseline, Delta and the delta's interval of a baseline gate ("-" where nothing was compared)."""
    entry = (baseline or {}).get("sections", {}).get(gate["metric"]) if gate["value"] is not None else None
    if entry is None:
        return [fmt_accuracy(gate["value"]), "-", "-", "-"]
    low, high = entry["ci95"]
    return [fmt_accuracy(gate["value"]), fmt_accuracy(entry["baseline"]), f"{entry['delta']:+.4f}",
            f"[{low:+.4f}, {high:+.4f}]"]


def meaning_lines(summary: Mapping[str, Any]) -> list[str]:
    """The "what this score means" block: one line per analysis that has something to say."""
    analysis = summary.get("analysis") or {}
    lines = []
    markdown = analysis.get("markdown_baseline") or {}
    style = analysis.get("style")
    if style:
        known = markdown.get("overall") is not None
        rule = f"more markdown wins on {markdown['overall']:.4f} (overall); " if known else ""
        if style["style_share"] is None:
            said = (f"the model's preferences do not clearly beat a coin flip on {style['pairs']} pairs, so "
                    "there is nothing for style to explain")
        else:
            said = (f"style explains {style['style_share']:.0%} of the model's agreement with the labels "
                    f"({style['accuracy']:.4f} on {style['pairs']} pairs, {style['style_controlled_accuracy']:.4f} "
                    "with style held equal)")
        lines.append(f"Style: {rule}{said}")
    generators = analysis.get("generators")
    if generators:
        rows = generators["generators"]
        rho = generators["spearman"]
        agreement = "" if rho is None else f" (Spearman {rho:.2f} with the labels' ranking)"
        favoured = [name for name, row in rows.items() if row["favoured"]]
        if favoured:
            named = "; ".join(f"{name} (wins {rows[name]['model_win_rate']:.2f}, {rows[name]['expected_win_rate']:.2f} "
                              f"expected, {rows[name]['label_win_rate']:.2f} under the labels)" for name in favoured)
            said = f"the model favours the answers of {named} beyond its accuracy"
        else:
            said = "the model favours no generator's answers beyond its accuracy"
        lines.append(f"Generators: {len(rows)} answer generators{agreement}; {said}")
    tied = analysis.get("ties")
    if tied and tied["tie_adjusted"] is not None:
        sections = tied["sections"].values()
        samples = sum(entry["samples"] for entry in sections)
        if tied["ties"]:
            lines.append(f"Ties: {tied['ties']} of {samples} samples tie at the top score (each a miss here); "
                         f"tie-adjusted overall {tied['tie_adjusted']:.4f} (a tie of k counts 1/k)")
        else:
            lines.append(f"Ties: none of {samples} samples ties at the top score")
    calibrated = analysis.get("calibration")
    if calibrated:
        deciles = calibrated["deciles"]
        lines.append(f"Calibration of {calibrated['source']} on {calibrated['samples']} pairs: Brier "
                     f"{calibrated['brier']:.4f}, ECE {calibrated['ece']:.4f}; accuracy from the least sure tenth "
                     f"to the surest: {deciles[0]['accuracy']:.2f} ... {deciles[-1]['accuracy']:.2f}")
    return lines


class TableRenderer:
    """Draws the summary through the terminal reporter's public methods only."""

    def __init__(self, terminalreporter, width: int):
        self._tr = terminalreporter
        self._width = width
        # Column headers already explained in this output: each is explained once, below the
        # first table that shows it.
        self._explained: set[str] = set()

    def _print(self, *renderables) -> None:
        buffer = io.StringIO()
        console = Console(
            file=buffer,
            width=self._width,
            force_terminal=self._tr.hasmarkup,
            color_system="standard" if self._tr.hasmarkup else None,
            highlight=False,
        )
        for renderable in renderables:
            if isinstance(renderable, Table):
                fit_width(console, renderable).print(renderable)
            else:
                console.print(renderable)
        for line in buffer.getvalue().rstrip("\n").split("\n"):
            self._tr.write_line(line)

    def _write_wrapped(self, text: str, **markup: bool) -> None:
        for line in textwrap.wrap(text, width=max(self._width, 40), subsequent_indent=LEGEND_INDENT,
                                  break_on_hyphens=False):
            self._tr.write_line(line, **markup)

    def _table(self, table: Table, notes: Sequence[str] = ()) -> None:
        """A table, then what its columns (and ``notes``, about its rows) mean, where not yet said."""
        self._tr.write_line("")
        self._print(table)
        for line in legend_lines(table_headers(table), self._explained, self._width):
            self._tr.write_line(line)
        for note in notes:
            self._write_wrapped(note)

    def render(self, summary: RunSummary, *, show_scenarios: bool, misses: list, misses_shown: int,
               null_baseline: bool = True) -> None:
        self._tr.section(run_title(summary), sep="=")
        caveat = sample_caveat(summary)
        if caveat:
            self._write_wrapped(f"rmb: {caveat}", yellow=True)
        if summary.get("partial"):
            self._tr.write_line("PARTIAL RESULTS: the run was interrupted before every item ran.", red=True)
            self._tr.write_line(f"rmb: {partial_account(summary)}; its gates are not evaluated", red=True)
        if has_sections(summary):
            self._table(headline_table(summary, null_baseline=null_baseline), [overall_note(summary)])
        null_baseline = shows_null(summary, null_baseline)
        self._table(grouped_table("Per task", "Task", summary["tasks"], "name", null_baseline=null_baseline))
        if show_scenarios:
            self._table(grouped_table("Per scenario", "Scenario", summary["scenarios"], "",
                                      null_baseline=null_baseline))
        if not show_scenarios and summary["scenarios"]:
            self._tr.write_line("(per-scenario table: -v or --rmb-show-scenarios)")
        self._tr.write_line(engine_line(summary["engine"]))
        if summary.get("judge"):
            self._table(judge_table(summary["judge"], show_scenarios=show_scenarios))
            judge = summary["judge"]
            for line in (inexact_line(judge), position_line(judge), *panel_lines(judge), token_line(summary["engine"])):
                if line:
                    self._tr.write_line(line)
        meaning = meaning_lines(summary)
        if meaning:
            self._tr.write_line("")
            self._tr.write_line("What this score means", bold=True)
            for line in meaning:
                self._write_wrapped(line)
        # Something other than an absent file (an empty file, a directory) is always named.
        for entry in summary["missing"]:
            if entry.get("problem"):
                self._tr.write_line(missing_line(entry), yellow=True)
        missing = [entry for entry in summary["missing"] if not entry.get("problem")]
        for entry in missing[:MISSING_SHOWN]:
            self._tr.write_line(missing_line(entry), yellow=True)
        if len(missing) > MISSING_SHOWN:
            self._tr.write_line(
                f"missing data: ... and {len(missing) - MISSING_SHOWN} more (listed in --rmb-json under 'missing')",
                yellow=True,
            )
        for error in summary["errors"]:
            first = error["message"].splitlines()[0] if error["message"] else ""
            self._tr.write_line(
                f"error: {error['scenario']} {error['kind']} ({error['items']} items): {first}", red=True
            )
        self._render_misses(misses, misses_shown)

    def render_self_check(self, entry: Mapping[str, Any] | None) -> None:
        """The self-check's verdict: one line when it passed, the worst text and a hint when not."""
        if entry is None:
            return
        if entry["ok"]:
            self._tr.write_line(f"rmb: self-check passed: {describe_self_check(entry)}")
            return
        self._tr.write_line(f"rmb: SELF-CHECK FAILED: {describe_self_check(entry)}", red=True, bold=True)
        worst = entry.get("worst") or {}
        if "batched" in worst:
            self._tr.write_line(
                f"rmb: the worst text scored {worst['batched']:.6g} in its batch and {worst['alone']:.6g} alone "
                f"(response starts {worst['response_start']!r})", red=True)
        self._tr.write_line(
            "rmb: scores that depend on the batch make every comparison and gate on them unreliable; "
            "check padding, the pad token and the attention mask (--rmb-show-input UID shows what the model reads)",
            red=True)

    def render_gates(self, summary: RunSummary) -> None:
        self._tr.section("RMB gates", sep="=")
        gates, baseline = summary["gates"], summary.get("baseline")
        own = [gate for gate in gates if not is_baseline_gate(gate)]
        against = [gate for gate in gates if is_baseline_gate(gate)]
        if own:
            self._table(gates_table(own))
        if against:
            self._table(baseline_gates_table(against, baseline))
        partial = summary.get("partial")
        for gate in gates:
            # A partial run's rows all say the same: it is said once, below.
            if gate["detail"] and not partial:
                self._tr.write_line(f"  {gate['metric']}: {gate['detail']}")
        for note in baseline["notes"] if baseline else []:
            self._tr.write_line(f"baseline: {note}", yellow=True)
        failed = [gate_name(gate, baseline) for gate in gates if gate["status"] == "FAIL"]
        if partial:
            self._tr.write_line(f"rmb: {len(gates)} gate(s) NOT EVALUATED: {partial_account(summary)}",
                                red=True, bold=True)
        elif failed:
            self._tr.write_line(f"rmb: {len(failed)} gate(s) failed: {', '.join(failed)}", red=True, bold=True)
        else:
            self._tr.write_line("rmb: all gates passed", green=True, bold=True)

    def _render_misses(self, misses: list, shown: int) -> None:
        if not misses or shown <= 0:
            return
        self._tr.section(f"RMB misses ({len(misses)})", sep="-")
        for nodeid, line in sorted(misses, key=lambda miss: uid_sort_key(miss[0]))[:shown]:
            self._tr.write_line(f"{nodeid}: {line}")
        if len(misses) > shown:
            self._tr.write_line(
                f"... and {len(misses) - shown} more (every sample is in --rmb-jsonl; "
                f"show more with --rmb-show-misses N)"
            )


def write_jsonl(path: Path, records: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with jsonlines.open(path, mode="w") as writer:
        writer.write_all(records)


def markdown_legend(headers: Iterable[str], explained: set[str]) -> list[str]:
    entries = legend_lines(headers, explained, width=1 << 16)
    return ["", *(f"- {entry}" for entry in entries)] if entries else []


def markdown_document(summary: RunSummary, *, null_baseline: bool = True) -> str:
    """The tables and gates as GitHub-flavoured Markdown, for $GITHUB_STEP_SUMMARY or a PR comment."""
    lines = [f"## RMB: `{summary['model']}` on `{summary['dataset']}`", ""]
    if sample_caveat(summary):
        lines += [f"**Sample data**: {sample_caveat(summary)}.", ""]
    if summary.get("limit"):
        lines += [f"Limited to {summary['limit']} samples per scenario and kind (seed {summary['seed']}).", ""]
    if summary.get("partial"):
        lines += [f"**Partial results: {partial_account(summary)}; its gates are not evaluated.**", ""]
    if summary.get("complete") is False:
        files = sorted({entry["file"] for entry in summary["missing"]})
        shown = ", ".join(f"`{name}`" for name in files[:MISSING_SHOWN])
        more = f" and {len(files) - MISSING_SHOWN} more" if len(files) > MISSING_SHOWN else ""
        lines += [f"**Incomplete data: {len(files)} data file(s) of the selected scenarios missing or empty**: "
                  f"{shown}{more}. The numbers are not the full benchmark's.", ""]
    explained: set[str] = set()
    entries = [summary["sections"][section_key(goal, kind)] for goal, kind in SECTIONS]
    show_null = shows_null(summary, null_baseline) and has_null(entries)
    if has_sections(summary):
        headers = ["Section", "Accuracy", *([NULL_HEADER] if show_null else []), "95% CI", "Correct", "Macro"]
        lines += ["| " + " | ".join(headers) + " |", "| --- |" + " ---: |" * (len(headers) - 1)]
        for (goal, kind), entry in zip(SECTIONS, entries):
            null = f" {fmt_null(entry.get('null_accuracy'), entry.get('beats_null')).strip()} |" if show_null else ""
            lines.append(
                f"| {goal.capitalize()} {KIND_TITLES[kind]} | {fmt_accuracy(entry['accuracy'])} |{null} "
                f"{fmt_interval(entry['ci95'])} | {entry['correct']}/{entry['total']} | "
                f"{fmt_accuracy(entry['macro'])} |"
            )
        null = (f" {fmt_null(summary.get('overall_null'), summary.get('overall_beats_null')).strip()} |"
                if show_null else "")
        lines.append(f"| **{overall_label(summary)}** | **{fmt_accuracy(summary['overall'])}** |{null} "
                     f"{fmt_interval(summary['overall_ci95'])} | | |")
        lines += markdown_legend(headers, explained) + [f"- {overall_note(summary)}"]
    gates, baseline = summary["gates"], summary.get("baseline")
    icons = {"PASS": ":white_check_mark: PASS", "FAIL": ":x: FAIL", "NOT EVALUATED": ":warning: NOT EVALUATED"}
    own = [gate for gate in gates if not is_baseline_gate(gate)]
    if own:
        headers = ["Metric", "Value", "Bar", "95% CI", "Result"]
        lines += ["", "### Gates", "", "| " + " | ".join(headers) + " | Detail |",
                  "| --- | ---: | --- | ---: | --- | --- |"]
        for gate in own:
            lines.append(
                f"| `{gate['metric']}` | {fmt_accuracy(gate['value'])} | {gate['reference']} | "
                f"{fmt_interval(gate['interval'])} | {icons[gate['status']]} | {gate['detail']} |"
            )
        lines += markdown_legend(headers, explained)
    against = [gate for gate in gates if is_baseline_gate(gate)]
    if against:
        headers = ["Metric", "Now", "Baseline", "Delta", "Delta 95% CI", "Result"]
        lines += ["", "### Baseline gates", "", "| " + " | ".join(headers) + " | Detail |",
                  "| --- | ---: | ---: | ---: | ---: | --- | --- |"]
        for gate in against:
            cells = " | ".join(baseline_cells(gate, baseline))
            lines.append(f"| `{gate['metric']}` | {cells} | {icons[gate['status']]} | {gate['detail']} |")
        lines += markdown_legend(headers, explained)
    tables: tuple[tuple[str, Mapping[str, Mapping[str, Any]], bool], ...] = (
        ("Per task", summary["tasks"], True), ("Per scenario", summary["scenarios"], False))
    for title, rows, named in tables:
        lines += ["", f"<details><summary>{title}</summary>", "",
                  f"| {title[4:].capitalize()} | Goal | Pairwise | BoN |", "| --- | --- | ---: | ---: |"]
        ordered = sorted(rows.items(), key=lambda item: (goal_order(item[1]["goal"]), uid_sort_key(item[0])))
        for row_id, row in ordered:
            label = row["name"] if named else f"`{row_id}`"
            lines.append(f"| {label} | {row['goal']} | {fmt_tally(row['pairwise'])} | {fmt_tally(row['bon'])} |")
        lines += ["", "</details>"]
    missing, errors = summary["missing"], summary["errors"]
    if missing or errors:
        lines += ["", f"Missing data files: {len(missing)}. Data or scoring errors: {len(errors)}."]
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, summary: RunSummary, *, null_baseline: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown_document(summary, null_baseline=null_baseline), encoding="utf-8")
