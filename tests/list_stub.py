"""A stand-in listwise judge: the judge stub (:mod:`tests.judge_stub`) reading every answer of a
list (``[The Start of Assistant C's Answer]`` ... for any letter) and naming the longest.

    python tests/list_stub.py --behaviour longer --latency 0.02 --log requests.jsonl

``longer`` names the longest answer shown, the first shown among equally long ones (a position
bias, which order=both must catch); ``always-a`` always says ``[[A]]``. Everything else (verdict
formats, latency, logs, failures) is the judge stub's; its log says which letter was named
(``verdict``).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the judge stub beside it
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import judge_stub  # type: ignore[import-not-found,no-redef]
else:
    from tests import judge_stub

_ANSWER = re.compile(r"\[The Start of Assistant ([A-Z])'s Answer\]\n(.*?)\n\[The End of Assistant \1's Answer\]",
                     re.DOTALL)
_pair_reply = judge_stub.reply_for


def shown_answers(messages: list[dict]) -> list[tuple[str, str]]:
    """(letter, answer) of every answer of the first message that shows some, in the order shown."""
    for message in messages:
        found = _ANSWER.findall(message.get("content") or "")
        if found:
            return found
    return []


def reply_for(behaviour: str, messages: list[dict], verdict: str = "tags") -> tuple[str, str | None]:
    """(reply, the letter it names): the longest answer shown, the first of equally long ones."""
    if behaviour != "longer":
        return _pair_reply(behaviour, messages, verdict)
    shown = shown_answers(messages)
    if not shown:
        return "I cannot find the answers.", None
    letter = max(shown, key=lambda item: len(item[1]))[0]  # max keeps the first of equals
    written = judge_stub.VERDICTS[verdict].replace("@", letter)
    return f"Of the {len(shown)} answers, Assistant {letter}'s is the longest.\n\n{written}", letter


class ListStubServer(judge_stub.StubServer):
    """The list stub in a child process, as :class:`~tests.judge_stub.StubServer` starts the judge stub."""

    def __init__(self, folder: Path, behaviour: str = "longer", *args: str, log: bool = True):
        super().__init__(folder, behaviour, *args, log=log)
        self.command[1] = str(Path(__file__).resolve())


if __name__ == "__main__":
    judge_stub.reply_for = reply_for  # the stub's requests are answered by the list's reader
    judge_stub.main()
