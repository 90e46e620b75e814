"""A stand-in vLLM/SGLang server with a prefix cache, for routing tests and bench/bench_serving.py.

It is tests/served_stub.py (same routes, request and response shapes, faults and ``/_control``)
with a model-free scorer in place of the checkpoint, so that all of RMB runs through it in
seconds, and with the one thing a real server does that routing can change: an LRU prefix cache.

- A token is a whitespace-separated word. A chat request is rendered as ``<role> content`` per
  message, the way a chat template puts a role marker before each turn.
- The cache works as vLLM's automatic prefix caching does: prompts are cut into blocks of
  ``BLOCK`` tokens, a block is known by its whole prefix (a chain of hashes), only full blocks are
  kept, and the least recently used block goes first once ``--cache-tokens`` is exceeded. A
  prompt's prefill is its tokens minus those of its leading blocks found in the cache.
- ``--seconds-per-token``: the time prefill takes, spent while holding the replica's one compute
  lock (one accelerator), so a replica that computes fewer tokens answers sooner.
- The reward is a fixed function of the token sequence, the same on every replica.

``GET /_stats`` answers ``{"prompt_tokens", "prefill_tokens", "texts", "conversations"}``:
``conversations`` counts the texts of each conversation (the chat messages before the answer,
as a SHA-256) that this replica scored. ``POST /_control`` also empties the cache and the counts.

    python -m tests.prefix_cache_server --model NAME --port-file F --cache-tokens N
        [--seconds-per-token S] [any option of tests/served_stub.py]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path

from tests.served_stub import Handler, StubServer, build_parser, serve

ROOT = Path(__file__).resolve().parent.parent
# vLLM's default block size for its prefix cache.
BLOCK = 16


def words(text: str) -> list[str]:
    return text.split()


def conversation_digest(messages: list[dict]) -> str:
    """The conversation an answer belongs to: every message before the last (the answer)."""
    return hashlib.sha256(json.dumps(messages[:-1], sort_keys=True).encode()).hexdigest()[:16]


class PrefixCache:
    """Full blocks of token ids, least recently used first out, at most ``tokens`` tokens."""

    def __init__(self, tokens: int):
        self.capacity = tokens // BLOCK
        self.blocks: OrderedDict[bytes, None] = OrderedDict()

    def prefill(self, ids: list[int]) -> int:
        """The tokens of ``ids`` that must be computed; the prompt's blocks are then cached."""
        chain = hashlib.sha256()
        keys = []
        for start in range(0, len(ids) - len(ids) % BLOCK, BLOCK):
            chain.update(json.dumps(ids[start:start + BLOCK]).encode())
            keys.append(chain.copy().digest())
        hits = 0
        for key in keys:
            if key not in self.blocks:
                break
            hits += 1
        for key in keys:
            self.blocks[key] = None
            self.blocks.move_to_end(key)
        while len(self.blocks) > self.capacity:
            self.blocks.popitem(last=False)
        return len(ids) - hits * BLOCK


class CachingScorer:
    """Scores with no model; counts the prefill a prefix-caching server would compute."""

    labels = 1

    def __init__(self, cache_tokens: int, seconds_per_token: float):
        self.cache_tokens = cache_tokens
        self.seconds_per_token = seconds_per_token
        self.lock = threading.Lock()  # the cache and the counts
        self.compute = threading.Lock()  # one accelerator: prefill runs one prompt at a time
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.cache = PrefixCache(self.cache_tokens)
            self.prompt_tokens = self.prefill_tokens = self.texts = 0
            self.conversations: dict[str, int] = {}

    def stats(self) -> dict:
        with self.lock:
            return {"prompt_tokens": self.prompt_tokens, "prefill_tokens": self.prefill_tokens, "texts": self.texts,
                    "conversations": dict(self.conversations)}

    def chat_ids(self, messages: list[dict], add_generation_prompt: bool, add_special_tokens: bool,
                 chat_template: str | None = None) -> list[int]:
        digest = conversation_digest(messages)
        with self.lock:
            self.conversations[digest] = self.conversations.get(digest, 0) + 1
        text = " ".join(f"<{m['role']}> {m['content']}" for m in messages)
        return self.text_ids(text, add_special_tokens)

    def text_ids(self, text: str, add_special_tokens: bool) -> list[int]:
        # A word's id from the word alone, so that every replica reads a text the same.
        return [int.from_bytes(hashlib.sha256(word.encode()).digest()[:6], "big") for word in words(text)]

    def logits(self, ids: list[int]) -> list[float]:
        with self.lock:
            computed = self.cache.prefill(ids)
            self.prompt_tokens += len(ids)
            self.prefill_tokens += computed
            self.texts += 1
        if self.seconds_per_token:
            with self.compute:
                time.sleep(computed * self.seconds_per_token)
        # A reward that depends on every token and on their order, and is not confined to [0, 1].
        digest = hashlib.sha256(json.dumps(ids).encode()).digest()
        return [int.from_bytes(digest[:4], "big") / 2**32 * 8.0 - 4.0]

    def token_logits(self, ids: list[int]) -> list[list[float]]:
        return [self.logits(ids)]


class CacheHandler(Handler):
    server: PrefixCacheServer

    def do_GET(self) -> None:
        if self.path == "/_stats":
            self._send(200, self.server.scorer.stats())
            return
        super().do_GET()


class PrefixCacheServer(StubServer):
    def __init__(self, args: argparse.Namespace):
        self.cache_tokens = args.cache_tokens
        self.seconds_per_token = args.seconds_per_token
        super().__init__(args)
        self.RequestHandlerClass = CacheHandler

    def make_scorer(self, args: argparse.Namespace) -> CachingScorer:
        return CachingScorer(args.cache_tokens, args.seconds_per_token)

    def configure(self, settings: dict) -> None:
        super().configure(settings)
        self.scorer.reset()


class StandIn:
    """One stand-in replica in its own process (as a real replica is): started on a free port,
    read over ``/_stats``, emptied over ``/_control``, killed by pid."""

    def __init__(self, workdir: Path, *, served_name: str, cache_tokens: int, seconds_per_token: float = 0.0):
        workdir.mkdir(parents=True, exist_ok=True)
        port_file = workdir / "port"
        command = [sys.executable, "-m", "tests.prefix_cache_server", "--model", served_name,
                   "--port-file", str(port_file), "--cache-tokens", str(cache_tokens),
                   "--seconds-per-token", str(seconds_per_token)]
        # A file, not a pipe: a server that writes more than a pipe holds would block on it.
        self._stderr = open(workdir / "stderr.txt", "w", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self._stderr)
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"stand-in server did not start: {(workdir / 'stderr.txt').read_text()}")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{int(port_file.read_text(encoding='utf-8'))}"

    def stats(self) -> dict:
        import httpx

        answer = httpx.get(f"{self.url}/_stats", timeout=30)
        answer.raise_for_status()
        return answer.json()

    def reset(self) -> None:
        import httpx

        httpx.post(f"{self.url}/_control", json={}, timeout=30).raise_for_status()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        self._stderr.close()


def main(argv: list[str] | None = None) -> None:
    parser = build_parser(__doc__.splitlines()[0])
    parser.add_argument("--cache-tokens", type=int, required=True, help="prefix cache size in tokens (words)")
    parser.add_argument("--seconds-per-token", type=float, default=0.0, help="prefill time per computed token")
    args = parser.parse_args(argv)
    serve(PrefixCacheServer(args), args.port_file)


if __name__ == "__main__":
    main()
