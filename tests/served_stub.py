"""A stand-in for a vLLM or SGLang reward-model server, for the served-backend tests.

It speaks the request and response shapes those projects define (vLLM: ``/v1/models``,
``/pooling`` and ``/classify`` of its pooling API; SGLang: ``/v1/models`` and its native
``/classify``) and scores with a real Hugging Face checkpoint on CPU, one text at a time, applying
the chat template server-side as the real servers do. Faults are injected from the command line,
so a test can watch pytest-rmb meet them the way it would meet a real server:

    python -m tests.served_stub --model DIR --port-file F [--flavor vllm|sglang]
        [--served-name NAME] [--api-key-env NAME] [--fail STATUS:COUNT[:RETRY_AFTER]]
        [--die-after N] [--delay SECONDS] [--always-activate] [--token-level] [--log FILE]

It binds 127.0.0.1 on a free port and writes the port to ``--port-file`` once it accepts
connections. ``--log`` gets one JSON line per scoring request (path, status, texts, in-flight
count, time), which is how tests count what was asked. ``--die-after N`` ends the process after
N answered scoring requests, as if it had been killed, with requests still in flight.

``POST /_control`` with a JSON object of the same settings (``fail``, ``die_after``, ``delay``,
``always_activate``, ``token_level``, ``log``) changes them on a running server, so that one server
serves many tests; ``{}`` resets them all.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Scorer:
    """The checkpoint, scoring one token sequence at a time (so no padding can change a score)."""

    def __init__(self, path: str):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        # One text at a time needs no intra-op threads; on a busy machine their spin-waiting makes
        # a forward of this tiny model take most of a second instead of milliseconds.
        torch.set_num_threads(1)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
        self.labels = self.model.config.num_labels
        self.lock = threading.Lock()

    def chat_ids(self, messages: list[dict], add_generation_prompt: bool, add_special_tokens: bool,
                 chat_template: str | None = None) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                  chat_template=chat_template)
        return self.text_ids(text, add_special_tokens)

    def text_ids(self, text: str, add_special_tokens: bool) -> list[int]:
        return self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]

    def logits(self, ids: list[int]) -> list[float]:
        with self.lock, self.torch.inference_mode():
            return self.model(input_ids=self.torch.tensor([ids])).logits[0].float().tolist()

    def token_logits(self, ids: list[int]) -> list[list[float]]:
        """The reward head on every position, like vLLM's ALL pooling for reward models; the last
        row is the sequence score of a last-token-pooling decoder."""
        with self.lock, self.torch.inference_mode():
            hidden = self.model.model(input_ids=self.torch.tensor([ids])).last_hidden_state
            return self.model.score(hidden)[0].float().tolist()


def activate(values: list[float]) -> list[float]:
    """vLLM's default classifier activation: sigmoid for one label, softmax for several."""
    import math

    if len(values) == 1:
        return [1.0 / (1.0 + math.exp(-values[0]))]
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    return [e / sum(exps) for e in exps]


