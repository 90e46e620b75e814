"""A small OpenAI-compatible judge server for tests and benches, in a process of its own.

Real servers cannot misbehave on demand; this one can: stand-in judges that prefer the longer
answer (writing the verdict in any of the common judge formats, ``--verdict``), always say [[A]],
write both tags, start with "A" but give no verdict, or answer only inside <think>; 429 with
Retry-After, 500s, empty replies (HTTP 200 with no content, for the first N times each question is
asked, on a seeded share of the questions), usage without a field, slow replies, a fixed latency,
and dying mid-run. It can reason before it answers (``--reason field``: in a separate
``reasoning_content``/``reasoning`` field, as vLLM's and SGLang's reasoning parsers return it;
``--reason inline``: a ``<think>`` block in the answer), each reasoning holding a decoy verdict for
the other answer, and be cut off at the reply limit on a seeded share of the comparisons
(``--cut-off-share``: ``finish_reason: "length"`` with the answer empty, or only an unfinished
``<think>``).
It can rate one answer instead (``--rate length-buckets``: a prompt with ``[The Start of Assistant's
Answer]``, as the rating mode asks, gets a rating by the answer's length, written in the
``--verdict`` format's rating form; with logprobs, the rating's alternatives as
:func:`rating_logprobs` says; ``--no-rating-share``: a seeded share of the answers get no rating).
It speaks just enough HTTP/1.1 (keep-alive, Content-Length bodies) on asyncio to serve hundreds of
concurrent requests on one core, and logs every request as a JSON line (the Authorization header
only as a SHA-256, so the log never holds a key).

    python tests/judge_stub.py --behaviour longer --latency 0.05 --log requests.jsonl

prints ``PORT <n>`` once it listens on 127.0.0.1. Tests use :class:`StubServer`, which starts it
and stops it by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BEHAVIOURS = ("longer", "always-a", "both-tags", "starts-with-a", "think-only")
# What an empty reply's message content is: absent (null), "", or only whitespace.
EMPTY_CONTENT = {"null": None, "blank": "", "whitespace": " \n\t "}
# What the stand-in's top_logprobs give the letter it chose (the other letter gets the rest).
VERDICT_PROBABILITY = 0.8
# How the judge families write a verdict, "@" for the letter: the stand-in writes its own, as
# those families' models do, whatever the harness expects.
VERDICTS = {"tags": "[[@]]", "answer-tags": "<answer>[[@]]</answer>", "result": "[RESULT] @",
            "bold-result": "**Result:** @", "boxed": "\\boxed{@}", "json": '{"winner": "@"}'}
# The reasoning a thinking stand-in writes first; "@" is the decoy: a verdict for the other answer,
# which a harness that read the reasoning would take.
REASONING = "Let me weigh both answers. At first sight I would say @ is better, but let me check the lengths."
REASON_MODES = ("none", "field", "inline")
# How a rating is written in each format, "@" for the number.
RATINGS = {"tags": "[[@]]", "answer-tags": "<answer>[[@]]</answer>", "result": "[RESULT] @",
           "bold-result": "**Result:** @", "boxed": "\\boxed{@}", "json": '{"rating": @}'}
RATE_MODES = ("none", "length-buckets")
# --rate length-buckets: 1 for answers under RATE_BUCKET characters, one more per RATE_BUCKET more, at most 10.
RATE_BUCKET = 30
RATING_START = "[The Start of Assistant's Answer]\n"
RATING_END = "\n[The End of Assistant's Answer]"
# What the rating stand-in's top_logprobs give: the rating written RATING_PROBABILITY, the rating below
# it (above it, for 1) the rest. "10" is written as two tokens, "1" then "0", as many tokenizers do:
# "1" TEN_FIRST (else "9"), then "0" TEN_SECOND (else the number ends: 1).
RATING_PROBABILITY = 0.8
TEN_FIRST = 0.95
TEN_SECOND = 0.95
START = "[The Start of Assistant {}'s Answer]\n"
END = "\n[The End of Assistant {}'s Answer]"


def answers(messages: list[dict]) -> tuple[str, str] | None:
    """The two answers, cut out between the prompt's markers of the first message that has them."""
    found = comparison(messages)
    return None if found is None else (found[1], found[2])


