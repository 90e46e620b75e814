"""What the two judge backends (``openai:`` and ``hf-judge:``) share: the settings of the judge
protocol (prompt, verdict format, answer order, parse retries, seed), declared once and resolved once.

Each backend lists these beside its own transport settings; a judge asked the same way through
either backend is asked the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass

from pytest_rmb.backends import ModelArg, ModelLoadError, ModelSettings
from pytest_rmb.judging.formats import VERDICT_FORMATS
from pytest_rmb.judging.orders import ORDERS
from pytest_rmb.judging.prompts import PROMPT_NAMES, JudgePrompt, PromptError, load_prompt
from pytest_rmb.parsers import choice, integer, non_negative_int, renamed, text_value

DEFAULT_PARSE_RETRIES = 2


# How the judge writes its verdict. A backend lists it once its parsing and follow-up turns read the
# prompt's format (resolve_protocol loads the prompt in it).
VERDICT_ARG = ModelArg(
    "verdict", choice(*VERDICT_FORMATS), "tags",
    "how the judge writes its verdict, in the prompt's closing instruction, the follow-up turn and the "
    "parser: tags [[A]] (MT-Bench); answer-tags <answer>[[A]]</answer> (RM-R1); result [RESULT] A "
    "(Prometheus); bold-result **Result:** A; boxed \\boxed{A}; json {\"winner\": \"A\"}")


def protocol_args(*, prompt_default: str, parse_retries_help: str, seed_help: str) -> tuple[ModelArg, ...]:
    """The protocol's ``--rmb-model-arg`` settings; the texts say what differs per backend."""
    return (
        ModelArg("prompt", choice(*PROMPT_NAMES), None, f"built-in judge prompt (default {prompt_default})"),
        ModelArg("prompt_file", renamed("path", text_value), None,
                 "your own prompt: a template file, or JSON with system/template "
                 "(placeholders: docs/how-to/llm-judges.md)"),
        ModelArg("order", choice(*ORDERS), "both",
                 "both: ask each comparison in both answer orders, won only if both agree; random: one "
                 "order from a hash of seed and comparison; fixed: chosen answer always shown as A "
                 "(mode=listwise: a list as given and reversed, a seeded shuffle, or as given)"),
        ModelArg("parse_retries", renamed("int", non_negative_int), DEFAULT_PARSE_RETRIES, parse_retries_help),
        ModelArg("seed", renamed("int", integer), None, seed_help),
    )


@dataclass(frozen=True)
class Protocol:
    """The protocol settings of one judge, resolved."""

    prompt: JudgePrompt
    order: str
    parse_retries: int
    # The seed of order=random: the one given, else --rmb-seed.
    seed: int
    # The seed as given (None when not): a server may be sent it.
    given_seed: int | None


def resolve_protocol(settings: ModelSettings, *, default_prompt: str, label: str) -> Protocol:
    """The protocol from ``--rmb-model-arg``; a prompt that cannot be used is a load error named by ``label``."""
    args = settings.args
    if args.get("prompt") and args.get("prompt_file"):
        raise ModelLoadError(f"{label}: give prompt or prompt_file, not both")
    try:
        prompt = load_prompt(args.get("prompt") or default_prompt, args.get("prompt_file"), args.get("verdict"))
    except PromptError as exc:
        raise ModelLoadError(f"{label}: {exc}") from None
    given_seed = args.get("seed")
    retries = args.get("parse_retries")
    return Protocol(prompt=prompt, order=args.get("order") or "both",
                    parse_retries=DEFAULT_PARSE_RETRIES if retries is None else retries,
                    seed=settings.seed if given_seed is None else given_seed, given_seed=given_seed)
