"""``vllm:MODEL`` and ``sglang:MODEL``: reward models behind an inference server.

When a reward model is too big for one GPU, or already runs as a service, the server does the data
and tensor parallelism and pytest-rmb sends it requests: many at once (``concurrency`` per
replica), to one or several replicas (``base_url=URL,URL``), with the retries, timeouts and
secrets handling of :mod:`pytest_rmb.http`. Scores are cached like a local model's.

What is sent, per (conversation, response):

- ``template=server`` (vLLM's default): the chat ``messages``, so the server applies the model's
  own chat template, the same way ``hf:`` renders locally (no generation prompt, no extra special
  tokens).
- ``template=client``: token ids rendered and tokenized here by the HF backend's own code path
  (:class:`pytest_rmb.backends._transformers.ChatRenderer`: chat template or plain fallback, truncation that
  keeps the response), from the tokenizer alone (``tokenizer=`` or the model name). SGLang's
  ``/classify`` takes only text or token ids, so this is its only mode.

The servers are checked (and sent one test request) on first need, not when the model is built:
a rerun that the score cache answers in full sends nothing.

Routes and shapes (from each project's protocol definitions):

- vLLM ``POST /pooling`` (default) ``{model, messages | input, use_activation: false,
  encoding_format: "float"}`` -> ``data[i].data``: one value per label, or one row per token for
  token-level reward models (the last token's row is the sequence's reward).
- vLLM ``POST /classify`` ``{model, messages | input, use_activation: false}`` -> ``data[i].probs``
  (raw logits when the activation is off).
- SGLang ``POST /classify`` (the native route, not ``/v1/classify``, which applies a softmax that
  makes every single-label reward 1.0) ``{model, input_ids}`` -> ``{embedding: [...]}``: raw scores.

Raw rewards: vLLM applies a sigmoid (one label) or softmax (several) unless told not to; we send
``use_activation: false`` on every request (the field's name in current vLLM; releases before it
called it ``activation`` or ``softmax`` and ignore an unknown field, so start those with
``--override-pooler-config '{"activation": false}'``, or current ones with ``--pooler-config
'{"use_activation": false}'`` to make raw scores the server's default). SGLang's native route
applies no activation. A run whose first 20 or more scores all lie in [0, 1] is warned about
once: it is probably post-activation, which squeezes the scale and turns near-ties into ties.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_rmb.backends import (
    ROUTINGS,
    Backend,
    ModelArg,
    ModelLoadError,
    ModelSettings,
    prepared_then_loaded,
)
from pytest_rmb.batching import pack_batches
from pytest_rmb.models import PartialBatchError, PointwiseModel, ScoreRequest, as_chat, conversation_key
from pytest_rmb.parsers import choice, env_var_name, non_negative_int, positive_int

if TYPE_CHECKING:
    from pytest_rmb.backends._transformers import ChatRenderer

# Part of the cache fingerprint: bump it when requests or parsing change what a text scores.
SCORER_VERSION = "1"
DEFAULT_CONCURRENCY = 16
# Requests per batch per unit of concurrency: enough queued work that no slot idles while the
# slowest request of a batch finishes, small enough that a failed batch loses little.
BATCH_PER_SLOT = 4
# Post-activation detection: this many scores, every one in [0, 1], is no coincidence for raw logits.
ACTIVATION_SAMPLE = 20
STARTUP_TIMEOUT = 10.0


@dataclass(frozen=True)
class ServerKind:
    """What differs between the two servers."""

    scheme: str
    title: str
    endpoints: tuple[str, ...]
    templates: tuple[str, ...]
    default_port: int
    key_env: str
    launch: str

    def path(self, endpoint: str) -> str:
        return f"/{endpoint}"


VLLM = ServerKind(
    "vllm", "vLLM", ("pooling", "classify"), ("server", "client"), 8000, "VLLM_API_KEY",
    "vllm serve MODEL --runner pooling",
)
SGLANG = ServerKind(
    "sglang", "SGLang", ("classify",), ("client", "server"), 30000, "SGLANG_API_KEY",
    "python -m sglang.launch_server --model-path MODEL --is-embedding",
)


class ServedModelError(RuntimeError):
    """A request or a response that cannot give a score; the message names server and route."""


class LabelError(ServedModelError):
    """The server's output has several values per text and no --rmb-reward-index picks one."""


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number of seconds > 0, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise ValueError(f"expected a number of seconds > 0, got {value}")
    return value