def comparison(messages: list[dict]) -> tuple[str, str, str] | None:
    """(everything before answer A, answer A, answer B) of the first message with the markers."""
    for message in messages:
        text = message.get("content") or ""
        try:
            a_start = text.index(START.format("A")) + len(START.format("A"))
            a_end = text.index(END.format("A"), a_start)
            b_start = text.index(START.format("B"), a_end) + len(START.format("B"))
            b_end = text.index(END.format("B"), b_start)
        except ValueError:
            continue
        return text[:a_start], text[a_start:a_end], text[b_start:b_end]
    return None


def reply_for(behaviour: str, messages: list[dict], verdict: str = "tags") -> tuple[str, str | None]:
    """(reply text, the verdict letter it contains or None)."""
    if behaviour == "longer":
        pair = answers(messages)
        if pair is None:
            return "I cannot find the two answers.", None
        a, b = pair
        # A tie goes to A: a position bias, which the both-order protocol must catch.
        letter = "A" if len(a) >= len(b) else "B"
        written = VERDICTS[verdict].replace("@", letter)
        return f"Assistant {letter}'s answer is longer, so it is better.\n\n{written}", letter
    if behaviour == "always-a":
        return "[[A]]", "A"
    if behaviour == "both-tags":
        return "Both have merit. Final verdict: [[A]] [[B]]", None
    if behaviour == "starts-with-a":
        return "A is the better answer: it is clearer and more complete.", None
    if behaviour == "think-only":
        return "<think>Assistant A is better. [[A]]</think>", None
    raise ValueError(behaviour)


def rated_answer(messages: list[dict]) -> str | None:
    """The one answer of a rating prompt, cut out between its markers; None when there is none."""
    for message in messages:
        text = message.get("content") or ""
        start = text.find(RATING_START)
        end = text.find(RATING_END, start + 1)
        if start >= 0 and end >= 0:
            return text[start + len(RATING_START):end]
    return None


