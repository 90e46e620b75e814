"""``--rmb-model openai:MODEL``: an LLM judge behind any OpenAI-compatible chat-completions server
(vLLM, SGLang, llama.cpp, ``transformers serve``, hosted APIs).

The protocol (prompts, parsing, orders, votes) lives in :mod:`pytest_rmb.judging`, shared with the
local judge; HTTP (concurrency, retries, Retry-After, timeouts, key scrubbing) in
:mod:`pytest_rmb.http`. What is left here: asking each comparison in its orders and votes with
parse retries, asking again after an empty reply, telling a reply cut off at ``max_tokens`` from
one without a verdict (and stopping a run whose first replies are mostly cut off), reading the
answer apart from the reasoning (a server's ``reasoning_content``/``reasoning`` field, inline
``<think>``), reading the verdict's logprobs, token accounting (reasoning tokens apart) and the
token budget, and stopping a batch cleanly when the server is gone, keeping every verdict already
received.

The API key comes from the environment only (``OPENAI_API_KEY`` or ``api_key_env=NAME``) and
goes to the HTTP client and nowhere else: not into settings, the fingerprint, ``describe()``, or
any message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pytest_rmb.backends import (
    ROUTINGS,
    Backend,
    ModelArg,
    ModelLoadError,
    ModelSettings,
    closest_names,
)
from pytest_rmb.backends._judges import VERDICT_ARG, protocol_args, resolve_protocol
from pytest_rmb.judging.cutoffs import CUT_OFF, CutOffWatch, is_cut_off
from pytest_rmb.judging.orders import OrderResult, chosen_slots, combine, summed_usage
from pytest_rmb.judging.parsing import (
    EMPTY_REPLY,
    find_verdict,
    follow_up,
    has_thinking,
    is_empty,
    miss_note,
    verdict_probability,
)
from pytest_rmb.judging.prompts import JudgePrompt, judge_messages
from pytest_rmb.models import (
    Conversation,
    PairRequest,
    PairwiseModel,
    PartialBatchError,
    PointwiseModel,
    RunStopped,
    Verdict,
    conversation_key,
)
from pytest_rmb.parsers import (
    boolean,
    choice,
    env_var_name,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    renamed,
    text_value,
)

if TYPE_CHECKING:
    from pytest_rmb.http import JSONClient

T = TypeVar("T")

DEFAULT_BASE_URL = "https://api.openai.com/v1"
TOP_LOGPROBS = 5
# Reply limits (reasoning included). 1024 leaves a judge that explains room for its explanation and
# keeps the budget's reservation per request small. A judge that reasons first writes thousands of
# tokens (RM-R1's logged verdicts run 2,000-6,000 characters, and it allows 50,000 tokens; Qwen3 and
# DeepSeek-R1 recommend 32,768 for their thinking mode): thinking=true allows 32,768.
DEFAULT_MAX_TOKENS = 1024
THINKING_MAX_TOKENS = 32768


def _base_urls(text: str) -> tuple[str, ...]:
    from pytest_rmb.http import split_base_urls

    return tuple(split_base_urls(text))


ARGS = (
    ModelArg("mode", choice("pairwise", "rating", "listwise"), "pairwise",
             "pairwise: the judge compares two answers (pair-v2); rating: it rates one answer at a time, the rating "
             "is its score; listwise: it names the best answer of a whole list in one request"),
    ModelArg("scale", renamed("LO-HI", text_value), None,
             "mode=rating: the whole numbers the judge rates on, higher is better (default 1-10)"),
    ModelArg("base_url", renamed("url[,url...]", _base_urls), None,
             "server base URL(s), comma-separated replicas share the load (default: $OPENAI_BASE_URL, "
             f"then {DEFAULT_BASE_URL})"),
    ModelArg("api_key_env", env_var_name, None,
             "environment variable holding the API key (default OPENAI_API_KEY); the key is read "
             "from the environment only"),
    ModelArg("concurrency", positive_int, 16, "requests in flight at once"),
    ModelArg("routing", choice(*ROUTINGS), ROUTINGS[0],
             "with several base URLs: affinity sends every request about one conversation (both orders of a "
             "comparison, the comparisons of a list, the follow-up turns) to the same replica, so its prefix "
             "cache reads the question once; round-robin spreads requests in turn"),
    ModelArg("timeout", renamed("seconds", positive_float), 120.0, "seconds per request"),
    ModelArg("retries", renamed("int", non_negative_int), 4,
             "retries of a failed request (408, 429, 5xx, timeouts; Retry-After honoured) and of an "
             "empty reply"),
    ModelArg("votes", positive_int, 1, "samples per comparison and order; a strict majority decides"),
    ModelArg("temperature", non_negative_float, 0.0, "sampling temperature (votes > 1 needs > 0)"),
    ModelArg("max_tokens", positive_int, None,
             f"most tokens per reply, reasoning included (default {DEFAULT_MAX_TOKENS}; {THINKING_MAX_TOKENS} with "
             "thinking=true); a reply cut off there before its verdict is a 'cut off' miss"),
    ModelArg("thinking", boolean, False,
             f"the judge reasons before its verdict: max_tokens defaults to {THINKING_MAX_TOKENS} (each reply "
             "may cost that many tokens; the preview says the most a run can take)"),
    ModelArg("stop_on_cut_offs", boolean, True,
             "stop the run (exit 2, verdicts kept) when 20 of the judge's first 50 replies are cut off at "
             "max_tokens before their verdict"),
    ModelArg("logprobs", choice("auto", "true", "false"), "auto",
             "ask for the verdict token's logprobs (P(chosen) in the JSONL); auto drops them if refused"),
    ModelArg("bon_early_stop", boolean, True, "stop judging a Best-of-N list once one comparison is lost"),
    ModelArg("budget_tokens", positive_int, None,
             "stop (exit non-zero, verdicts kept) before this process's requests would exceed N tokens"),
    *protocol_args(prompt_default="pair-v2",
                   parse_retries_help="follow-up turns asking for the verdict when a reply has none",
                   seed_help="seed of order=random and, when given, sent to the server (vote i gets seed+i); "
                   "default --rmb-seed"),
    VERDICT_ARG,
)


class JudgeUnavailable(RunStopped):
    """The server cannot be reached any more; what it already answered is kept."""


class JudgeBudgetExceeded(RunStopped):
    """The next request would take the run past ``budget_tokens``."""


class JudgeReplyError(RuntimeError):
    """A 200 response that is not a chat completion."""


@dataclass
class _Ask:
    """One comparison in one order: its messages and where the chosen answer is."""

    request: int
    slot: str
    messages: list[dict[str, str]]
    chars: int
    # The base URL it goes to (an index into base_urls); None: the next in turn.
    replica: int | None = None


class _Aborted(Exception):
    pass


@dataclass(frozen=True)
class _Reply:
    """One chat completion as the judge reads it."""

    # The answer: the verdict is read here, never in the reasoning.
    content: str
    # OpenAI-style logprobs.content of the answer, when given.
    tokens: list[dict] | None
    # prompt_tokens, completion_tokens (reasoning included, as servers count them) and, when the
    # server said it, reasoning_tokens; None when the server gave no usage.
    usage: dict[str, int] | None
    finish_reason: object
    # The server's separate reasoning (vLLM's and SGLang's reasoning parsers), "" when none.
    reasoning: str

    @property
    def cut_off(self) -> bool:
        """Whether the reply ended at max_tokens (see :func:`is_cut_off`)."""
        return is_cut_off(self.finish_reason, self.content, self.reasoning)

    @property
    def reasoned(self) -> bool:
        return bool(self.reasoning.strip()) or has_thinking(self.content)


class OpenAIJudge(PairwiseModel):
    """A pairwise model asking an OpenAI-compatible chat endpoint; see the module docstring."""

    def __init__(self, settings: ModelSettings):
        from pytest_rmb.http import CredentialsConflict, RetryPolicy, api_key_from_env, check_credentials

        args = settings.args
        self.model_name = settings.target
        self.base_urls: tuple[str, ...] = args.get("base_url") or _base_urls(
            os.environ.get("OPENAI_BASE_URL", "").strip() or DEFAULT_BASE_URL)
        key_env = args.get("api_key_env")
        self._key_env = key_env or "OPENAI_API_KEY"
        self._api_key = api_key_from_env(key_env)
        if key_env and self._api_key is None:
            raise ModelLoadError(f"openai judge: api_key_env={key_env} but ${key_env} is not set")
        try:  # at load, so that even a run the cache answers in full refuses two credentials
            check_credentials(self.base_urls, self._api_key)
        except CredentialsConflict as exc:
            raise ModelLoadError(f"openai judge: {exc}") from None
        protocol = resolve_protocol(settings, default_prompt="pair-v2", label="openai judge")
        self.prompt: JudgePrompt = protocol.prompt
        self.concurrency: int = args.get("concurrency", 16)
        self.routing: str = args.get("routing") or ROUTINGS[0]
        self.order: str = protocol.order
        self.votes: int = args.get("votes", 1)
        self.temperature: float = args.get("temperature", 0.0)
        if self.votes > 1 and self.temperature == 0:
            raise ModelLoadError(f"openai judge: votes={self.votes} at temperature 0 would ask the same "
                                 "question several times for the same answer; set temperature > 0")
        self.thinking = bool(args.get("thinking", False))
        given_max = args.get("max_tokens")
        self.max_tokens: int = given_max or (THINKING_MAX_TOKENS if self.thinking else DEFAULT_MAX_TOKENS)
        remedy = f"rerun with --rmb-model-arg max_tokens={4 * self.max_tokens}"
        if not self.thinking and self.max_tokens < THINKING_MAX_TOKENS:
            remedy += f" or thinking=true (max_tokens={THINKING_MAX_TOKENS})"
        self._cut_off_watch = (CutOffWatch(f"max_tokens={self.max_tokens}", remedy)
                               if args.get("stop_on_cut_offs", True) else None)
        self.parse_retries: int = protocol.parse_retries
        self.logprobs_mode: str = args.get("logprobs", "auto")
        self.bon_early_stop = bool(args.get("bon_early_stop", True))
        self.budget_tokens: int | None = args.get("budget_tokens")
        self.server_seed: int | None = protocol.given_seed
        self.seed: int = protocol.seed
        self.policy = RetryPolicy(retries=args.get("retries", 4), timeout=args.get("timeout", 120.0))
        # HTTP backends want large batches so that their concurrency has work to overlap.
        self.batch_size = max(64, 8 * self.concurrency)
        # Per process: what the run spent, what is reserved by requests in flight.
        self._spent = 0
        self._reserved = 0
        self._prompt_chars = 0
        self._prompt_tokens_seen = 0
        self._send_logprobs = self.logprobs_mode != "false"
        # Alternatives asked for at each token (rating mode asks for more: every number of its scale).
        self.top_logprobs = TOP_LOGPROBS
        self._max_tokens_key = "max_tokens"
        self._consecutive_failures = 0
        self._rotation = 0
        self._clients: list[JSONClient] = []
        self._fatal: BaseException | None = None
        self._counters: dict[str, float] = {}
        self._server_checked = False

    # -- identity -------------------------------------------------------------------------

    def fingerprint(self) -> str:
        """What a verdict depends on; never the URL or the key, so replicas and hosts share a cache."""
        identity = {
            "backend": "openai-judge", "model": self.model_name, "prompt": self.prompt.sha256,
            "temperature": self.temperature, "order": self.order, "votes": self.votes,
            "max_tokens": self.max_tokens, "parse_retries": self.parse_retries,
            "seed": self.seed if self.order == "random" or self.server_seed is not None else None,
        }
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        return f"judge-{digest[:32]}"

    def describe(self) -> dict[str, Any]:
        from pytest_rmb.http import redact_url

        return {
            "backend": "openai", "judge_model": self.model_name,
            "endpoints": [redact_url(url) for url in self.base_urls],
            "prompt": self.prompt.name, "prompt_sha256": self.prompt.sha256, "verdict": self.prompt.verdict.name,
            "order": self.order,
            "votes": self.votes, "temperature": self.temperature, "max_tokens": self.max_tokens,
            "thinking": self.thinking,
            "parse_retries": self.parse_retries, "logprobs": self.logprobs_mode, "seed": self.seed,
            "bon_early_stop": self.bon_early_stop, "budget_tokens": self.budget_tokens,
            "concurrency": self.concurrency,
        }

    def take_counters(self) -> dict[str, float]:
        retries = sum(client.retries for client in self._clients)
        self._clients = []
        if retries:
            self._count("http_retries", retries)
        counters, self._counters = self._counters, {}
        return counters

    def _count(self, name: str, value: float = 1) -> None:
        self._counters[name] = self._counters.get(name, 0) + value

    # -- start-up -------------------------------------------------------------------------

    def check_server(self) -> None:
        """List each base URL's models, once per process: a dead server, a bad key or a wrong
        model name fails within seconds, naming the URL and the status. Asked before the first
        request (by ``preview`` and ``compare``), not at load: a rerun that the cache answers in
        full needs no server at all."""
        if self._server_checked:
            return
        from pytest_rmb.http import STARTUP_TIMEOUT, HTTPFailure, list_models

        answers = list_models(self.base_urls, "/models", self._api_key, min(self.policy.timeout, STARTUP_TIMEOUT))
        for url, answer in zip(self.base_urls, answers):
            if isinstance(answer, HTTPFailure):
                hint = ""
                if answer.status in (401, 403):
                    hint = (f"; the key comes from ${self._key_env_name()}" if self._api_key else
                            f"; no API key: set ${self._key_env_name()}")
                raise ModelLoadError(f"openai judge: cannot list the models at {answer.url}: "
                                     f"{_status(answer)}{hint}")
            if isinstance(answer, ValueError):  # names the URL and quotes the reply
                raise ModelLoadError(f"openai judge: {answer}")
            if isinstance(answer, BaseException):
                reason = str(answer).replace(url, self._safe(url))
                raise ModelLoadError(f"openai judge: cannot list the models at {self._safe(url)}/models: "
                                     f"{type(answer).__name__}: {reason}")
            served = list(answer)
            if self.model_name not in served:
                close = closest_names(self.model_name, served)
                shown = ", ".join(served[:20]) + (" ..." if len(served) > 20 else "")
                raise ModelLoadError(
                    f"openai judge: {self._safe(url)} does not serve model {self.model_name!r}"
                    + (f" (did you mean {close[0]!r}?)" if close else "") + f"; it serves: {shown or 'nothing'}")
        self._server_checked = True

    def _key_env_name(self) -> str:
        return self._key_env

    def _safe(self, url: str) -> str:
        from pytest_rmb.http import redact_url

        return redact_url(url)

    def _client(self) -> JSONClient:
        from pytest_rmb.http import JSONClient

        # Each batch's client starts its round-robin over the replicas one further along, so
        # that small batches do not all begin with the first replica. Affinity routing names
        # replicas by their place in base_urls, so their order stays.
        self._rotation += 1
        by = 0 if self._affinity() else self._rotation % len(self.base_urls)
        client = JSONClient(self.base_urls[by:] + self.base_urls[:by], api_key=self._api_key,
                            concurrency=self.concurrency, policy=self.policy)
        self._clients.append(client)
        return client

    # -- cost -----------------------------------------------------------------------------

    def _affinity(self) -> bool:
        return self.routing == "affinity" and len(self.base_urls) > 1

    def replica_of(self, conversation: Conversation) -> int | None:
        """The replica every request about ``conversation`` goes to; None: round-robin."""
        from pytest_rmb.http import replica_for

        return replica_for(conversation_key(conversation), len(self.base_urls)) if self._affinity() else None

    def _asks(self, index: int, request: PairRequest) -> list[_Ask]:
        asks = []
        replica = self.replica_of(request.conversation)
        for slot in chosen_slots(self.order, self.seed, self.cache_key(request)):
            a, b = (request.first, request.second) if slot == "A" else (request.second, request.first)
            messages = judge_messages(self.prompt, request.conversation, a, b, request.goal)
            asks.append(_Ask(index, slot, messages, sum(len(m["content"]) for m in messages), replica))
        return asks

    def _chars_per_token(self) -> float:
        # Calibrated on the server's own counts once it has given some; 3 before (errs high).
        if self._prompt_tokens_seen and self._prompt_chars:
            return max(self._prompt_chars / self._prompt_tokens_seen, 1.0)
        return 3.0

    def preview(self, requests: Sequence[PairRequest]) -> str:
        """What judging ``requests`` will cost at most: requests and estimated prompt tokens.
        With anything to ask, the server is checked first (ModelLoadError when it cannot serve)."""
        if not requests:
            return f"0 requests to {self.model_name}: the cache holds every verdict this run needs"
        self.check_server()
        calls = 0
        chars = 0
        for index, request in enumerate(requests):
            for ask in self._asks(index, request):
                calls += self.votes
                chars += ask.chars * self.votes
        tokens = int(chars / self._chars_per_token())
        extra = " (fewer when Best-of-N lists stop early)" if self.bon_early_stop else ""
        # Replies are what a judge that reasons spends most on: their most, with the reasoning.
        return (f"{calls} requests, ~{tokens} prompt tokens to {self.model_name}{extra}; replies at most "
                f"{calls * self.max_tokens} tokens (max_tokens={self.max_tokens} each, reasoning included)"
                + (f"; budget {self.budget_tokens} tokens" if self.budget_tokens else ""))

    # -- judging --------------------------------------------------------------------------

    def _ready(self) -> None:
        """Before a batch: raise again what stopped an earlier one, and check the server (done
        already, unless preview was not asked: an xdist worker, a rating judge)."""
        if self._fatal is not None:
            if isinstance(self._fatal, KeyboardInterrupt):
                raise KeyboardInterrupt
            raise type(self._fatal)(str(self._fatal))
        try:
            self.check_server()
        except ModelLoadError as exc:
            self._fatal = JudgeUnavailable(str(exc))
            raise self._fatal from None

    def compare(self, batch: Sequence[PairRequest]) -> list[Verdict]:
        self._ready()
        plans = [self._asks(i, request) for i, request in enumerate(batch)]
        return self._verdicts(sum(len(asks) for asks in plans) * self.votes,
                              lambda state: [self._job(asks, state) for asks in plans])

    def _verdicts(self, requests: int,
                  jobs_for: Callable[[_RunState], list[Callable[[Any], Awaitable[Verdict]]]]) -> list[Verdict]:
        """Run a batch's jobs (one per verdict, ``requests`` requests in all) concurrently: the
        verdicts in order, a failed job's as an error verdict; what arrived is kept on Ctrl-C or
        when the run must stop."""
        from pytest_rmb.http import run_concurrently

        done: dict[int, Verdict] = {}
        state = _RunState(requests, time.perf_counter(), self.concurrency)

        def on_done(index: int, verdict: Verdict) -> None:
            done[index] = verdict
            self.report_progress(len(done), state.describe(), done)

        jobs = jobs_for(state)
        try:
            # The tick saves verdicts that arrived together while the batch waits on a retried one.
            results = run_concurrently(self._client, jobs, on_done,
                                       on_tick=lambda: self.report_progress(len(done), state.describe(), done))
        except KeyboardInterrupt:
            # Ctrl-C: keep what arrived; the next batch stops at once.
            self._fatal = KeyboardInterrupt()
            raise PartialBatchError(done, KeyboardInterrupt("interrupted")) from None
        if self._fatal is not None:
            raise PartialBatchError(done, self._fatal)
        verdicts: list[Verdict] = []
        for result in results:
            if isinstance(result, Verdict):
                verdicts.append(result)
                if result.ask_again:
                    self._count("empty_replies")
            else:
                # A request that failed after its retries: an error for its item, never a verdict.
                verdicts.append(Verdict(None, error=self._describe_failure(result)))
                self._count("api_failures")
        return verdicts

    def _job(self, asks: list[_Ask], state: _RunState) -> Callable[[Any], Awaitable[Verdict]]:
        async def job(client: Any) -> Verdict:
            orders = await _all_or_nothing(self._order(client, ask, state) for ask in asks)
            return combine(orders, self.order)

        return job

    async def _order(self, client: Any, ask: _Ask, state: _RunState) -> OrderResult:
        samples = await _all_or_nothing(self._sample(client, ask, vote, state) for vote in range(self.votes))
        usage = summed_usage([s[2] for s in samples])
        probabilities = [s[1] for s in samples if s[1] is not None]
        return OrderResult(
            ask.slot, tuple(s[0] for s in samples),
            sum(probabilities) / len(probabilities) if probabilities else None,
            usage, sum(s[3] for s in samples), tuple(s[4] for s in samples if s[4]),
            rescued=sum(s[5] for s in samples),
        )

    async def _sample(self, client: Any, ask: _Ask, vote: int,
                      state: _RunState) -> tuple[str | None, float | None, dict[str, int], int, str, bool]:
        """(letter, P(A), usage, parse retries, note, rescued) for one vote, follow-ups included;
        rescued: a reply was cut off before its verdict and a follow-up turn then gave one."""
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
                # Empty after its retries (_chat): a follow-up would quote nothing back. The vote is
                # unknown; combine() decides whether the comparison must be asked again.
                return None, None, summed_usage(turns), attempt, EMPTY_REPLY, False
            parsed = find_verdict(reply.content, self.prompt.verdict)
            # A reply cut off after its verdict (a verdict-first prompt, a small max_tokens) said it.
            cut_before_verdict = cut and parsed.verdict is None
            self._watch(cut_before_verdict, state)
            if parsed.verdict is not None:
                p_a = verdict_probability(reply.tokens, reply.content, parsed.position) if reply.tokens else None
                if was_cut:
                    self._count("cut_offs_rescued")
                return parsed.verdict, p_a, summed_usage(turns), attempt, "", was_cut
            if cut_before_verdict:
                was_cut = True
                self._count("cut_off_replies")
                # The excerpt: what the judge wrote before the limit, its reasoning when the answer is empty.
                note = miss_note(f"{CUT_OFF} at the reply limit", reply.content if not is_empty(reply.content)
                                 else reply.reasoning)
            else:
                note = miss_note(parsed.reason, reply.content)
            if attempt < self.parse_retries:
                self._count("parse_retries")
                messages = follow_up(ask.messages, reply.content, self.prompt.verdict)
        return None, None, summed_usage(turns), self.parse_retries, note, False

    def _watch(self, cut_off: bool, state: _RunState) -> None:
        """Count a reply for the early stop on cut-offs (:class:`CutOffWatch`)."""
        if self._cut_off_watch is None:
            return
        stop = self._cut_off_watch.see(cut_off)
        if stop is not None:
            self._stop(stop, state)

    async def _chat(self, client: Any, messages: list[dict[str, str]], vote: int,
                    state: _RunState, *, replica: int | None = None) -> tuple[_Reply, dict[str, int]]:
        """One chat completion: (the reply, usage summed over the attempts; reasoning_tokens only
        when every attempt's server said them).

        An empty reply (no content, or only whitespace, and no reasoning cut off) is asked again
        like a failed request: up to ``retries`` times, with the client's backoff, counted in
        ``http_retries``. It is returned empty only when every attempt was. A reply cut off at
        max_tokens is an answer, not a fault: asking the same again would cut it off again."""
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "reasoning_tokens": 0}
        attempt = 0
        while True:
            reply = await self._ask(client, messages, vote, state, replica=replica)
            assert reply.usage is not None  # _ask fills it in
            for name in list(usage):
                if name in reply.usage:
                    usage[name] += reply.usage[name]
                else:
                    del usage[name]
            if not is_empty(reply.content) or reply.cut_off:
                self._consecutive_failures = 0
                break
            if attempt >= self.policy.retries:
                self._stayed_empty(state)
                break
            self._count("http_retries")
            self._count("empty_reply_retries")
            # Outside the request slot, as the client waits out its own retries: others go on.
            await asyncio.sleep(self.policy.delay(attempt))
            attempt += 1
        state.finished(self._spent)
        return reply, usage

    async def _ask(self, client: Any, messages: list[dict[str, str]], vote: int,
                   state: _RunState, *, replica: int | None = None) -> _Reply:
        """One request (the client retries transport failures), within the token budget; its
        usage estimated when the server gave none."""
        from pytest_rmb.http import HTTPFailure

        chars = sum(len(m["content"]) for m in messages)
        estimate = int(chars / self._chars_per_token()) + 1
        # Our own slot, not only the client's: the budget is checked and reserved when a request
        # really goes out, not when it joins the queue, and a stopped batch sends nothing more.
        async with state.slot():
            if state.aborted:
                raise _Aborted
            reserve = estimate + self.max_tokens
            if self.budget_tokens is not None and self._spent + self._reserved + reserve > self.budget_tokens:
                self._stop(JudgeBudgetExceeded(
                    f"budget_tokens={self.budget_tokens} reached: {self._spent} tokens used by this run's "
                    f"requests, the next could take ~{reserve} more; every verdict received is cached, "
                    "rerun with a larger budget_tokens to go on"), state)
                raise _Aborted
            self._reserved += reserve
            try:
                while True:
                    payload: dict[str, Any] = {"model": self.model_name, "messages": messages,
                                               "temperature": self.temperature,
                                               self._max_tokens_key: self.max_tokens}
                    if self._send_logprobs:
                        payload["logprobs"] = True
                        payload["top_logprobs"] = self.top_logprobs
                    if self.server_seed is not None:
                        payload["seed"] = self.server_seed + vote
                    state.in_flight += 1
                    try:
                        document = await client.post("/chat/completions", payload, replica=replica)
                    except HTTPFailure as failure:
                        if self._adapt(failure):
                            continue
                        self._failed(failure, state)
                        raise
                    finally:
                        state.in_flight -= 1
                    break
            finally:
                self._reserved -= reserve
        reply = _read_completion(document)
        usage = reply.usage
        if usage is None:
            # The reasoning was generated too: it counts against the budget as the answer does.
            usage = {"prompt_tokens": estimate,
                     "completion_tokens": (len(reply.content) + len(reply.reasoning)) // 4 + 1}
            reply = dataclasses.replace(reply, usage=usage)
            self._count("usage_estimated")
        else:
            self._prompt_chars += chars
            self._prompt_tokens_seen += usage["prompt_tokens"]
        self._spent += usage["prompt_tokens"] + usage["completion_tokens"]
        self._count("requests")
        self._count("prompt_tokens", usage["prompt_tokens"])
        self._count("completion_tokens", usage["completion_tokens"])
        if "reasoning_tokens" in usage:
            self._count("reasoning_tokens", usage["reasoning_tokens"])
        elif reply.reasoned:
            # Reasoned, but the server did not say how many tokens of the reply that took.
            self._count("reasoning_tokens_unknown")
        return reply

    def _adapt(self, failure: Any) -> bool:
        """A 400 that refuses an optional parameter: drop or rename it once and ask again."""
        if failure.status != 400:
            return False
        body = (failure.body or "").lower()
        if self._send_logprobs and self.logprobs_mode == "auto" and "logprobs" in body:
            self._send_logprobs = False
            return True
        if self._max_tokens_key == "max_tokens" and "max_completion_tokens" in body:
            self._max_tokens_key = "max_completion_tokens"
            return True
        return False

    def _failed(self, failure: Any, state: _RunState) -> None:
        """A request that failed for good: fatal when nothing listens any more, or when every
        request fails (a server answering 500 to all would otherwise cost the whole run)."""
        self._consecutive_failures += 1
        unreachable = failure.status is None and "cannot connect" in (failure.detail or "")
        if unreachable:
            self._stop(JudgeUnavailable(
                f"the judge server stopped answering: {failure}; every verdict received is cached, "
                "rerun to resume with only the missing requests"), state)
        elif self._consecutive_failures >= self._failure_streak_limit():
            self._stop(JudgeUnavailable(
                f"{self._consecutive_failures} requests in a row failed, the last: {failure}; every verdict "
                "received is cached, rerun to resume"), state)

    def _stayed_empty(self, state: _RunState) -> None:
        """A request whose reply was empty after every retry: a failure for the streak that stops
        a run against a server that answers nothing (each empty reply costs its prompt tokens)."""
        self._consecutive_failures += 1
        if self._consecutive_failures >= self._failure_streak_limit():
            self._stop(JudgeUnavailable(
                f"{self._consecutive_failures} requests in a row failed, the last: an {EMPTY_REPLY} after "
                f"{self.policy.retries} retries; every verdict received is cached, rerun to resume"), state)

    def _failure_streak_limit(self) -> int:
        return max(32, 2 * self.concurrency)

    def _stop(self, reason: BaseException, state: _RunState) -> None:
        if self._fatal is None:
            self._fatal = reason
        state.aborted = True

    def _describe_failure(self, exc: BaseException) -> str:
        from pytest_rmb.http import HTTPFailure

        if isinstance(exc, HTTPFailure):
            return str(exc)
        return f"{type(exc).__name__}: {exc}"


class _RunState:
    """One batch's shared state inside its event loop: the request slots, the stop flag, progress."""

    def __init__(self, total: int, started: float, concurrency: int):
        self.total = total
        self.started = started
        self.concurrency = concurrency
        self.done = 0
        self.tokens = 0
        self.in_flight = 0  # requests sent and not yet answered: what a quiet wait is waiting on
        self.aborted = False
        self._slots: asyncio.Semaphore | None = None

    def slot(self) -> asyncio.Semaphore:
        # Made inside the batch's running loop (asyncio.run makes a new loop per batch).
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        return self._slots

    def finished(self, tokens: int) -> None:
        self.done += 1
        self.tokens = tokens

    def describe(self) -> str:
        """The batch's requests so far, for the progress line: done/total, rate, tokens spent, and
        how many are out (a slow judge's progress line moves on these before any reply)."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        return (f"{self.done}/{self.total} requests, {self.done / elapsed:.1f} requests/s, "
                f"{self.tokens:,} tokens, {self.in_flight} in flight")


async def _all_or_nothing(coroutines: Iterable[Awaitable[T]]) -> list[T]:
    """Results of all, or the first failure with the others cancelled: once one order or vote of
    a comparison failed for good the item is an error, and its siblings would spend for nothing."""
    pending = list(coroutines)
    if len(pending) == 1:  # one order, one vote: no task to make (a fifth of the client's CPU)
        return [await pending[0]]
    tasks = [asyncio.ensure_future(c) for c in pending]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


def _status(failure: Any) -> str:
    return f"HTTP {failure.status}" if failure.status is not None else (failure.detail or "no response")


# Where servers put a reasoning parser's output beside the answer: vLLM's and SGLang's
# ``reasoning_content``, and ``reasoning`` (vLLM's newer name, OpenRouter, Ollama).
REASONING_FIELDS = ("reasoning_content", "reasoning")


def _read_completion(document: Any) -> _Reply:
    try:
        choice0 = document["choices"][0]
        message = choice0["message"]
        content = message.get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError):
        raise JudgeReplyError("the server's reply has no choices[0].message") from None
    reasoning = next((text for text in (message.get(name) for name in REASONING_FIELDS)
                      if isinstance(text, str) and text), "")
    logprobs = choice0.get("logprobs")
    tokens = logprobs.get("content") if isinstance(logprobs, Mapping) else None
    usage = document.get("usage")
    counted = None
    if isinstance(usage, Mapping) and isinstance(usage.get("prompt_tokens"), int):
        counted = {"prompt_tokens": int(usage["prompt_tokens"]),
                   "completion_tokens": int(usage.get("completion_tokens") or 0)}
        details = usage.get("completion_tokens_details")
        said = details.get("reasoning_tokens") if isinstance(details, Mapping) else None
        if isinstance(said, int) and not isinstance(said, bool):
            counted["reasoning_tokens"] = said
    return _Reply(str(content), tokens if isinstance(tokens, list) else None, counted,
                  choice0.get("finish_reason"), reasoning)


def load(settings: ModelSettings) -> PairwiseModel | PointwiseModel:
    mode = settings.args.get("mode") or "pairwise"
    if mode == "rating":
        from pytest_rmb.backends.openai_rating import OpenAIRater

        return OpenAIRater(settings)
    if mode == "listwise":
        from pytest_rmb.backends.openai_listwise import OpenAIListJudge

        return OpenAIListJudge(settings)
    return OpenAIJudge(settings)


BACKEND = Backend(
    "openai", load, ARGS,
    summary="an LLM judge behind any OpenAI-compatible /v1/chat/completions (vLLM, SGLang, llama.cpp, "
            "transformers serve, hosted APIs): --rmb-model openai:MODEL",
)
