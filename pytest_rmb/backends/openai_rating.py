"""``--rmb-model openai:MODEL --rmb-model-arg mode=rating``: an LLM judge that rates one answer at a
time on a scale, its rating the answer's score: a pointwise reward model.

The harness treats it as any pointwise model: each unique answer is rated once, cached and
batched by the engine, and a sample is right when its chosen/best answer scores strictly above
every other (two equal ratings are a miss under RMB's strict rule). What is asked and how a reply
is read is :mod:`pytest_rmb.judging.rating`; how a request travels (concurrency, retries, empty
replies asked again, the token budget, the early stop on cut-off replies, reasoning tokens, the
server check, the counters) is the pairwise judge's own (:class:`~pytest_rmb.backends.openai.OpenAIJudge`),
used here as the transport (its request and bookkeeping methods: one judge, two ways of asking).

The score: with logprobs (``logprobs=auto`` when the server gives them, or ``true``), the expected
rating over the scale's numbers at the rating; without, the rating as written. An answer the judge
gives no rating (none in the format, one outside the scale, a reply cut off before it, after the
follow-up turns) scores one below the scale, and is counted apart (``no_rating``,
``no_rating_cut_off``): a sample with an unrated answer is a miss (see ``PointwiseModel.no_score``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pytest_rmb.backends import ModelLoadError, ModelSettings
from pytest_rmb.backends.openai import OpenAIJudge, _RunState
from pytest_rmb.judging.parsing import EMPTY_REPLY, is_empty
from pytest_rmb.judging.rating import (
    DEFAULT_SCALE,
    ScaleError,
    expected_rating_from_logprobs,
    find_rating,
    parse_scale,
    rating_follow_up,
    rating_format,
    rating_messages,
    rating_prompt_sha256,
)
from pytest_rmb.models import PartialBatchError, PointwiseModel, ScoreRequest

# Servers cap top_logprobs at 20 (OpenAI, vLLM's default): room for every number of a 1-10 scale
# and the other tokens a judge might write there.
RATING_TOP_LOGPROBS = 20
# Pairwise-only settings (with their defaults), refused in rating mode rather than silently ignored.
_PAIRWISE_ONLY = {
    "prompt": (None, "the rating prompt is built in"),
    "prompt_file": (None, "the rating prompt is built in"),
    "order": ("both", "one answer is shown, there is no order"),
}


class RatingFailed(RuntimeError):
    """Answers that could not be rated because their requests failed; the ratings received are kept."""


class OpenAIRater(PointwiseModel):
    """A pointwise model asking an OpenAI-compatible chat endpoint to rate each answer."""

    def __init__(self, settings: ModelSettings):
        args = settings.args
        for name, (default, why) in _PAIRWISE_ONLY.items():
            if args.get(name, default) != default:
                raise ModelLoadError(f"openai judge: {name}= does not apply to mode=rating ({why})")
        if (args.get("votes") or 1) > 1:
            raise ModelLoadError("openai judge: votes= does not apply to mode=rating (each answer is rated once; "
                                 "with logprobs its score is the expected rating)")
        try:
            self.scale = parse_scale(args.get("scale") or DEFAULT_SCALE)
            self.no_score = self.scale.no_rating
            self.format = rating_format(args.get("verdict"))
        except (ScaleError, ValueError) as exc:
            raise ModelLoadError(f"openai judge: {exc}") from None
        self.transport = OpenAIJudge(settings)
        self.transport.top_logprobs = RATING_TOP_LOGPROBS
        self.model_name = self.transport.model_name
        self.prompt_sha256 = rating_prompt_sha256(self.scale, self.format)
        self.batch_size = self.transport.batch_size
        # Per answer rated in this process, until the engine asks for its facts.
        self._facts: dict[ScoreRequest, dict[str, bool]] = {}

    # -- identity -------------------------------------------------------------------------

    def fingerprint(self) -> str:
        """What a rating depends on; never the URL or the key (as the pairwise judge's)."""
        t = self.transport
        identity = {
            "backend": "openai-rater", "model": self.model_name, "prompt": self.prompt_sha256,
            "temperature": t.temperature, "max_tokens": t.max_tokens, "parse_retries": t.parse_retries,
            # The expected rating and the written one are different scores.
            "logprobs": t.logprobs_mode != "false", "seed": t.server_seed,
        }
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        return f"rater-{digest[:32]}"

    def describe(self) -> dict[str, Any]:
        described = self.transport.describe()
        for name in ("prompt", "order", "votes", "bon_early_stop"):
            described.pop(name, None)
        described.update(mode="rating", scale=str(self.scale), verdict=self.format.name,
                         prompt="rating", prompt_sha256=self.prompt_sha256,
                         score="expected rating" if self.transport.logprobs_mode != "false" else "rating")
        return described

    @property
    def loaded(self) -> bool:
        return self.transport._server_checked

    def load(self) -> None:
        """Check the server before the first batch (as the pairwise judge's preview does): a dead
        server or a wrong model name stops the run at once. A rerun the cache answers asks nothing."""
        self.transport.check_server()

    def take_counters(self) -> dict[str, float]:
        return self.transport.take_counters()

    def facts(self, request: ScoreRequest) -> dict[str, bool]:
        """Whether the judge gave this answer no rating, and whether a cut-off reply was why."""
        return self._facts.pop(request, {})

    def explain(self, request: ScoreRequest) -> dict[str, Any]:
        """What ``--rmb-show-input`` prints: the messages that ask for this answer's rating."""
        system, user = rating_messages(request.conversation, request.response, self.scale, self.format)
        return {"judge": f"openai:{self.model_name}", "mode": "rating", "scale": str(self.scale),
                "verdict": self.format.name, "system": system["content"], "user": user["content"],
                "score": "expected rating" if self.transport.logprobs_mode != "false" else "rating"}

    def close(self) -> None:
        self.transport.close()

    # -- rating ---------------------------------------------------------------------------

    def score(self, batch: Sequence[ScoreRequest]) -> list[float]:
        t = self.transport
        t._ready()
        from pytest_rmb.http import run_concurrently

        state = _RunState(len(batch), time.perf_counter(), t.concurrency)
        done: dict[int, float] = {}

        def on_done(index: int, value: float) -> None:
            done[index] = value
            self.report_progress(len(done), state.describe(), done)

        jobs = [self._job(request, state) for request in batch]
        try:
            results = run_concurrently(t._client, jobs, on_done,
                                       on_tick=lambda: self.report_progress(len(done), state.describe(), done))
        except KeyboardInterrupt:
            # Ctrl-C: keep what arrived; the next batch stops at once (as the pairwise judge does).
            t._fatal = KeyboardInterrupt()
            raise PartialBatchError(done, KeyboardInterrupt("interrupted")) from None
        if t._fatal is not None:
            raise PartialBatchError(done, t._fatal)
        failed = [result for result in results if isinstance(result, BaseException)]
        if failed:
            t._count("api_failures", len(failed))
            raise PartialBatchError(done, RatingFailed(
                f"{len(failed)} of {len(batch)} answers could not be rated, the first: "
                f"{t._describe_failure(failed[0])}; every rating received is cached, rerun to ask only for the rest"))
        return [float(value) for value in results]  # type: ignore[arg-type]

    def _job(self, request: ScoreRequest, state: _RunState) -> Callable[[Any], Awaitable[float]]:
        async def job(client: Any) -> float:
            return await self._rate(client, request, state)

        return job

    async def _rate(self, client: Any, request: ScoreRequest, state: _RunState) -> float:
        """The answer's score, follow-up turns included; its facts kept for :meth:`facts`."""
        t = self.transport
        asked = rating_messages(request.conversation, request.response, self.scale, self.format)
        messages = asked
        was_cut = False
        for attempt in range(t.parse_retries + 1):
            reply, _ = await t._chat(client, messages, 0, state, replica=t.replica_of(request.conversation))
            cut = reply.cut_off
            if is_empty(reply.content) and not cut:
                # Empty after its retries: not a rating, and not a judgement the cache should keep.
                raise RatingFailed(EMPTY_REPLY)
            parsed = find_rating(reply.content, self.scale, self.format)
            # A reply cut off after its rating (a small max_tokens) said it.
            cut_before_rating = cut and parsed.rating is None
            t._watch(cut_before_rating, state)
            if parsed.rating is not None:
                if was_cut:
                    t._count("cut_offs_rescued")
                expected = (expected_rating_from_logprobs(reply.tokens, reply.content, parsed.position, self.scale)
                            if reply.tokens else None)
                self._facts[request] = {"no_rating": False, "expected_rating": expected is not None}
                return parsed.rating if expected is None else expected
            if cut_before_rating:
                was_cut = True
                t._count("cut_off_replies")
            if attempt < t.parse_retries:
                t._count("parse_retries")
                messages = rating_follow_up(asked, reply.content, self.scale, self.format)
        self._facts[request] = {"no_rating": True, "no_rating_cut_off": was_cut}
        return self.scale.no_rating

