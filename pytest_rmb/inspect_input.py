"""``--rmb-show-input UID``: exactly what the model reads for chosen samples, printed after the run.

For each response of each matching sample: the rendered text after the chat template, the tokens
with the special ones marked, the truncation applied and the position the reward is read from,
as the model's ``explain(request)`` tells it (the Hugging Face backend has one). For an LLM judge,
per comparison: the chat messages of each answer order it asks, the prompt rendered with the chat
template where the model is local (``hf-judge:``), and how the verdict is read (the token ids of
``A`` and ``B`` whose logits are compared, or the reply format parsed). A served judge (``openai:``)
is shown the messages it sends: the server applies its own template. Any other model without
``explain`` is shown the generic way: the conversation and the response as the engine passes them.

The explanations are made where the model lives (an xdist worker, or the one process) with the
first item that runs (session.py), travel to the controller in that item's report as plain strings
(``wire.Message.SHOWN_INPUT``), and are printed in the terminal summary (controller.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pytest_rmb.data import PAIRWISE, Sample
from pytest_rmb.judging.formats import verdict_format
from pytest_rmb.judging.orders import ORDERS, chosen_slots
from pytest_rmb.judging.parsing import follow_up_text
from pytest_rmb.judging.prompts import JudgePrompt, judge_messages
from pytest_rmb.models import PairRequest, PairwiseModel, ScoreRequest

TOKENS_PER_LINE = 100  # characters of joined tokens per printed line


def input_key(entry: Mapping[str, Any]) -> tuple:
    """Which sample an explanation is of: every xdist worker explains the same selection."""
    return (entry["selector"], entry.get("scenario"), entry.get("kind"), entry.get("uid"))


def print_shown_input(terminalreporter: Any, entries: Iterable[Mapping[str, Any]]) -> None:
    for entry in entries:
        if "scenario" not in entry:
            terminalreporter.write_line(f"rmb: --rmb-show-input {entry['selector']}: {entry['lines'][0]}",
                                        yellow=True)
            continue
        terminalreporter.section(f"RMB input: {entry['scenario']} {entry['kind']} uid {entry['uid']}", sep="-")
        for line in entry["lines"]:
            terminalreporter.write_line(line)


def parse_selector(selector: str) -> tuple[str, str]:
    """(scenario id or "", uid) of ``UID`` or ``SCENARIO_ID/UID`` (a leading ``rmb/`` is allowed)."""
    scenario, _, uid = selector.removeprefix("rmb/").rpartition("/")
    return scenario, uid


def explain_selection(model: Any, plan: Mapping[str, Sequence[Sample]], selectors: Iterable[str],
                      engine: Any = None) -> list[dict[str, Any]]:
    """One entry per matching sample (or per selector that matches nothing), JSON-ready."""
    entries: list[dict[str, Any]] = []
    for selector in selectors:
        scenario, uid = parse_selector(selector)
        matches = [sample for scenario_id, samples in plan.items() if not scenario or scenario_id == scenario
                   for sample in samples if sample.uid == uid]
        if not matches:
            where = f" in scenario {scenario}" if scenario else ""
            entries.append({"selector": selector,
                            "lines": [f"no selected sample has uid {uid}{where}"]})
        for sample in matches:
            entries.append({"selector": selector, "scenario": sample.scenario, "kind": sample.kind,
                            "uid": sample.uid, "lines": explain_sample(model, sample, engine)})
    return entries


def response_labels(sample: Sample) -> list[str]:
    count = len(sample.responses)
    if sample.kind == PAIRWISE:
        return ["chosen", "rejected"]
    return ["best"] + [f"loser {i} of {count - 1}" for i in range(1, count)]


def explain_sample(model: Any, sample: Sample, engine: Any = None) -> list[str]:
    explain = getattr(model, "explain", None)
    lines: list[str] = []
    explain_list = getattr(model, "explain_list", None)
    list_request_of = getattr(engine, "list_request_of", None)
    if getattr(model, "judges_lists", False) and callable(explain_list) and callable(list_request_of):
        labels = response_labels(sample)
        lines.append(f"the list of {len(labels)} answers ({', '.join(labels)}) in one request per order:")
        return lines + format_judge_explanation(explain_list(list_request_of(sample)))
    if isinstance(model, PairwiseModel):
        requests_of = getattr(engine, "requests_of", None)
        requests = requests_of(sample) if callable(requests_of) else [
            PairRequest(sample.conversation, sample.responses[0].text, other.text) for other in sample.responses[1:]]
        labels = response_labels(sample)
        for position, request in enumerate(requests, start=1):
            lines.append(f"comparison {position} of {len(requests)}: {labels[0]} (first) against {labels[position]}")
            served = None if callable(explain) else served_judge_explanation(model, request)
            if served is not None:
                lines += format_judge_explanation(served)
            else:
                lines += _explained(explain, request) if callable(explain) else _generic_pair(request)
        return lines
    for label, response in zip(response_labels(sample), sample.responses):
        request = ScoreRequest(sample.conversation, response.text)
        lines.append(f"{label} ({response.model}):")
        lines += _explained(explain, request) if callable(explain) else _generic(request)
    return lines


def _explained(explain: Any, request: Any) -> list[str]:
    details = explain(request)
    if isinstance(details, Mapping) and "prompts" in details and "verdict" in details:
        return format_judge_explanation(details)
    if isinstance(details, Mapping) and "tokens" in details:
        return format_tokens_explanation(details)
    if isinstance(details, Mapping):
        return [f"  {name}: {value}" for name, value in details.items()]
    return _quoted(str(details))


def _quoted(text: str, indent: str = "    | ") -> list[str]:
    return [f"{indent}{line}" for line in text.split("\n")]


def _generic(request: ScoreRequest) -> list[str]:
    lines = ["  the model has no explain(request); it receives this conversation and response:"]
    for message in request.conversation:
        lines.append(f"  [{message.role}]")
        lines += _quoted(message.content)
    lines.append("  [response]")
    lines += _quoted(request.response)
    return lines


def _generic_pair(request: PairRequest) -> list[str]:
    lines = ["  the model has no explain(request); it receives this conversation and two answers:"]
    for message in request.conversation:
        lines.append(f"  [{message.role}]")
        lines += _quoted(message.content)
    for name, text in (("answer A (first)", request.first), ("answer B (second)", request.second)):
        lines.append(f"  [{name}]")
        lines += _quoted(text)
    return lines


def mark_token(token: str, special: bool, reward: bool) -> str:
    shown = f"[[{token}]]" if special else token
    return f">>{shown}<<" if reward else shown


def format_tokens_explanation(details: Mapping[str, Any]) -> list[str]:
    """A tokenizer-level explanation (the ``hf:`` backend's ``explain``) as printable lines."""
    rendered = details["rendered"]
    tokens, special = list(details["tokens"]), list(details["special"])
    position = details.get("reward_position")
    dropped = details.get("dropped", 0)
    lines = [f"  rendered text ({details.get('rendering', 'chat template')}, {len(rendered)} characters):"]
    lines += _quoted(rendered)
    limit = details.get("max_length")
    if dropped:
        kept_first = details.get("kept_first")
        where = f"after the leading {tokens[0]}" if kept_first and tokens else "from the start"
        lines.append(f"  tokens: {details['tokens_rendered']} after rendering, {len(tokens)} kept: truncated to "
                     f"{limit}, the first {dropped} {where} dropped (truncation keeps the end)")
        if "kept_text" in details:
            lines.append("  the text the model reads after truncation:")
            lines += _quoted(details["kept_text"])
    else:
        lines.append(f"  tokens: {len(tokens)} (limit {limit}, nothing truncated)")
    lines.append("  special tokens are [[marked]], the token the reward is read at is >>marked<<:")
    shown = [mark_token(token, is_special, index == position)
             for index, (token, is_special) in enumerate(zip(tokens, special))]
    if dropped:
        cut = 1 if details.get("kept_first") else 0
        shown.insert(cut, f"[... {dropped} tokens dropped ...]")
    current = ""
    for piece in shown:
        if current and len(current) + 1 + len(piece) > TOKENS_PER_LINE:
            lines.append(f"    {current}")
            current = piece
        else:
            current = f"{current} {piece}" if current else piece
    if current:
        lines.append(f"    {current}")
    if position is None:
        lines.append(f"  reward: logit {details.get('reward_index', 0)}, position {details.get('pooling', 'unknown')}")
    else:
        lines.append(f"  reward: logit {details.get('reward_index', 0)} read at token {position} of {len(tokens)} "
                     f"({tokens[position]!r}): {details.get('pooling', '')}")
    if "score" in details:
        lines.append(f"  score of this text alone: {details['score']:.6g}")
    for note in details.get("notes", ()):
        lines.append(f"  note: {note}")
    return lines


# -- LLM judges ------------------------------------------------------------------------------------


def served_judge_explanation(model: Any, request: PairRequest) -> dict[str, Any] | None:
    """A judge that sends the shared protocol's messages to a server (``openai:``) and has no
    ``explain``: the messages of each order it asks, as :mod:`pytest_rmb.judging` builds them; None
    for a model that is not such a judge."""
    prompt, order = getattr(model, "prompt", None), getattr(model, "order", None)
    if not isinstance(prompt, JudgePrompt) or order not in ORDERS:
        return None
    prompts = []
    for slot in chosen_slots(order, getattr(model, "seed", 0), model.cache_key(request)):
        a, b = (request.first, request.second) if slot == "A" else (request.second, request.first)
        prompts.append({"chosen": slot, "messages": judge_messages(prompt, request.conversation, a, b, request.goal)})
    name = getattr(model, "model_name", None) or getattr(model, "name", "")
    return {"judge": f"openai:{name}", "prompt": prompt.name, "order": order, "prompts": prompts,
            "verdict": {"read": "reply", "format": prompt.verdict.name,
                        "max_tokens": getattr(model, "max_tokens", None),
                        "parse_retries": getattr(model, "parse_retries", 0),
                        "temperature": getattr(model, "temperature", None),
                        "logprobs": getattr(model, "logprobs_mode", None)}}


def _orders_asked(order: str, count: int) -> str:
    if order == "both":
        return f"{count} prompts, one per answer order"
    if order == "fixed":
        return "1 prompt (order=fixed: the chosen answer always shown as A)"
    return "1 prompt (order=random: the chosen answer's slot hashed from the seed and the comparison)"


def format_judge_explanation(details: Mapping[str, Any]) -> list[str]:
    """A judge's explanation (``HFJudge.explain`` or :func:`served_judge_explanation`) as lines."""
    prompts = list(details["prompts"])
    mode = f"mode={details['mode']}, " if details.get("mode") else ""
    lines = [f"  judge {details['judge']} ({mode}prompt {details['prompt']}, order={details['order']}): "
             f"{_orders_asked(details['order'], len(prompts))}"]
    for number, asked in enumerate(prompts, start=1):
        lines.append(f"  prompt {number} of {len(prompts)}: the chosen answer shown as {asked['chosen']}")
        for message in asked["messages"]:
            lines.append(f"    [{message['role']}]")
            lines += _quoted(message["content"], "      | ")
        if asked.get("reply_starts"):
            lines.append("    [assistant] the reply is made to start with:")
            lines += _quoted(asked["reply_starts"], "      | ")
        if "rendered" in asked:
            lines.append(f"    rendered with the model's chat template, as the model reads it ({asked['tokens']} "
                         f"tokens, context {details.get('context')}):")
            lines += _quoted(asked["rendered"], "      | ")
    if "rendered" not in (prompts[0] if prompts else {}):
        lines.append("  the server renders these messages with its own chat template (not visible from here)")
    lines.append(f"  verdict: {_verdict_reading(details['verdict'])}")
    return lines


def _verdict_reading(verdict: Mapping[str, Any]) -> str:
    if verdict["read"] == "logits":
        letters = ", ".join(f"{letter!r} is token {token} ({text!r})"
                            for letter, (token, text) in verdict["tokens"].items())
        return (f"the next-token logits right after {verdict['after']!r}: {letters}; the higher one is the verdict, "
                "P(A) = softmax over the two")
    # A local judge decodes greedily; a server is asked at a temperature, which it may honour or not.
    decoding = "greedy" if verdict.get("temperature") is None else f"temperature {verdict['temperature']:g}"
    written = verdict_format(verdict.get("format"))
    reading = (f"parsed from the reply ({decoding}, at most {verdict['max_tokens']} new tokens): its last "
               f"{written.of('A')} or {written.of('B')} (verdict format {written.name}; both, or a tie, on the final "
               "verdict line is no verdict)")
    retries = verdict.get("parse_retries") or 0
    if retries:
        reading += f"; a reply without one gets up to {retries} follow-up turn(s): {follow_up_text(written)!r}"
    if verdict.get("logprobs") not in (None, "false"):
        reading += (f"; logprobs={verdict['logprobs']}: P(A) from the verdict letter's logprobs where the server "
                    "returns them")
    return reading