def model_id(text: str) -> str:
    if not text.strip():
        raise ValueError("expected a Hugging Face id or a local directory")
    return text


model_id.type_name = "id_or_dir"  # type: ignore[attr-defined]
positive_seconds.type_name = "seconds"  # type: ignore[attr-defined]


def base_url_list(text: str) -> list[str]:
    """Comma-separated server roots; a trailing ``/v1`` (the OpenAI-style root) is dropped, because
    the pooling and classify routes live at the server root."""
    from pytest_rmb.http import split_base_urls

    return [url.removesuffix("/v1") for url in split_base_urls(text)]


base_url_list.type_name = "urls"  # type: ignore[attr-defined]


def _args(engine: ServerKind) -> tuple[ModelArg, ...]:
    return (
        ModelArg("base_url", base_url_list, f"http://127.0.0.1:{engine.default_port}",
                 "server root(s), comma-separated; requests are spread across the replicas"),
        ModelArg("endpoint", choice(*engine.endpoints), engine.endpoints[0],
                 "route that scores: " + " or ".join(f"/{e}" for e in engine.endpoints)),
        ModelArg("template", choice(*engine.templates), engine.templates[0],
                 "server: send chat messages, the server applies the chat template; client: render "
                 "and tokenize here like hf: and send token ids"),
        ModelArg("tokenizer", model_id, None, "tokenizer for template=client (default: the model name)"),
        ModelArg("concurrency", positive_int, DEFAULT_CONCURRENCY, "requests in flight per replica"),
        ModelArg("routing", choice(*ROUTINGS), ROUTINGS[0],
                 "with several base URLs: affinity sends the answers to one conversation to the same replica, "
                 "one after another, so its prefix cache computes the conversation once; round-robin spreads "
                 "requests in turn regardless of conversation (the behaviour before affinity routing)"),
        ModelArg("batch_size", positive_int, None,
                 f"texts handed over per engine batch (default {BATCH_PER_SLOT} x concurrency x replicas)"),
        ModelArg("timeout", positive_seconds, 120.0,
                 "seconds one request may take in all (connecting to the last byte of the reply) before it is "
                 "retried"),
        ModelArg("retries", non_negative_int, 4, "retries of a request after 429, 5xx, timeouts, dropped connections"),
        ModelArg("api_key_env", env_var_name, engine.key_env,
                 "environment variable holding the server's API key (sent as a Bearer token; not to be combined "
                 "with user:password@ in base_url, which is sent as HTTP Basic auth)"),
    )


