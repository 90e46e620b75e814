"""``--rmb-model panel:NAME --rmb-model-arg 'judges=SPEC;SPEC;SPEC'``: a panel of LLM judges that
decides each comparison by majority.

Each judge is an ordinary ``--rmb-model`` spec of a judge backend (``openai:``, ``hf-judge:``, or
any other that gives pairwise verdicts) followed by its own settings, ``KEY=VALUE`` words separated
by spaces: ``openai:qwen base_url=http://127.0.0.1:8000/v1 verdict=json``. Each judge is loaded
through the backend registry like a model of its own, and its backend validates its settings; an
error names the judge (``panel judge 2 (openai:m2): ...``).

Every comparison goes to every judge. Judges that do not count tokens (HTTP judges) are asked at the
same time, each in a thread of its own; judges that do (local models) are asked in turn, since they
share this machine's device. Each judge runs the comparisons in batches of its own size.

The rule (:func:`decide`): a strict majority of the judges that gave a verdict decides; an even
split is no verdict (``panel split``). A judge whose request failed counts as unknown: the
comparison is an error (asked again by the next run) only when that judge's verdict, either way,
could change the outcome; when the others decide it whatever the failed judge would say, the
verdict stands and the failed judge is recorded without one. A judge whose reply stayed empty
(a miss its backend would ask again) counts the same way, except that the comparison is then a miss
to ask again rather than an error.

``detail["members"]`` records every judge's verdict, in the judges' order, as
``{"judge": LABEL, "won": true|false|null, ...}``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_rmb.backends import (
    Backend,
    BackendError,
    ModelArg,
    ModelLoadError,
    ModelSettings,
    backend_for,
    boolean,
    installed_backends,
    load_model,
    model_args,
)
from pytest_rmb.batching import UNLIMITED, pack_batches
from pytest_rmb.models import (
    PairRequest,
    PairwiseModel,
    PartialBatchError,
    RunStopped,
    Verdict,
    batch_progress,
)
from pytest_rmb.parsers import SettingError, named

# Separates the judges of ``judges=``; spaces separate a judge's spec from its settings.
JUDGE_SEPARATOR = ";"
SPLIT = "panel split"
NO_VERDICT = "no judge gave a verdict"
# How often a batch's progress (and the comparisons every judge has answered, for the cache) is
# passed on while the judges work.
TICK_SECONDS = 0.5
# Version of the rule in the fingerprint: a changed rule must not reuse the old verdicts.
RULE = "strict-majority-v1"


@dataclass(frozen=True)
class JudgeSpec:
    """One judge of ``judges=``: its ``--rmb-model`` spec and its ``KEY=VALUE`` settings."""

    spec: str
    settings: tuple[tuple[str, str], ...]


def judge_specs(text: str) -> tuple[JudgeSpec, ...]:
    """``judges=`` as written: judges separated by ``;``, each a spec then ``KEY=VALUE`` words."""
    judges = []
    for number, part in enumerate(text.split(JUDGE_SEPARATOR), start=1):
        words = part.split()
        if not words:
            raise SettingError(f"judge {number} is empty: write judges=SPEC;SPEC;... with a spec between each "
                               f"'{JUDGE_SEPARATOR}'")
        spec, *given = words
        if "=" in spec:
            raise SettingError(f"judge {number} starts with a setting ({spec!r}): write the spec first "
                               "(openai:MODEL or hf-judge:MODEL), then its KEY=VALUE settings")
        for word in given:
            key, sep, _ = word.partition("=")
            if not sep or not key:
                raise SettingError(
                    f"judge {number} ({spec}): {word!r} is not KEY=VALUE; a judge's settings are KEY=VALUE "
                    f"words separated by spaces, so a value cannot hold a space or '{JUDGE_SEPARATOR}'")
        judges.append(JudgeSpec(spec, tuple(model_args(given))))
    return tuple(judges)


@named("SPEC [KEY=VALUE ...];SPEC ...")
def judges_setting(text: str) -> str:
    """The ``judges=`` text, checked now (a mistake stops the run before anything loads) and kept
    as written: the summary shows it so, and :func:`load_panel` reads it."""
    judge_specs(text)
    return text.strip()


ARGS = (
    ModelArg("judges", judges_setting, None,
             "the panel's judges, separated by ';': each an openai: or hf-judge: spec followed by its own "
             "settings as KEY=VALUE words separated by spaces (no value may hold a space or ';'), e.g. "
             "'openai:m1 base_url=http://127.0.0.1:8001/v1;openai:m2 base_url=http://127.0.0.1:8002/v1 "
             "verdict=json;hf-judge:PATH mode=generate'; 3 or more, an odd number, recommended"),
    ModelArg("bon_early_stop", boolean, True,
             "stop judging a Best-of-N list once the panel lost one of its comparisons"),
)


class PanelJudgeStopped(RunStopped):
    """A judge of the panel cannot go on (its server is gone, its budget spent): the run stops."""


class PanelJudgeFailed(RuntimeError):
    """A judge of the panel failed on a batch for a reason of its own."""


@dataclass(frozen=True)
class _Member:
    label: str
    model: PairwiseModel


def _labels(specs: Sequence[str]) -> list[str]:
    """Each judge's label: its spec, with its position added where two judges share a spec."""
    return [spec if specs.count(spec) == 1 else f"{spec} #{number}" for number, spec in enumerate(specs, start=1)]