def length_bucket(answer: str) -> int:
    return min(10, 1 + len(answer) // RATE_BUCKET)


def misses_rating(answer: str, share: float) -> bool:
    """Whether ``--no-rating-share`` picks this answer (by its digest): it never gets a rating."""
    return int(hashlib.sha256(answer.encode()).hexdigest()[:8], 16) / 16**8 < share


def rating_reply(answer: str, verdict: str, no_rating_share: float) -> tuple[str, int | None]:
    """(reply, the rating it writes or None)."""
    if misses_rating(answer, no_rating_share):
        return "This answer is hard to rate; I will not give it a number.", None
    rating = length_bucket(answer)
    return f"The answer has {len(answer)} characters.\n\nRating: {RATINGS[verdict].replace('@', str(rating))}", rating


def rating_logprobs(reply: str, rating: int, verdict: str) -> dict:
    """OpenAI-style logprobs of a rating reply: the number's digits tokens of their own ("10": two)."""
    written = RATINGS[verdict]
    start = reply.rfind(written.replace("@", str(rating))) + written.index("@")
    end = start + len(str(rating))

    def alternatives(pairs: list[tuple[str, float]]) -> dict:
        return {"token": pairs[0][0], "logprob": math.log(pairs[0][1]),
                "top_logprobs": [{"token": t, "logprob": math.log(p)} for t, p in pairs]}

    if rating == 10:
        after = reply[end:end + 1] or "\n"
        number = [alternatives([("1", TEN_FIRST), ("9", 1 - TEN_FIRST)]),
                  alternatives([("0", TEN_SECOND), (after, 1 - TEN_SECOND)])]
    else:
        other = rating - 1 if rating > 1 else rating + 1
        number = [alternatives([(str(rating), RATING_PROBABILITY), (str(other), 1 - RATING_PROBABILITY)])]
    tokens = [{"token": reply[:start], "logprob": -0.01, "top_logprobs": []}, *number]
    if reply[end:]:
        tokens.append({"token": reply[end:], "logprob": -0.01, "top_logprobs": []})
    return {"content": tokens}


def other_letter(letter: str) -> str:
    return "B" if letter == "A" else "A"


def reasoning_for(letter: str | None, verdict: str = "tags") -> str:
    """The stand-in's reasoning, with a decoy verdict for the answer it will not choose."""
    decoy = VERDICTS[verdict].replace("@", other_letter(letter or "B"))
    return REASONING.replace("@", decoy)


def logprobs_for(reply: str, letter: str | None, verdict: str = "tags") -> dict:
    """OpenAI-style logprobs: one token per character run, the verdict letter a token of its own."""
    tokens = []
    written = VERDICTS[verdict]
    cut = reply.rfind(written.replace("@", str(letter))) + written.index("@") if letter else -1
    pieces = [reply[:cut], reply[cut:cut + 1], reply[cut + 1:]] if letter else [reply]
    for index, piece in enumerate(pieces):
        if not piece:
            continue
        entry: dict = {"token": piece, "logprob": -0.01, "top_logprobs": []}
        if letter and index == 1:
            other = "B" if letter == "A" else "A"
            entry["logprob"] = math.log(VERDICT_PROBABILITY)
            entry["top_logprobs"] = [{"token": letter, "logprob": math.log(VERDICT_PROBABILITY)},
                                     {"token": other, "logprob": math.log(1 - VERDICT_PROBABILITY)}]
        tokens.append(entry)
    return {"content": tokens}


def usage_for(messages: list[dict], reply: str, reasoning: str = "", reasoning_tokens: bool = False) -> dict:
    """Tokens as chars / 4. The reasoning is part of the completion, as servers count it; with
    ``reasoning_tokens`` its share is said in ``completion_tokens_details``, as OpenAI's API does."""
    prompt = sum(len(m.get("content") or "") for m in messages) // 4 + 1
    thought = len(reasoning) // 4 + 1 if reasoning else 0
    completion = len(reply) // 4 + 1 + thought
    usage: dict = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if reasoning_tokens:
        usage["completion_tokens_details"] = {"reasoning_tokens": thought}
    return usage


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()


class Stub:
    def __init__(self, options: argparse.Namespace):
        self.options = options
        self.chat_requests = 0
        self.answered = 0
        self.dying = False
        # How often each question (its whole message list) was asked, for --empty-first.
        self.asked: dict[str, int] = {}
        self.server: asyncio.AbstractServer | None = None
        self.log = open(options.log, "a", encoding="utf-8") if options.log else None  # noqa: SIM115

    def record(self, entry: dict) -> None:
        if self.log is not None:
            self.log.write(json.dumps(entry) + "\n")
            self.log.flush()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                method, path, _ = line.decode("latin-1").split(" ", 2)
                headers = {}
                while True:
                    header = await reader.readline()
                    if header in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = header.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                arrived = asyncio.get_running_loop().time()
                if self.dying:
                    break
                status, payload, extra = await self.respond(method, path, headers, body, arrived)
                data = json.dumps(payload).encode()
                head = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}", "Content-Type: application/json",
                        f"Content-Length: {len(data)}"] + [f"{k}: {v}" for k, v in extra.items()]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
                await writer.drain()
                if status == 200 and path.endswith("/chat/completions"):
                    self.answered += 1
                    if self.options.die_after is not None and self.answered >= self.options.die_after:
                        self.die()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    def die(self) -> None:
        # Stop listening at once (new connections are refused), give the replies already written
        # a moment to reach the client, then exit without any cleanup, as a crashed server would.
        self.dying = True
        if self.server is not None:
            self.server.close()
        asyncio.get_running_loop().call_later(0.3, os._exit, 3)

    async def respond(self, method: str, path: str, headers: dict, body: bytes,
                      arrived: float) -> tuple[int, dict, dict]:
        options = self.options
        auth = headers.get("authorization")
        entry: dict = {"t": time.time(), "method": method, "path": path,
                       "auth_sha256": hashlib.sha256(auth.encode()).hexdigest() if auth else None}
        if path.endswith("/models") and method == "GET":
            entry["status"] = 200
            self.record(entry)
            return 200, {"object": "list", "data": [{"id": m, "object": "model"} for m in options.model]}, {}
        if not path.endswith("/chat/completions") or method != "POST":
            entry["status"] = 404
            self.record(entry)
            return 404, {"error": {"message": f"no route {method} {path}"}}, {}
        request = json.loads(body)
        messages = request.get("messages") or []
        self.chat_requests += 1
        number = self.chat_requests
        if self.log is not None:  # digests only for the log: a bench's stub spends no CPU on them
            found = comparison(messages)
            pair = None if found is None else found[1:]
            entry.update(number=number, model=request.get("model"), messages=len(messages),
                         logprobs=bool(request.get("logprobs")), top_logprobs=request.get("top_logprobs"),
                         seed=request.get("seed"),
                         temperature=request.get("temperature"), max_tokens=request.get("max_tokens"),
                         # The comparison's identity whatever the order: the question and both answers, sorted.
                         pair=_digest([found[0].partition("[The Start")[0], sorted(pair)]) if found and pair else None,
                         a_sha256=hashlib.sha256(pair[0].encode()).hexdigest() if pair else None,
                         # What every request about one conversation shares: the prompt before answer A.
                         question=_digest(found[0]) if found else None,
                         # Whether the request asked for the verdict in the stand-in's format.
                         asked_format=any(VERDICTS[options.verdict].replace("@", "A") in (m.get("content") or "")
                                          for m in messages))
        # The latency counts from the moment the request was read, and the reply is worked out
        # while it runs: the stub's own CPU is not added to the fixed latency it stands for.
        rated = rated_answer(messages) if options.rate != "none" else None
        rating = None
        if rated is not None:
            reply, rating = rating_reply(rated, options.verdict, options.no_rating_share)
            letter = None
        else:
            reply, letter = reply_for(options.behaviour, messages, options.verdict)
        content: str | None = reply
        message: dict = {"role": "assistant"}
        finish_reason = "stop"
        reasoning = reasoning_for(letter, options.verdict) if options.reason != "none" else ""
        if options.reason == "inline":
            reply = content = f"<think>{reasoning}</think>\n\n{reply}"
            reasoning = ""
        if options.empty_first and self.empty_now(messages):
            content, letter, rating = EMPTY_CONTENT[options.empty_as], None, None
            entry["empty"] = True
        if options.cut_off_share and self.cut_off_now(messages):
            # Stopped mid-thought: the answer never came (an inline thought is left open).
            content, letter, finish_reason = "Assistant A's answer is", None, options.cut_off_finish
            rating = None
            if options.reason == "inline":
                content = "<think>" + reasoning_for(None, options.verdict)
            elif options.reason == "field":
                content, reasoning = "", reasoning_for(None, options.verdict)
            entry["cut_off"] = True
        elif options.length_after_verdict:
            finish_reason = "length"  # a verdict-first judge stopped at the limit after its verdict
        message["content"] = content
        if reasoning:
            message[options.reasoning_field] = reasoning
        usage = usage_for(messages, content or "", reasoning, options.reasoning_tokens)
        for field in options.omit_usage:
            usage.pop(field, None)
        choice: dict = {"index": 0, "message": message, "finish_reason": finish_reason}
        if request.get("logprobs") and options.logprobs and content and not entry.get("cut_off"):
            choice["logprobs"] = (rating_logprobs(content, rating, options.verdict) if rating is not None
                                  else logprobs_for(reply, letter, options.verdict))
        if options.latency:
            await asyncio.sleep(max(0.0, arrived + options.latency - asyncio.get_running_loop().time()))
        if number <= options.rate_limit:
            entry["status"] = 429
            self.record(entry)
            return 429, {"error": {"message": "rate limited"}}, {"Retry-After": str(options.retry_after)}
        if options.fail_count < 0 or number <= options.fail_count:
            entry["status"] = options.fail_status
            self.record(entry)
            message = f"stub failure (you sent {auth})" if options.echo_auth else "stub failure"
            return options.fail_status, {"error": {"message": message}}, {}
        if request.get("model") not in options.model:
            entry["status"] = 404
            self.record(entry)
            return 404, {"error": {"message": f"model {request.get('model')!r} not found"}}, {}
        if options.delay:
            await asyncio.sleep(options.delay)
        entry.update(status=200, usage=usage, verdict=letter, rating=rating,
                     # Whether a rating request asked for this stand-in's rating form (its example: 5).
                     asked_rating_form=any(RATINGS[options.verdict].replace("@", "5") in (m.get("content") or "")
                                           for m in messages),
                     rated_sha256=hashlib.sha256(rated.encode()).hexdigest() if rated is not None else None)
        self.record(entry)
        return 200, {"id": f"stub-{number}", "object": "chat.completion", "model": request.get("model"),
                     "choices": [choice], "usage": usage}, {}

    def cut_off_now(self, messages: list[dict]) -> bool:
        """Whether this request is cut off: its comparison (either order) is in the
        ``--cut-off-share`` picked by its digest, and it is not a follow-up turn (those answer at
        once and rescue the vote) unless ``--cut-off-follow-ups``."""
        if any(m.get("role") == "assistant" for m in messages) and not self.options.cut_off_follow_ups:
            return False
        found = comparison(messages)
        pair = [found[0].partition("[The Start")[0], sorted(found[1:])] if found else messages
        return int(_digest(pair)[:8], 16) / 16**8 < self.options.cut_off_share

    def empty_now(self, messages: list[dict]) -> bool:
        """Whether this request gets an empty reply: one of the first ``--empty-first`` times its
        question is asked, if the question is in the ``--empty-share`` picked by its digest."""
        question = _digest(messages)
        if int(question[:8], 16) / 16**8 >= self.options.empty_share:
            return False
        self.asked[question] = self.asked.get(question, 0) + 1
        return self.asked[question] <= self.options.empty_first

    async def serve(self, port: int) -> None:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", port, backlog=1024)
        print(f"PORT {self.server.sockets[0].getsockname()[1]}", flush=True)
        async with self.server:
            try:
                await self.server.serve_forever()
            except asyncio.CancelledError:
                pass


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--behaviour", choices=BEHAVIOURS, default="longer")
    parser.add_argument("--model", action="append", help="model ids served (default: stub-judge)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log", help="append one JSON line per request here")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every chat request")
    parser.add_argument("--delay", type=float, default=0.0, help="extra seconds before a reply (timeouts)")
    parser.add_argument("--rate-limit", type=int, default=0, help="answer the first N chat requests with 429")
    parser.add_argument("--retry-after", type=float, default=1.0)
    parser.add_argument("--fail-count", type=int, default=0, help="fail the first N chat requests (-1: all)")
    parser.add_argument("--fail-status", type=int, default=500)
    parser.add_argument("--die-after", type=int, help="exit abruptly after answering N chat requests")
    parser.add_argument("--empty-first", type=int, default=0,
                        help="reply with empty content the first N times each question is asked")
    parser.add_argument("--empty-share", type=float, default=1.0,
                        help="the share of questions --empty-first applies to (picked by their digest)")
    parser.add_argument("--empty-as", choices=sorted(EMPTY_CONTENT), default="null",
                        help="an empty reply's content: null, \"\" or whitespace")
    parser.add_argument("--logprobs", action="store_true", help="return logprobs when asked")
    parser.add_argument("--omit-usage", action="append", default=[], metavar="FIELD",
                        help="leave this field out of every reply's usage (servers that do)")
    parser.add_argument("--verdict", choices=sorted(VERDICTS), default="tags",
                        help="the format the longer-answer judge writes its verdict in")
    parser.add_argument("--rate", choices=RATE_MODES, default="none",
                        help="rate the one answer of a rating prompt (length-buckets: by its length)")
    parser.add_argument("--no-rating-share", type=float, default=0.0,
                        help="the share of answers (picked by their digest) the rating stand-in gives no rating")
    parser.add_argument("--reason", choices=REASON_MODES, default="none",
                        help="reason before answering: in a separate field, or inline in <think>")
    parser.add_argument("--reasoning-field", choices=("reasoning_content", "reasoning"), default="reasoning_content",
                        help="the message field --reason field writes the reasoning in")
    parser.add_argument("--reasoning-tokens", action="store_true",
                        help="say the reasoning's tokens in usage.completion_tokens_details")
    parser.add_argument("--cut-off-share", type=float, default=0.0,
                        help="the share of comparisons (picked by their digest) whose replies are cut off")
    parser.add_argument("--cut-off-finish", choices=("length", "stop"), default="length",
                        help="a cut-off reply's finish_reason (stop: only the empty answer after reasoning tells)")
    parser.add_argument("--cut-off-follow-ups", action="store_true",
                        help="cut off follow-up turns too (by default they answer, rescuing the vote)")
    parser.add_argument("--length-after-verdict", action="store_true",
                        help="say finish_reason length on replies that did give their verdict")
    parser.add_argument("--echo-auth", action="store_true",
                        help="repeat the Authorization header in failure bodies (a careless server)")
    options = parser.parse_args(argv)
    options.model = options.model or ["stub-judge"]
    return options


def main(argv: list[str] | None = None) -> None:
    options = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    asyncio.run(Stub(options).serve(options.port))


class StubServer:
    """The stub in a child process: ``with StubServer(tmp_path, "longer") as stub: stub.base_url``."""

    def __init__(self, folder: Path, behaviour: str = "longer", *args: str, log: bool = True):
        self.log_path = Path(folder) / f"stub-{behaviour}-{os.getpid()}-{time.monotonic_ns()}.jsonl"
        self.command = [sys.executable, str(Path(__file__).resolve()), "--behaviour", behaviour,
                        *(["--log", str(self.log_path)] if log else []), *args]
        self.process: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> StubServer:
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"judge stub did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def requests(self, path: str = "/chat/completions") -> list[dict]:
        if not self.log_path.exists():
            return []
        entries = [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]
        return [e for e in entries if e["path"].endswith(path)]

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    main()