class ServedRewardModel(PointwiseModel):
    """Scores from a vLLM or SGLang server, many requests in flight, one per text."""

    def __init__(self, engine: ServerKind, settings: ModelSettings, *, api_key: str | None,
                 renderer: ChatRenderer | None = None):
        args = settings.args
        self.engine = engine
        self.name = settings.target
        self.base_urls: list[str] = list(args["base_url"])
        self.endpoint: str = args["endpoint"]
        self.template: str = args["template"]
        self.tokenizer_name: str = args.get("tokenizer") or settings.target
        self.concurrency: int = args["concurrency"] * len(self.base_urls)
        self.routing: str = args.get("routing") or ROUTINGS[0]
        self.batch_size = args.get("batch_size") or BATCH_PER_SLOT * self.concurrency
        self.reward_index = settings.reward_index
        self.max_length = settings.max_length
        # --rmb-chat-template: the client renderer reads it; a vLLM chat request carries it along.
        self.chat_template = (Path(settings.chat_template).read_text(encoding="utf-8")
                              if settings.chat_template and renderer is None else None)
        self._api_key = api_key
        self._key_env: str = args["api_key_env"]
        self._spec = settings.model
        self._renderer = renderer
        self._served_root: str | None = None
        self._checked = False
        from pytest_rmb.http import RetryPolicy

        self._policy = RetryPolicy(retries=args["retries"], timeout=args["timeout"])
        self._counters: dict[str, float] = {}
        self._scores_seen = 0
        self._all_in_unit_interval = True
        self._warned_activation = False
        self._unreachable: str | None = None

    # -- what the results depend on ------------------------------------------------------------

    def fingerprint(self) -> str:
        """The served model's name, route and rendering; never a URL or a key, so replicas and a
        moved server share the cache."""
        parts = [f"scorer served {SCORER_VERSION}", self.engine.scheme, self.name, self.endpoint, self.template,
                 f"reward_index {self.reward_index}"]
        if self._renderer is not None:
            parts += [f"tokenizer {self.tokenizer_name}", self._renderer.template_identity(),
                      f"max_length {self._renderer.max_length}"]
        else:
            parts += [f"max_length {self.max_length}", f"chat_template {self.chat_template}"]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]

    def describe(self) -> dict[str, Any]:
        from pytest_rmb.http import redact_url

        info: dict[str, Any] = {
            "server": self.engine.title,
            "base_urls": [redact_url(url) for url in self.base_urls],
            "endpoint": self.engine.path(self.endpoint),
            "template": self.template,
            "concurrency": self.concurrency,
            # What the server says it loaded (vLLM: the model path), for provenance only: the cache
            # keys on the served name, so a replica loading from another path still shares it.
            "served_root": self._served_root,
            "activation": "off (use_activation: false)" if self.engine is VLLM else "none (raw scores)",
        }
        if self._renderer is not None:
            info["tokenizer"] = self.tokenizer_name
            info["max_length"] = self._renderer.max_length
            info["chat_template_sha256"] = hashlib.sha256(self._renderer.template_identity().encode()).hexdigest()[:16]
        elif self.max_length is not None:
            info["max_length"] = self.max_length
        return info

    def take_counters(self) -> dict[str, float]:
        counters, self._counters = self._counters, {}
        return counters

    @property
    def loaded(self) -> bool:
        return self._checked

    def load(self) -> None:
        """Check every server and send one test request: a server that is down, wants a key,
        serves another model or lacks the route fails here within seconds, naming it."""
        if self._checked:
            return
        from pytest_rmb.http import HTTPFailure

        self._served_root = check_servers(self.engine, self.name, self.base_urls, self._api_key, self._key_env,
                                          self._spec)
        try:
            self.probe()
        except LabelError as exc:
            raise ModelLoadError(f"--rmb-model {self._spec}: {exc}") from None
        except (HTTPFailure, ServedModelError) as exc:
            raise ModelLoadError(f"--rmb-model {self._spec}: a test request to {self.engine.path(self.endpoint)} "
                                 f"failed: {exc}") from None
        self._counters = {}  # the run's counters start after the test request
        self._checked = True

    # -- requests --------------------------------------------------------------------------------

    def payloads(self, batch: Sequence[ScoreRequest]) -> list[dict[str, Any]]:
        """The JSON bodies that score each request, one request per text."""
        bodies: list[dict[str, Any]]
        if self._renderer is not None:
            key = "input_ids" if self.engine is SGLANG else "input"
            rows = self._renderer.rows(batch)
            truncated = sum(len(ids) < rendered for ids, rendered in rows)
            if truncated:
                self._counters["truncated"] = self._counters.get("truncated", 0) + truncated
            bodies = [{"model": self.name, key: ids} for ids, _ in rows]
        else:
            bodies = [{"model": self.name, "messages": as_chat(r.conversation, r.response)} for r in batch]
            for body in bodies:
                if self.max_length is not None:
                    # vLLM keeps the last k tokens: the response survives, as with hf:.
                    body["truncate_prompt_tokens"] = self.max_length
                if self.chat_template is not None:
                    body["chat_template"] = self.chat_template
        if self.engine is VLLM:
            for body in bodies:
                # vLLM applies a sigmoid or softmax by default; the reward is the raw logit.
                body["use_activation"] = False
                if self.endpoint == "pooling":
                    body["encoding_format"] = "float"
        return bodies

    def plan_batches(self, requests: Sequence[ScoreRequest], costs: Sequence[int], max_batch_size: int,
                     max_batch_cost: int) -> list[list[int]]:
        """The engine's batches. With affinity routing and several replicas, whole conversations
        go together, so a conversation's answers reach its replica back to back while the prefix
        is still in that server's cache; else the engine's own length-sorted batches."""
        if self.routing == "affinity" and len(self.base_urls) > 1:
            return conversation_batches(requests, costs, max_batch_size, max_batch_cost)
        return pack_batches(costs, max_batch_size, max_batch_cost)

    def score(self, batch: Sequence[ScoreRequest]) -> list[float]:
        self.load()
        if self._unreachable is not None:
            raise ServedModelError(self._unreachable)
        results = self._send(batch)
        done = {i: r for i, r in enumerate(results) if not isinstance(r, BaseException)}
        self._watch_activation(list(done.values()))
        failures = [r for r in results if isinstance(r, BaseException)]
        if not failures:
            return list(done.values())
        cause = failures[0]
        if _refused(cause):
            self._unreachable = (
                f"the {self.engine.title} server stopped answering earlier in this run ({cause}); not asking "
                "it again. The scores received so far are cached: restart the server and rerun."
            )
        if not isinstance(cause, Exception):  # KeyboardInterrupt and the like end the run as they are
            raise cause
        if done:
            raise PartialBatchError(done, cause)
        raise cause

    def probe(self) -> float:
        """One request at load time: the route exists, accepts our requests and gives one reward."""
        from pytest_rmb.data import Message

        result = self._send([ScoreRequest((Message("user", "Say hello."),), "Hello!")])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def _send(self, batch: Sequence[ScoreRequest]) -> list[float | BaseException]:
        """Every request of the batch at once (the client bounds what is in flight); results in
        order, a failed request's exception in its place."""
        from pytest_rmb.http import JSONClient, run_concurrently

        path = self.engine.path(self.endpoint)
        bodies = self.payloads(batch)
        order: list[int] = list(range(len(batch)))
        replicas: list[int | None] = [None] * len(batch)
        if self.routing == "affinity" and len(self.base_urls) > 1:
            order, chosen = affinity_order(batch, len(self.base_urls))
            replicas = list(chosen)
        # The jobs run in `order` (a conversation's answers back to back); results go back by index.
        jobs = [partial(self._one, path, bodies[i], replica=replicas[i]) for i in order]
        clients: list[JSONClient] = []

        def client() -> JSONClient:
            made = JSONClient(self.base_urls, api_key=self._api_key, concurrency=self.concurrency,
                              policy=self._policy)
            clients.append(made)
            return made

        started = time.perf_counter()
        done: dict[int, float] = {}

        def report() -> None:
            # The rewards so far go with the progress, so that the engine caches them while the
            # batch runs (a kill loses seconds of scores, not the batch).
            rate = len(done) / max(time.perf_counter() - started, 1e-9)
            self.report_progress(len(done), f"{rate:.1f} requests/s", done)

        def on_done(index: int, value: float) -> None:
            # One request per text: the progress bar moves with each reward that arrives.
            done[order[index]] = value
            report()

        try:
            # The tick saves rewards that arrived together while the batch waits on a retried one.
            ran = run_concurrently(client, jobs, on_done, on_tick=report)
            results: list[float | BaseException] = [0.0] * len(batch)
            for position, result in zip(order, ran):
                results[position] = result
            return results
        except KeyboardInterrupt:
            # Ctrl-C: the rewards received are kept (and cached by the engine); the run stops.
            if not done:
                raise
            raise PartialBatchError(done, KeyboardInterrupt("interrupted")) from None
        finally:
            for made in clients:
                for name, value in made.stats.items():
                    self._counters[f"http_{name}"] = self._counters.get(f"http_{name}", 0) + value

    async def _one(self, path: str, body: dict[str, Any], client, *, replica: int | None = None) -> float:
        answer = await client.post(path, body, replica=replica)
        try:
            return self._parse(answer)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            from pytest_rmb.http import excerpt_of

            raise ServedModelError(
                f"{self.engine.title} {path}: unexpected response ({type(exc).__name__}: {exc}): "
                f"{excerpt_of(answer)}"
            ) from None

    def _parse(self, answer: Any) -> float:
        if self.engine is SGLANG:
            item = answer[0] if isinstance(answer, list) else answer
            return self._pick(item["embedding"])
        item = answer["data"][0]
        return self._pick(item["data"] if self.endpoint == "pooling" else item["probs"])

    def _pick(self, values: Any) -> float:
        """The reward from one text's output: a number, one value per label, or one row per token
        (a token-level reward model: the last token's row holds the sequence's reward)."""
        if isinstance(values, (int, float)):
            return float(values)
        if not isinstance(values, list):
            raise TypeError(f"expected a list of floats, got {type(values).__name__}")
        if values and isinstance(values[-1], list):
            values = values[-1]
        if len(values) == 1:
            return float(values[0])
        if self.reward_index is None:
            raise LabelError(
                f"{self.engine.scheme}:{self.name} returns {len(values)} values per text (a model with "
                f"{len(values)} labels); pass --rmb-reward-index N to say which one is the reward"
            )
        if not 0 <= self.reward_index < len(values):
            raise LabelError(f"--rmb-reward-index {self.reward_index}: {self.engine.scheme}:{self.name} returns "
                             f"{len(values)} values per text")
        return float(values[self.reward_index])

    def _watch_activation(self, scores: list[float]) -> None:
        if self._warned_activation or not self._all_in_unit_interval:
            return
        self._scores_seen += len(scores)
        if any(not 0.0 <= s <= 1.0 for s in scores):
            self._all_in_unit_interval = False
            return
        if self._scores_seen >= ACTIVATION_SAMPLE:
            self._warned_activation = True
            from pytest_rmb.backends import RMBWarning

            flag = ("start vLLM with --pooler-config '{\"use_activation\": false}' (older releases: "
                    "--override-pooler-config '{\"activation\": false}')" if self.engine is VLLM
                    else "check the server's pooling settings")
            warnings.warn(
                f"{self.engine.scheme}:{self.name}: all of the first {self._scores_seen} scores lie in [0, 1]; "
                f"the server probably applies a sigmoid or softmax, which squeezes rewards and turns near-ties "
                f"into ties. For raw rewards {flag}.",
                RMBWarning,
                stacklevel=2,
            )