def decide(members: Sequence[tuple[str, Verdict | None]]) -> Verdict:
    """The panel's verdict from each judge's (label, verdict); None: the judge gave no answer.

    A strict majority of the judges that gave a verdict decides; an even split is no verdict. A
    judge that failed (an error, or no answer) or whose reply stayed empty could have said either:
    the outcome stands only if neither of its possible verdicts could change it."""
    entries: list[dict[str, Any]] = []
    votes_for = votes_against = 0
    failed: list[str] = []
    unsettled: list[str] = []
    usage: dict[str, int] = {}
    parse_retries = parse_failures = 0
    for number, (label, verdict) in enumerate(members, start=1):
        entry: dict[str, Any] = {"judge": label, "won": None if verdict is None else verdict.won}
        if verdict is None or verdict.error is not None:
            why = "no answer" if verdict is None else verdict.error
            entry["error"] = why
            failed.append(f"panel judge {number} ({label}) failed: {why}")
        else:
            votes_for += verdict.won is True
            votes_against += verdict.won is False
            if verdict.ask_again:
                unsettled.append(label)
            if verdict.reason:
                entry["reason"] = verdict.reason
            if verdict.p_first is not None:
                entry["p_first"] = verdict.p_first
            detail = verdict.detail
            for name, value in (detail.get("usage") or {}).items():
                if isinstance(value, int):
                    usage[name] = usage.get(name, 0) + value
            parse_retries += int(detail.get("parse_retries", 0) or 0)
            parse_failures += int(detail.get("parse_failures", 0) or 0)
        if verdict is not None and verdict.detail:
            entry["detail"] = dict(verdict.detail)
        entries.append(entry)
    detail = {"members": entries, "votes_for": votes_for, "votes_against": votes_against, "usage": usage,
              "parse_retries": parse_retries, "parse_failures": parse_failures}
    unknown = len(failed) + len(unsettled)
    if votes_for > votes_against + unknown:
        return Verdict(True, reason="", detail=detail)
    if votes_against > votes_for + unknown:
        return Verdict(False, reason="", detail=detail)
    if failed:
        return Verdict(None, error="; ".join(failed) + " (the other judges leave the majority open)", detail=detail)
    if unsettled:
        return Verdict(None, reason=f"no majority yet: {', '.join(unsettled)} gave only empty replies",
                       detail=detail, ask_again=True)
    # Nothing unknown and no strict majority: the votes are even.
    reason = NO_VERDICT if votes_for == 0 else f"{SPLIT} {votes_for}-{votes_against}"
    return Verdict(None, reason=reason, detail=detail)


