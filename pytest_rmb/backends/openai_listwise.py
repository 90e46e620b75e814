"""``--rmb-model openai:MODEL --rmb-model-arg mode=listwise``: an LLM judge shown a whole list at
once, naming the best answer in one request.

A Best-of-N list of N answers costs one request per order instead of N-1 comparisons (each asked
in its orders); a pair is a list of two, asked as the pairwise judge would ask it but with the
listwise prompt. What is asked and how a reply is read is :mod:`pytest_rmb.judging.listwise`; the
orders a list is shown in are :func:`~pytest_rmb.judging.orders.list_orders`. How a request
travels (concurrency, retries, empty replies asked again, the token budget, the early stop on
cut-off replies, reasoning tokens, the server check, the counters) is the pairwise judge's own:
this judge is one, asking differently.

Counted apart: ``listwise_requests_saved``, the requests a pairwise judge with the same orders and
votes would have made beyond these (N-2 per list of N and order, every comparison asked).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_rmb.backends import ModelLoadError, ModelSettings
from pytest_rmb.backends.openai import OpenAIJudge, _all_or_nothing, _RunState
from pytest_rmb.judging.cutoffs import CUT_OFF
from pytest_rmb.judging.listwise import (
    LETTERS,
    ListOrder,
    ListTooLong,
    combine_list,
    list_follow_up,
    list_messages,
    list_prompt_sha256,
    list_slots,
)
from pytest_rmb.judging.orders import list_orders, summed_usage
from pytest_rmb.judging.parsing import EMPTY_REPLY, find_verdict, is_empty, miss_note
from pytest_rmb.models import ListRequest, PairRequest, Verdict

# Settings of the pairwise judge (with their defaults) that a listwise judge cannot follow, refused
# rather than silently ignored.
_PAIRWISE_ONLY = {
    "prompt": (None, "the listwise prompt is built in"),
    "prompt_file": (None, "the listwise prompt is built in"),
    "bon_early_stop": (True, "a list is judged in one request, there is nothing to stop early"),
}


@dataclass
class _ListAsk:
    """One list in one order: its messages and which answer is shown under each letter."""

    request: int
    shown: tuple[int, ...]
    messages: list[dict[str, str]]
    chars: int
    replica: int | None = None


class OpenAIListJudge(OpenAIJudge):
    """A pairwise model that judges whole lists (``judges_lists``); see the module docstring."""

    judges_lists = True

    def __init__(self, settings: ModelSettings):
        for name, (default, why) in _PAIRWISE_ONLY.items():
            if settings.args.get(name, default) != default:
                raise ModelLoadError(f"openai judge: {name}= does not apply to mode=listwise ({why})")
        super().__init__(settings)
        self.format = self.prompt.verdict
        self.list_prompt_sha256 = list_prompt_sha256(self.format)

    # -- identity -------------------------------------------------------------------------

    def fingerprint(self) -> str:
        """What a list's verdict depends on; never the URL or the key (as the pairwise judge's)."""
        identity = {
            "backend": "openai-listwise", "model": self.model_name, "prompt": self.list_prompt_sha256,
            "temperature": self.temperature, "order": self.order, "votes": self.votes,
            "max_tokens": self.max_tokens, "parse_retries": self.parse_retries,
            "seed": self.seed if self.order == "random" or self.server_seed is not None else None,
        }
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        return f"listwise-{digest[:32]}"

    def describe(self) -> dict[str, Any]:
        described = super().describe()
        described.pop("bon_early_stop", None)
        described.update(mode="listwise", prompt="listwise", prompt_sha256=self.list_prompt_sha256)
        return described

    # -- cost -----------------------------------------------------------------------------

    def _list_asks(self, index: int, request: ListRequest) -> list[_ListAsk]:
        asks = []
        replica = self.replica_of(request.conversation)
        for shown in list_orders(self.order, self.seed, self.list_cache_key(request), len(request.answers)):
            messages = list_messages(request.conversation, [request.answers[i] for i in shown], self.format)
            asks.append(_ListAsk(index, shown, messages, sum(len(m["content"]) for m in messages), replica))
        return asks

    def preview(self, requests: Sequence[Any]) -> str:
        """What judging the lists will cost at most, and the requests a pairwise judge would add."""
        if not requests:
            return f"0 requests to {self.model_name}: the cache holds every verdict this run needs"
        self.check_server()
        calls = chars = saved = 0
        for index, request in enumerate(requests):
            try:
                asks = self._list_asks(index, _as_list(request))
            except ListTooLong as exc:
                raise ModelLoadError(f"openai judge: mode=listwise: {exc}") from None
            for ask in asks:
                calls += self.votes
                chars += ask.chars * self.votes
                saved += (len(ask.shown) - 2) * self.votes
        tokens = int(chars / self._chars_per_token())
        # Per list: a comparison shared with another sample (RMB's pairs come from its lists) is
        # asked once by a pairwise judge, so over a whole run the difference can be smaller.
        return (f"{calls} requests (one per list and order; these lists' comparisons would be {calls + saved}), "
                f"~{tokens} prompt tokens to "
                f"{self.model_name}; replies at most {calls * self.max_tokens} tokens (max_tokens={self.max_tokens} "
                "each, reasoning included)" + (f"; budget {self.budget_tokens} tokens" if self.budget_tokens else ""))

    def explain_list(self, request: ListRequest) -> dict[str, Any]:
        """What ``--rmb-show-input`` can print for a list: the messages of each order asked, in
        the shape of the pairwise judge's explanation (``chosen``: the best answer's letter)."""
        prompts = [{"chosen": LETTERS[ask.shown.index(0)], "shown": list(ask.shown), "messages": ask.messages}
                   for ask in self._list_asks(0, request)]
        return {"judge": f"openai:{self.model_name}", "prompt": "listwise", "order": self.order, "prompts": prompts,
                "verdict": {"read": "reply", "format": self.format.name, "max_tokens": self.max_tokens,
                            "parse_retries": self.parse_retries, "temperature": self.temperature,
                            "logprobs": self.logprobs_mode}}

    # -- judging --------------------------------------------------------------------------

    def compare(self, batch: Sequence[PairRequest]) -> list[Verdict]:
        """Comparisons asked as lists of two (for a caller that asks for comparisons)."""
        return self.compare_lists([_as_list(request) for request in batch])

    def compare_lists(self, batch: Sequence[ListRequest]) -> list[Verdict]:
        self._ready()
        try:
            plans = [self._list_asks(i, request) for i, request in enumerate(batch)]
        except ListTooLong as exc:
            raise ModelLoadError(f"openai judge: mode=listwise: {exc}") from None
        return self._verdicts(sum(len(asks) for asks in plans) * self.votes,
                              lambda state: [self._list_job(asks, state) for asks in plans])

    def _list_job(self, asks: list[_ListAsk], state: _RunState) -> Callable[[Any], Awaitable[Verdict]]:
        async def job(client: Any) -> Verdict:
            orders = await _all_or_nothing(self._list_order(client, ask, state) for ask in asks)
            self._count("listwise_requests_saved", sum(len(ask.shown) - 2 for ask in asks) * self.votes)
            return combine_list(orders, self.order)

        return job

    async def _list_order(self, client: Any, ask: _ListAsk, state: _RunState) -> ListOrder:
        samples = await _all_or_nothing(self._list_vote(client, ask, vote, state) for vote in range(self.votes))
        usage = summed_usage([s[1] for s in samples])
        return ListOrder(ask.shown, tuple(s[0] for s in samples), usage, sum(s[2] for s in samples),
                         tuple(s[3] for s in samples if s[3]), rescued=sum(s[4] for s in samples))

    async def _list_vote(self, client: Any, ask: _ListAsk, vote: int,
                         state: _RunState) -> tuple[str | None, dict[str, int], int, str, bool]:
        """(letter, usage, parse retries, note, rescued) for one vote, follow-up turns included;
        the pairwise judge's rules (an empty reply is unknown, a cut-off is told apart)."""
        slots = list_slots(len(ask.shown))
        messages = ask.messages
        # Each turn's tokens; a turn whose reasoning tokens are unknown makes the vote's sum unknown.
        turns: list[dict[str, int]] = []
        note = ""
        was_cut = False
        for attempt in range(self.parse_retries + 1):
            reply, used = await self._chat(client, messages, vote, state, replica=ask.replica)
            turns.append(used)
            cut = reply.cut_off
            if is_empty(reply.content) and not cut:
                return None, summed_usage(turns), attempt, EMPTY_REPLY, False
            parsed = find_verdict(reply.content, self.format, slots)
            cut_before_verdict = cut and parsed.verdict is None
            self._watch(cut_before_verdict, state)
            if parsed.verdict is not None:
                if was_cut:
                    self._count("cut_offs_rescued")
                return parsed.verdict, summed_usage(turns), attempt, "", was_cut
            if cut_before_verdict:
                was_cut = True
                self._count("cut_off_replies")
                note = miss_note(f"{CUT_OFF} at the reply limit", reply.content if not is_empty(reply.content)
                                 else reply.reasoning)
            else:
                note = miss_note(parsed.reason, reply.content)
            if attempt < self.parse_retries:
                self._count("parse_retries")
                messages = list_follow_up(ask.messages, reply.content, self.format, len(ask.shown))
        return None, summed_usage(turns), self.parse_retries, note, False


def _as_list(request: PairRequest | ListRequest) -> ListRequest:
    if isinstance(request, PairRequest):
        return ListRequest(request.conversation, (request.first, request.second), request.goal)
    return request