def conversation_batches(requests: Sequence[ScoreRequest], costs: Sequence[int], max_batch_size: int,
                         max_batch_cost: int) -> list[list[int]]:
    """Indices in batches of whole conversations (the costliest conversation first, as the engine
    orders texts), within the engine's limits: at most ``max_batch_size`` texts and
    ``max_batch_cost`` padded units (texts times the longest); a conversation too big for one
    batch fills several on its own."""
    groups: dict[str, list[int]] = {}
    for index, request in enumerate(requests):
        groups.setdefault(conversation_key(request.conversation), []).append(index)
    ordered = sorted(groups.values(), key=lambda members: (-sum(costs[i] for i in members), members[0]))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0

    def fits(extra: Sequence[int]) -> bool:
        widest = max([longest, 1, *(costs[i] for i in extra)])
        return len(current) + len(extra) <= max_batch_size and widest * (len(current) + len(extra)) <= max_batch_cost

    for members in ordered:
        if current and not fits(members):
            batches.append(current)
            current, longest = [], 0
        for index in members:  # alone in the batch: fill it, and more, text by text
            if current and not fits([index]):
                batches.append(current)
                current, longest = [], 0
            current.append(index)
            longest = max(longest, costs[index], 1)
    if current:
        batches.append(current)
    return batches