class JudgePanel(PairwiseModel):
    """A pairwise model whose verdict is its judges' majority; see the module docstring."""

    def __init__(self, name: str, members: Sequence[_Member], bon_early_stop: bool = True):
        self.name = name
        self.members = list(members)
        self.bon_early_stop = bon_early_stop
        sizes = [m.model.batch_size for m in self.members if m.model.batch_size is not None]
        self.batch_size = max(sizes) if sizes else None
        # Verdicts a judge gave for comparisons whose panel verdict is not returned yet (another
        # judge failed on them): asked again, they are not paid for twice in this process.
        self._held: list[dict[str, Verdict]] = [{} for _ in self.members]

    # -- identity -------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return all(m.model.loaded for m in self.members)

    def load(self) -> None:
        for number, member in enumerate(self.members, start=1):
            try:
                member.model.load()
            except ModelLoadError as exc:
                raise ModelLoadError(f"panel judge {number} ({member.label}): {exc}") from None

    def fingerprint(self) -> str | None:
        prints = [m.model.fingerprint() for m in self.members]
        if any(p is None for p in prints):
            return None  # a judge that cannot be cached makes the panel's verdicts uncacheable
        identity = {"backend": "panel", "rule": RULE, "judges": prints}
        return "panel-" + hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:32]

    def describe(self) -> dict[str, Any]:
        return {"backend": "panel", "panel": self.name, "rule": "strict majority of the judges that gave a verdict",
                "bon_early_stop": self.bon_early_stop,
                "judges": [{"judge": m.label, **m.model.describe()} for m in self.members]}

    def take_counters(self) -> dict[str, float]:
        """The judges' counters summed (requests, tokens, ...), and each judge's as ``judge_N_NAME``."""
        total: dict[str, float] = {}
        for number, member in enumerate(self.members, start=1):
            for name, value in member.model.take_counters().items():
                total[name] = total.get(name, 0) + value
                total[f"judge_{number}_{name}"] = value
        return total

    def close(self) -> None:
        for member in self.members:
            member.model.close()

    def preview(self, requests: Sequence[PairRequest]) -> str:
        lines = []
        for number, member in enumerate(self.members, start=1):
            try:
                line = member.model.preview(requests)
            except ModelLoadError as exc:
                raise ModelLoadError(f"panel judge {number} ({member.label}): {exc}") from None
            if line:
                lines.append(f"judge {number} ({member.label}): {line}")
        named = f"panel {self.name}" if self.name else "panel"
        head = f"{named} of {len(self.members)} judges"
        if len(self.members) % 2 == 0:
            # Said before the run, not found in its numbers afterwards.
            head += (f" (an even split, {len(self.members) // 2}-{len(self.members) // 2}, is no verdict, so ties "
                     "will be common; an odd number of judges, 3 or more, is recommended)")
        return "; ".join([head, *lines])

    # -- judging --------------------------------------------------------------------------

    def compare(self, batch: Sequence[PairRequest]) -> list[Verdict]:
        keys = [self.cache_key(request) for request in batch]
        got: list[dict[int, Verdict]] = [
            {p: held[k] for p, k in enumerate(keys) if k in held} for held in self._held]
        failures: dict[int, BaseException] = {}
        lock = threading.Lock()

        def ask(number: int) -> None:
            try:
                self._ask_member(number, batch, got[number], lock)
            except BaseException as exc:  # noqa: BLE001 - kept, named and raised below, in this thread
                failures[number] = exc

        remote = [n for n, m in enumerate(self.members) if m.model.batch_tokens is None]
        threads = [threading.Thread(target=ask, args=(n,), daemon=True, name=f"panel-judge-{n + 1}")
                   for n in remote]
        try:
            for thread in threads:
                thread.start()
            for number in range(len(self.members)):
                if number not in remote:
                    ask(number)
                    self._report(batch, got, lock)
            for thread in threads:
                while thread.is_alive():
                    thread.join(TICK_SECONDS)
                    self._report(batch, got, lock)
        except KeyboardInterrupt:
            decided = self._decided(batch, got, lock, {})
            self._hold(keys, got, decided)
            raise PartialBatchError(decided, KeyboardInterrupt("interrupted")) from None
        decided = self._decided(batch, got, lock, failures)
        if not failures:
            self._hold(keys, got, decided)
            return [decided[p] for p in range(len(batch))]
        number, exc = min(failures.items())
        if _is_out_of_memory(exc):
            # The engine halves the batch and asks again: every judge's verdicts are held for it,
            # those the others could decide without the failed judge too.
            self._hold(keys, got, {})
            raise exc
        self._hold(keys, got, decided)
        label = f"panel judge {number + 1} ({self.members[number].label})"
        cause = (PanelJudgeStopped(f"{label}: {exc}") if isinstance(exc, RunStopped)
                 else PanelJudgeFailed(f"{label}: {type(exc).__name__}: {exc}"))
        raise PartialBatchError(decided, cause) from exc

    def _ask_member(self, number: int, batch: Sequence[PairRequest], got: dict[int, Verdict],
                    lock: threading.Lock) -> None:
        """One judge's verdicts on the comparisons it has not given yet, in batches of its own size."""
        model = self.members[number].model
        todo = [p for p in range(len(batch)) if p not in got]
        if not todo:
            return
        requests = [batch[p] for p in todo]
        costs = model.cost(requests) if model.batch_tokens is not None else [1] * len(requests)
        for sub in pack_batches(costs, model.batch_size or len(requests), model.batch_tokens or UNLIMITED):
            positions = [todo[i] for i in sub]

            def heard(finished: int, detail: str, results: Mapping[int, Any] | None = None,
                      positions: list[int] = positions) -> None:
                if results:
                    with lock:
                        got.update({positions[i]: v for i, v in results.items() if isinstance(v, Verdict)})

            try:
                with batch_progress(heard):
                    verdicts = list(model.compare([batch[p] for p in positions]))
            except PartialBatchError as partial:
                heard(0, "", partial.done)
                raise partial.cause from None
            if len(verdicts) != len(positions):
                raise PanelJudgeFailed(f"returned {len(verdicts)} verdicts for a batch of {len(positions)}")
            with lock:
                got.update(zip(positions, verdicts))

    def _decided(self, batch: Sequence[PairRequest], got: list[dict[int, Verdict]], lock: threading.Lock,
                 failures: Mapping[int, BaseException]) -> dict[int, Verdict]:
        """The panel's verdict on each comparison it can decide now: every judge answered it, or
        the judges that did decide it whatever a failed judge would have said."""
        decided = {}
        with lock:
            answers = [dict(g) for g in got]
        for position in range(len(batch)):
            if all(position in a for a in answers):
                decided[position] = self._decide(position, answers)
            elif all(position in a or n in failures for n, a in enumerate(answers)):
                verdict = self._decide(position, answers)
                if verdict.error is None:
                    decided[position] = verdict
        return decided

    def _decide(self, position: int, answers: list[dict[int, Verdict]]) -> Verdict:
        return decide([(m.label, a.get(position)) for m, a in zip(self.members, answers)])

    def _report(self, batch: Sequence[PairRequest], got: list[dict[int, Verdict]], lock: threading.Lock) -> None:
        """Progress to the engine: comparisons every judge has answered, and their verdicts (cached as they come)."""
        decided = self._decided(batch, got, lock, {})
        with lock:
            given = sum(len(g) for g in got)
        self.report_progress(len(decided), f"{given}/{len(batch) * len(self.members)} judge verdicts", decided)

    def _hold(self, keys: list[str], got: list[dict[int, Verdict]], decided: Mapping[int, Verdict]) -> None:
        """Keep each judge's verdicts on the comparisons left undecided; forget those decided."""
        for held, answers in zip(self._held, got):
            for position, key in enumerate(keys):
                verdict = answers.get(position)
                if position in decided or verdict is None or not verdict.cacheable:
                    held.pop(key, None)
                else:
                    held[key] = verdict


