"""``rlhfkit chat``: talk to a model in the terminal and rate its replies.

Each line read is a user turn; the reply is printed (``assistant> ...``). Commands act on the last
reply and are stored in the feedback store like the server's ``/v1/feedback``:

    /up [reason]         thumbs up          /down [reason]      thumbs down
    /rate N [reason]     rating (1-5)       /edit TEXT          a better reply than the last one
    /new                 new conversation   /help               this list
    /quit                leave (end of input and Ctrl-C too)

Reads stdin line by line, so it can be scripted (``printf 'hi\\n/up\\n' | rlhfkit chat ...``); at a
terminal, lines are read with line editing (arrow keys, history).
"""

from __future__ import annotations

import sys
from typing import IO, Callable

from .engine import ChatModel, PromptError, new_completion_id
from rlhfkit.feedback.enduser import FeedbackError, FeedbackLog

__all__ = ["chat_loop", "HELP"]

HELP = (
    "commands: /up [reason]  /down [reason]  /rate N [reason] ({lo}-{hi})  /edit TEXT (a better reply)  "
    "/new (new conversation)  /help  /quit"
)


def _help(feedback: FeedbackLog | None) -> str:
    lo, hi = feedback.scale if feedback is not None else (1, 5)
    return HELP.format(lo=lo, hi=hi)


def _line_reader(stdin: IO[str], stdout: IO[str]) -> Callable[[], str]:
    """``read() -> line`` ("" at end of input). At a terminal: ``input`` with ``readline``, since a
    plain ``readline()`` there hands the arrow keys' escape codes (``^[[D``) to the model and into
    the stored conversation."""
    if stdin is sys.stdin and stdout is sys.stdout and stdin.isatty():
        try:
            import readline  # noqa: F401 - importing it gives input() line editing and history
        except ImportError:  # no GNU readline (Windows): input() still reads the line
            pass

        def read_tty() -> str:
            try:
                return input("you> ") + "\n"
            except EOFError:
                return ""

        return read_tty

    interactive = stdin.isatty() if hasattr(stdin, "isatty") else False

    def read() -> str:
        if interactive:
            stdout.write("you> ")
            stdout.flush()
        return stdin.readline()

    return read


def chat_loop(
    chat: ChatModel,
    feedback: FeedbackLog | None = None,
    stdin: IO[str] | None = None,
    stdout: IO[str] | None = None,
    system: str = "",
    max_tokens: int | None = None,
    temperature: float | None = None,
    seed: int | None = None,
) -> dict:
    """Run the conversation until ``/quit``, end of input or Ctrl-C; returns counts
    ``{"turns", "thumbs", "ratings", "edits"}`` (replies answered, replies with a stored thumbs /
    rating / edit)."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    read = _line_reader(stdin, stdout)

    def say(text: str) -> None:
        stdout.write(text + "\n")
        stdout.flush()

    def fresh() -> list[dict]:
        return [{"role": "system", "content": system}] if system else []

    messages = fresh()
    last_id: str | None = None
    counts = {"turns": 0, "thumbs": 0, "ratings": 0, "edits": 0}
    # replies with a stored verdict: a changed mind replaces it
    given: dict[str, set] = {"thumbs": set(), "ratings": set(), "edits": set()}
    say(f"chatting with {chat.name}; {_help(feedback)}" + ("" if feedback else " (no --db: feedback is not stored)"))
    turn = 0
    try:
        while True:
            line = read()
            if not line:
                break
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if line.startswith("/"):
                cmd, _, rest = line[1:].partition(" ")
                cmd, rest = cmd.lower(), rest.strip()
                if cmd in ("quit", "exit", "q"):
                    break
                if cmd in ("help", "h", "?"):
                    say(_help(feedback))
                elif cmd in ("new", "reset"):
                    messages, last_id = fresh(), None
                    say("(new conversation)")
                elif cmd in ("up", "down", "rate", "edit"):
                    _give_feedback(feedback, last_id, cmd, rest, given, say)
                else:
                    say(f"(unknown command /{cmd}; {_help(feedback)})")
                continue
            try:
                reply = chat.stream(
                    messages + [{"role": "user", "content": line}],
                    max_tokens=max_tokens,
                    temperature=temperature,
                    seed=None if seed is None else seed + turn,
                )
            except PromptError as e:  # too long, or refused by the template: the turn is dropped
                say(f"(not answered: {e}; /new starts a new conversation)")
                continue
            stdout.write("assistant> ")  # the reply is shown as it is generated
            for piece in reply:
                stdout.write(piece)
                stdout.flush()
            stdout.write("\n")
            out = reply.result
            turn += 1
            messages.append({"role": "user", "content": line})
            last_id = new_completion_id()
            if feedback is not None:
                feedback.log_completion(last_id, messages, out.text, chat.name, version=out.version)
            messages.append({"role": "assistant", "content": out.text})
            counts["turns"] += 1
    except KeyboardInterrupt:  # Ctrl-C at the prompt or during a reply: leave as /quit does
        say("")
    counts.update({kind: len(ids) for kind, ids in given.items()})
    return counts


def _give_feedback(
    feedback: FeedbackLog | None,
    last_id: str | None,
    cmd: str,
    rest: str,
    given: dict[str, set],
    say: Callable[[str], None],
) -> None:
    """``/up``, ``/down`` or ``/rate N`` (with an optional reason), or ``/edit TEXT`` on the last reply."""
    if last_id is None:
        say("(no reply to give feedback on yet)")
        return
    if feedback is None:
        say("(feedback is not stored: start with --db)")
        return
    thumbs = rating = edit = None
    if cmd == "rate":
        num, _, rest = rest.partition(" ")
        try:
            rating = int(num)
        except ValueError:
            say(f"(usage: /rate N [reason], N from {feedback.scale[0]} to {feedback.scale[1]})")
            return
        rest = rest.strip()
    elif cmd == "edit":
        if not rest:
            say("(usage: /edit TEXT, the reply you would have liked)")
            return
        edit, rest = rest, ""
    else:
        thumbs = cmd
    try:
        feedback.feedback(last_id, thumbs=thumbs, rating=rating, reason=rest or None, edit=edit)
    except FeedbackError as e:
        say(f"(not stored: {e})")
        return
    kind = "thumbs" if thumbs else "ratings" if rating is not None else "edits"
    given[kind].add(last_id)
    say("(stored " + {"thumbs": f"thumbs {thumbs}", "ratings": f"rating {rating}", "edits": "edit"}[kind] + ")")