# How far over its fair share of a batch a conversation's own replica may be loaded before the
# conversation goes to the least loaded replica instead: the batch ends when its slowest replica does.
FAIR_SHARE_SLACK = 1.05


def affinity_order(batch: Sequence[ScoreRequest], replicas: int) -> tuple[list[int], list[int]]:
    """The order to send a batch in and each request's replica: a conversation's answers go to one
    replica, back to back. Its replica is the one its key hashes to
    (:func:`pytest_rmb.http.replica_for`, the same in every run and process) unless that replica
    already holds its fair share of the batch's work (the conversation once, plus each answer: what
    a prefix-caching server computes), in which case it is the least loaded one; the biggest
    conversations are placed first. Replicas take turns in the sending order, so that the requests
    in flight are spread over them."""
    from pytest_rmb.http import replica_for

    groups: dict[str, list[int]] = {}
    for index, request in enumerate(batch):
        groups.setdefault(conversation_key(request.conversation), []).append(index)

    def work(members: list[int]) -> int:
        conversation = batch[members[0]].conversation
        return sum(len(m.content) for m in conversation) + sum(len(batch[i].response) + 1 for i in members)

    costs = {key: work(members) for key, members in groups.items()}
    fair = sum(costs.values()) / replicas * FAIR_SHARE_SLACK
    load = [0] * replicas
    queues: list[list[list[int]]] = [[] for _ in range(replicas)]  # each replica's conversations
    chosen = [0] * len(batch)
    for key in sorted(groups, key=lambda k: -costs[k]):  # stable: ties keep the batch's order
        replica = replica_for(key, replicas)
        if load[replica] and load[replica] + costs[key] > fair:
            replica = min(range(replicas), key=lambda r: (load[r], r))
        load[replica] += costs[key]
        queues[replica].append(groups[key])
        for index in groups[key]:
            chosen[index] = replica
    order: list[int] = []
    for turn in range(max(len(q) for q in queues)):
        for queue in queues:
            if turn < len(queue):
                order.extend(queue[turn])
    return order, chosen


