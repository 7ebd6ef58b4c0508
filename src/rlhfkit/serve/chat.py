"""``rlhfkit chat``: talk to a model in the terminal and rate its replies.

Each line read is a user turn; the reply is printed (``assistant> ...``). Commands act on the last
reply and are stored in the feedback store like the server's ``/v1/feedback``:

    /up [comment]        thumbs up          /down [comment]     thumbs down
    /rate N [comment]    rating 1-7         /new                start a new conversation
    /help                this list          /quit               leave (end of input too)

Reads stdin line by line, so it can be scripted (``printf 'hi\\n/up\\n' | rlhfkit chat ...``).
"""
from __future__ import annotations

import sys
from typing import IO

from .engine import ChatModel, new_completion_id
from .store import FeedbackError, FeedbackLog

__all__ = ["chat_loop", "HELP"]

HELP = ("commands: /up [comment]  /down [comment]  /rate N [comment] (1-7)  /new (new conversation)  "
        "/help  /quit")


def chat_loop(chat: ChatModel, feedback: FeedbackLog | None = None, stdin: IO[str] | None = None,
              stdout: IO[str] | None = None, system: str = "", max_tokens: int | None = None,
              temperature: float | None = None, seed: int | None = None) -> dict:
    """Run the conversation until ``/quit`` or end of input; returns counts
    ``{"turns", "thumbs", "ratings"}``."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    interactive = stdin.isatty() if hasattr(stdin, "isatty") else False

    def say(text: str) -> None:
        stdout.write(text + "\n")
        stdout.flush()

    def fresh() -> list[dict]:
        return [{"role": "system", "content": system}] if system else []

    messages = fresh()
    last_id: str | None = None
    counts = {"turns": 0, "thumbs": 0, "ratings": 0}
    say(f"chatting with {chat.name}; {HELP}" + ("" if feedback else " (no --db: feedback is not stored)"))
    turn = 0
    while True:
        if interactive:
            stdout.write("you> ")
            stdout.flush()
        line = stdin.readline()
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
                say(HELP)
                continue
            if cmd in ("new", "reset"):
                messages, last_id = fresh(), None
                say("(new conversation)")
                continue
            if cmd in ("up", "down", "rate"):
                if last_id is None:
                    say("(no reply to give feedback on yet)")
                    continue
                if feedback is None:
                    say("(feedback is not stored: start with --db)")
                    continue
                thumbs = rating = None
                if cmd == "rate":
                    num, _, rest = rest.partition(" ")
                    try:
                        rating = int(num)
                    except ValueError:
                        say("(usage: /rate N [comment], N from 1 to 7)")
                        continue
                    rest = rest.strip()
                else:
                    thumbs = cmd
                try:
                    feedback.feedback(last_id, thumbs=thumbs, rating=rating, comment=rest or None)
                except FeedbackError as e:
                    say(f"(not stored: {e})")
                    continue
                counts["thumbs" if thumbs else "ratings"] += 1
                say(f"(stored {'thumbs ' + thumbs if thumbs else f'rating {rating}'})")
                continue
            say(f"(unknown command /{cmd}; {HELP})")
            continue
        messages.append({"role": "user", "content": line})
        out = chat.complete(messages, max_tokens=max_tokens, temperature=temperature,
                            seed=None if seed is None else seed + turn)
        turn += 1
        last_id = new_completion_id()
        if feedback is not None:
            feedback.log_completion(last_id, messages, out.text, chat.name)
        messages.append({"role": "assistant", "content": out.text})
        counts["turns"] += 1
        say(f"assistant> {out.text}")
    return counts