class Faults:
    """The --fail plan (the first COUNT scoring requests get STATUS) and the --die-after count."""

    def __init__(self, fail: str | None, die_after: int | None):
        self.lock = threading.Lock()
        self.status = self.count = 0
        self.retry_after: str | None = None
        if fail:
            parts = fail.split(":")
            self.status, self.count = int(parts[0]), int(parts[1])
            self.retry_after = parts[2] if len(parts) > 2 else None
        self.die_after = die_after
        self.answered = 0
        self.in_flight = 0

    def take_failure(self) -> bool:
        with self.lock:
            if self.count > 0:
                self.count -= 1
                return True
            return False

    def should_die(self) -> bool:
        with self.lock:
            return self.die_after is not None and self.answered >= self.die_after


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes; without this, Nagle's algorithm holds the body back
    # until the client's delayed ACK, and every answer waits for it.
    disable_nagle_algorithm = True
    server: StubServer

    def log_message(self, format: str, *args) -> None:
        pass  # the JSON log is the record; stderr stays quiet

    def _send(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        # vLLM's ErrorResponse shape; SGLang's is the same idea.
        self._send(status, {"error": {"message": message, "type": HTTPStatus(status).phrase, "code": status}},
                   headers)

    def _authorized(self) -> bool:
        expected = self.server.api_key
        if expected is None:
            return True
        if self.headers.get("Authorization") == f"Bearer {expected}":
            return True
        self._error(401, "Unauthorized")
        return False

    def do_GET(self) -> None:
        if not self._authorized():
            return
        if self.path in ("/v1/models", "/v1/models/"):
            owner = self.server.flavor
            self._send(200, {"object": "list", "data": [
                {"id": self.server.served_name, "object": "model", "created": 0, "owned_by": owner,
                 "root": self.server.model_path, "max_model_len": 256},
            ]})
        elif self.path == "/health":
            self._send(200, {})
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path == "/_control":
            self.server.configure(json.loads(raw or b"{}"))
            self._send(200, {})
            return
        if not self._authorized():
            return
        routes = {"vllm": {"/pooling": self._vllm, "/classify": self._vllm},
                  "sglang": {"/classify": self._sglang}}[self.server.flavor]
        route = routes.get(self.path)
        if route is None:
            self._error(404, f"no route {self.path}")
            return
        faults = self.server.faults
        if faults.should_die():
            # As if killed: no answer to this request or any in flight.
            os._exit(17)
        with faults.lock:
            faults.in_flight += 1
            in_flight = faults.in_flight
        status = 200
        texts = 0
        try:
            if self.server.delay:
                time.sleep(self.server.delay)
            if faults.take_failure():
                status = faults.status
                headers = {"Retry-After": faults.retry_after} if faults.retry_after else {}
                self._error(status, "injected failure", headers)
                return
            body = json.loads(raw)
            name = body.get("model")
            if name is not None and name != self.server.served_name:
                status = 404
                self._error(404, f"The model `{name}` does not exist.")
                return
            status, answer, texts = route(body)
            if status != 200:
                self._error(status, answer)
                return
            with faults.lock:
                faults.answered += 1
            self._send(200, answer)
        finally:
            with faults.lock:
                faults.in_flight -= 1
            self.server.record({"path": self.path, "status": status, "texts": texts, "in_flight": in_flight,
                                "time": time.time(), "auth": "Authorization" in self.headers,
                                "host": self.headers.get("Host", "")})

    # -- vLLM ------------------------------------------------------------------------------------

    def _vllm_prompts(self, body: dict) -> list[list[int]]:
        scorer = self.server.scorer
        if "messages" in body:
            return [scorer.chat_ids(body["messages"], bool(body.get("add_generation_prompt", False)),
                                    bool(body.get("add_special_tokens", False)), body.get("chat_template"))]
        given = body["input"]
        special = bool(body.get("add_special_tokens", True))
        if isinstance(given, str):
            return [scorer.text_ids(given, special)]
        if given and all(isinstance(x, int) for x in given):
            return [list(given)]
        return [scorer.text_ids(x, special) if isinstance(x, str) else list(x) for x in given]

    def _vllm(self, body: dict) -> tuple[int, object, int]:
        prompts = self._vllm_prompts(body)
        keep = body.get("truncate_prompt_tokens")
        if keep is not None and keep > 0:
            # vLLM keeps the last k tokens.
            prompts = [ids[-keep:] for ids in prompts]
        use_activation = body.get("use_activation")
        activated = self.server.always_activate or use_activation is None or use_activation
        scorer = self.server.scorer
        data: list[dict] = []
        for index, ids in enumerate(prompts):
            if self.path == "/pooling" and self.server.token_level:
                rows = scorer.token_logits(ids)
                data.append({"index": index, "object": "pooling",
                             "data": [activate(row) if activated else row for row in rows]})
                continue
            values = scorer.logits(ids)
            values = activate(values) if activated else values
            if self.path == "/pooling":
                data.append({"index": index, "object": "pooling", "data": values})
            else:
                label = max(range(len(values)), key=values.__getitem__)
                data.append({"index": index, "label": f"LABEL_{label}", "probs": values, "num_classes": len(values)})
        tokens = sum(len(ids) for ids in prompts)
        kind = "pool" if self.path == "/pooling" else "classify"
        return 200, {"id": f"{kind}-stub", "object": "list", "created": int(time.time()),
                     "model": self.server.served_name, "data": data,
                     "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}, len(prompts)

    # -- SGLang ----------------------------------------------------------------------------------

    def _sglang(self, body: dict) -> tuple[int, object, int]:
        scorer = self.server.scorer
        if body.get("text") is not None:
            given = body["text"]
            single = isinstance(given, str)
            # SGLang's tokenizer manager encodes text with the tokenizer's own special tokens.
            prompts = [scorer.text_ids(t, True) for t in ([given] if single else given)]
        elif body.get("input_ids") is not None:
            given = body["input_ids"]
            single = bool(given) and isinstance(given[0], int)
            prompts = [list(given)] if single else [list(x) for x in given]
        else:
            return 400, "Either text or input_ids should be provided.", 0
        items = [{"embedding": scorer.logits(ids),
                  "meta_info": {"id": f"stub-{i}", "prompt_tokens": len(ids), "e2e_latency": 0.0}}
                 for i, ids in enumerate(prompts)]
        return 200, (items[0] if single else items), len(prompts)


class StubServer(ThreadingHTTPServer):
    daemon_threads = True
    # The client opens up to `concurrency` connections at once (64 in the chaos runs); socketserver's
    # default backlog of 5 makes the kernel reset them under load, which a real server never does.
    request_queue_size = 128

    def __init__(self, args: argparse.Namespace):
        super().__init__(("127.0.0.1", args.port), Handler)
        self.flavor = args.flavor
        self.model_path = args.model
        self.served_name = args.served_name or args.model
        self.scorer = self.make_scorer(args)
        self.api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
        self.log_lock = threading.Lock()
        self.configure({"fail": args.fail, "die_after": args.die_after, "delay": args.delay,
                        "always_activate": args.always_activate, "token_level": args.token_level, "log": args.log})

    def make_scorer(self, args: argparse.Namespace):
        """What scores the texts (tests/prefix_cache_server.py puts a model-free one here)."""
        return Scorer(args.model)

    def configure(self, settings: dict) -> None:
        self.faults = Faults(settings.get("fail"), settings.get("die_after"))
        self.delay = float(settings.get("delay") or 0.0)
        self.always_activate = bool(settings.get("always_activate"))
        self.token_level = bool(settings.get("token_level"))
        self.log_path = Path(settings["log"]) if settings.get("log") else None

    def record(self, entry: dict) -> None:
        if self.log_path is None:
            return
        with self.log_lock, open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")


def build_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", required=True)
    parser.add_argument("--served-name")
    parser.add_argument("--flavor", choices=("vllm", "sglang"), default="vllm")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--api-key-env", help="require 'Authorization: Bearer $NAME'")
    parser.add_argument("--fail", help="STATUS:COUNT[:RETRY_AFTER]: the first COUNT scoring requests get STATUS")
    parser.add_argument("--die-after", type=int, help="exit after this many answered scoring requests")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each scoring answer")
    parser.add_argument("--always-activate", action="store_true",
                        help="apply the activation whatever the request says (an old or misconfigured server)")
    parser.add_argument("--token-level", action="store_true",
                        help="/pooling returns one row per token, like vLLM's reward (ALL) pooling")
    parser.add_argument("--log")
    return parser


def serve(server: StubServer, port_file_name: str) -> None:
    """Write the bound port to the port file once the server accepts connections; serve for ever."""
    port_file = Path(port_file_name)
    temporary = port_file.with_suffix(".tmp")
    temporary.write_text(str(server.server_address[1]), encoding="utf-8")
    temporary.replace(port_file)  # the reader never sees a half-written port
    server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    args = build_parser(__doc__.splitlines()[0]).parse_args(argv)
    serve(StubServer(args), args.port_file)


if __name__ == "__main__":
    main()