def _refused(error: BaseException) -> bool:
    """Nothing listens any more (after the client's own retries): the server is gone."""
    from pytest_rmb.http import HTTPFailure

    return isinstance(error, HTTPFailure) and error.error_type == "ConnectError"


# -- loading -------------------------------------------------------------------------------------


def check_servers(engine: ServerKind, model: str, urls: Sequence[str], api_key: str | None, key_env: str,
                  spec: str) -> str | None:
    """Fail within seconds, naming the URL, when a server is down, wants a key, or serves another
    model; returns what the first server says it loaded for the model (its ``root``), if it says."""
    from pytest_rmb.http import HTTPFailure, list_models, redact_url, url_credentials

    roots: list[str | None] = []
    for url, answer in zip(urls, list_models(urls, "/v1/models", api_key, STARTUP_TIMEOUT)):
        shown = redact_url(url)
        if isinstance(answer, HTTPFailure):
            if answer.status is None:
                raise ModelLoadError(f"--rmb-model {spec}: no {engine.title} server answers at {shown} "
                                     f"({answer.detail}); start one with `{engine.launch.replace('MODEL', model)}` "
                                     "or pass --rmb-model-arg base_url=URL")
            if answer.status in (401, 403):
                if url_credentials(url) is not None:
                    raise ModelLoadError(f"--rmb-model {spec}: the server at {shown} refuses the credentials in "
                                         "the base URL (sent as HTTP Basic auth)")
                where = f"${key_env} is set but the server refuses it" if api_key else f"${key_env} is not set"
                raise ModelLoadError(f"--rmb-model {spec}: the server at {shown} wants an API key ({where}); "
                                     "export the key in that variable or name another with "
                                     "--rmb-model-arg api_key_env=NAME")
            raise ModelLoadError(f"--rmb-model {spec}: {shown} is not a {engine.title} server: {answer}")
        if isinstance(answer, ValueError):
            raise ModelLoadError(f"--rmb-model {spec}: {answer}")
        if isinstance(answer, BaseException):
            raise ModelLoadError(f"--rmb-model {spec}: {shown}/v1/models failed: {answer}")
        listed = answer
        if model not in listed:
            raise ModelLoadError(f"--rmb-model {spec}: the server at {shown} serves {', '.join(listed) or 'no model'}, "
                                 f"not {model!r} (the name after '{engine.scheme}:' must be the served model name)")
        root = listed[model].get("root") if isinstance(listed[model], dict) else None
        roots.append(str(root) if root else None)
    return roots[0] if roots else None