def _is_out_of_memory(exc: BaseException) -> bool:
    # As the engine tells it (by name: torch is not imported for HTTP judges).
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def load_panel(settings: ModelSettings, lazy: bool = True) -> JudgePanel:
    """Each judge loaded through the registry with its own settings; the panel's command-line
    settings (--rmb-seed, --rmb-device, ...) apply to every judge."""
    text: str | None = settings.args.get("judges")
    if not text:
        raise ModelLoadError(f"--rmb-model {settings.model}: a panel needs its judges: --rmb-model-arg "
                             "'judges=SPEC;SPEC;SPEC' (each an openai: or hf-judge: spec and its KEY=VALUE settings)")
    judges = judge_specs(text)
    if len(judges) < 2:
        raise ModelLoadError(f"--rmb-model {settings.model}: a panel needs at least 2 judges, got {len(judges)} "
                             f"({judges[0].spec}); to run one judge, give its spec as --rmb-model")
    registry = installed_backends()
    labels = _labels([judge.spec for judge in judges])
    members = []
    for number, (judge, label) in enumerate(zip(judges, labels), start=1):
        where = f"panel judge {number} ({label})"
        try:
            backend = backend_for(judge.spec, registry)
            if backend.scheme == "panel":
                raise ModelLoadError("a panel cannot be a judge of another panel")
            member_settings = dataclasses.replace(settings, model=judge.spec, args=backend.parse_args(judge.settings))
            model = load_model(member_settings, backend, lazy=lazy)
        except (BackendError, ModelLoadError) as exc:
            raise ModelLoadError(f"{where}: {_without_option_names(str(exc), judge.spec)}") from None
        if not isinstance(model, PairwiseModel):
            model.close()
            raise ModelLoadError(f"{where}: a pointwise model (one score per answer), not a judge; a panel's judges "
                                 "compare two answers: openai:MODEL or hf-judge:MODEL")
        members.append(_Member(label, model))
    return JudgePanel(settings.target, members, bool(settings.args.get("bon_early_stop", True)))


def _without_option_names(message: str, spec: str) -> str:
    """A judge's spec and settings are words of ``judges=``, not options: its errors, which the
    label already names, say the setting alone."""
    return message.replace(f"--rmb-model {spec}: ", "").replace("--rmb-model-arg ", "setting ")


BACKEND = Backend(
    "panel", lambda settings: _loaded(load_panel(settings, lazy=False)), ARGS,
    prepare=load_panel,
    name_optional=True,
    summary="a panel of LLM judges deciding each comparison by strict majority: --rmb-model panel:[NAME] "
            "--rmb-model-arg 'judges=SPEC KEY=VALUE ...;SPEC ...'",
)


def _loaded(panel: JudgePanel) -> JudgePanel:
    panel.load()
    return panel