def load_renderer(settings: ModelSettings, tokenizer_name: str):
    """The HF backend's renderer over the tokenizer alone (no weights are loaded)."""
    from pytest_rmb.backends._transformers import ChatRenderer, load_tokenizer

    tokenizer = load_tokenizer(settings, f"--rmb-model {settings.model}", "template=client needs the model's "
                               f"tokenizer, and {tokenizer_name!r} cannot be loaded (pass --rmb-model-arg "
                               "tokenizer=ID_OR_DIR)", target=tokenizer_name)
    return ChatRenderer(tokenizer, tokenizer_name, chat_template=settings.chat_template, max_length=settings.max_length)


def prepare_served(engine: ServerKind, settings: ModelSettings) -> ServedRewardModel:
    """The served model from its settings (and the tokenizer, for template=client); the servers
    are checked by its ``load()``, on first need."""
    from pytest_rmb.http import CredentialsConflict, api_key_from_env, check_credentials

    args = dict(_defaults(engine))
    args.update(settings.args)
    if engine is SGLANG and args["template"] == "server":
        raise ModelLoadError(f"--rmb-model {settings.model}: template=server: SGLang's /classify takes text or "
                             "token ids, not chat messages, so it cannot apply the chat template; use "
                             "template=client (the default), which renders here exactly as hf: does")
    if isinstance(args["base_url"], str):
        args["base_url"] = base_url_list(args["base_url"])
    settings = _with_args(settings, args)
    api_key = api_key_from_env(args["api_key_env"], default=engine.key_env)
    try:  # before the tokenizer loads or any server is asked
        check_credentials(args["base_url"], api_key)
    except CredentialsConflict as exc:
        raise ModelLoadError(f"--rmb-model {settings.model}: {exc}") from None
    renderer = None
    if args["template"] == "client":
        renderer = load_renderer(settings, args.get("tokenizer") or settings.target)
    return ServedRewardModel(engine, settings, api_key=api_key, renderer=renderer)


def _defaults(engine: ServerKind) -> dict[str, Any]:
    return {arg.name: arg.default for arg in _args(engine)}


def _with_args(settings: ModelSettings, args: dict[str, Any]) -> ModelSettings:
    from dataclasses import replace

    return replace(settings, args=args)


VLLM_BACKEND = Backend(
    "vllm", prepared_then_loaded(partial(prepare_served, VLLM)), _args(VLLM), prepare=partial(prepare_served, VLLM),
    summary="a reward or classification model served by vLLM's pooling API (vllm serve MODEL --runner pooling); "
    "MODEL is the served model name",
)
SGLANG_BACKEND = Backend(
    "sglang", prepared_then_loaded(partial(prepare_served, SGLANG)), _args(SGLANG),
    prepare=partial(prepare_served, SGLANG),
    summary="a reward model served by SGLang (python -m sglang.launch_server --is-embedding), native /classify; "
    "MODEL is the served model name",
)
