"""``rlhfkit chat`` driven through stdin in a subprocess: replies are printed and /up, /down,
/rate land in the feedback store."""

import os
import subprocess
import sys

import pytest


def test_chat_subprocess(tiny_chat_dir, tmp_path):
    db = tmp_path / "chat.db"
    script = (
        "\n".join(
            [
                "Hello! How are you today?",
                "/up lovely",
                "/rate 4",
                "/rate 6",
                "/bogus",
                "/edit Very well, thank you!",
                "Thank you for your help.",
                "/down",
                "/new",
                "/up",
                "/quit",
                "never read",
            ]
        )
        + "\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhfkit.cli",
            "chat",
            "--model",
            str(tiny_chat_dir),
            "--db",
            str(db),
            "--max_new_tokens",
            "6",
            "--seed",
            "0",
            "--threads",
            "1",
        ],
        input=script,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert out.count("assistant> ") == 2
    assert (
        "(stored thumbs up)" in out
        and "(stored rating 4)" in out
        and "(stored edit)" in out
        and "(stored thumbs down)" in out
    )
    assert "not stored" in out  # rating 6 is off the 1-5 scale
    assert "unknown command /bogus" in out
    assert "(no reply to give feedback on yet)" in out  # /up right after /new
    assert "2 replies, 2 thumbs, 1 ratings, 1 edits" in out

    from rlhfkit.feedback.enduser import FeedbackLog

    log = FeedbackLog(str(db))
    try:
        thumbs, ratings, edits = log.export("thumbs"), log.export("ratings"), log.export("rewrites")
    finally:
        log.close()
    assert [(e.prompt, e.rewrite) for e in edits] == [("Hello! How are you today?", "Very well, thank you!")]
    assert [t.label for t in thumbs] == [True, False]
    assert thumbs[0].prompt == "Hello! How are you today?"
    assert thumbs[1].prompt.startswith("User: Hello! How are you today?\n\nAssistant: ")
    assert thumbs[1].prompt.endswith("User: Thank you for your help.")
    assert [r.rating for r in ratings] == [4.0]
    replies = [line.split("assistant> ", 1)[1] for line in out.splitlines() if line.startswith("assistant> ")]
    assert [t.completion for t in thumbs] == [r or "(empty response)" for r in replies]


def test_chat_loop_in_process(tiny_chat, tmp_path):
    import io

    from rlhfkit.serve.chat import chat_loop

    out = io.StringIO()
    counts = chat_loop(tiny_chat, None, io.StringIO("hi\n/up\n"), out, seed=1)
    assert counts == {"turns": 1, "thumbs": 0, "ratings": 0, "edits": 0}
    assert "feedback is not stored" in out.getvalue()


def test_a_turn_the_model_cannot_take_is_told_and_dropped(tiny_chat, tmp_path):
    """Too long for the model: a line saying so (no traceback), and the conversation goes on
    without that turn."""
    import io

    from rlhfkit.serve.chat import chat_loop
    from rlhfkit.serve.engine import ChatModel
    from rlhfkit.feedback.enduser import FeedbackLog

    chat = ChatModel(tiny_chat.model, tiny_chat.tokenizer, name="short", max_new_tokens=4, max_prompt_length=30)
    log = FeedbackLog(str(tmp_path / "chat.db"))
    out = io.StringIO()
    try:
        counts = chat_loop(chat, log, io.StringIO("word " * 40 + "\n/up\nhi\n/up\n"), out, seed=0)
        thumbs = log.export("thumbs")
    finally:
        log.close()
    text = out.getvalue()
    assert "(not answered: the conversation has" in text and "/new starts a new conversation" in text
    assert "(no reply to give feedback on yet)" in text
    assert counts == {"turns": 1, "thumbs": 1, "ratings": 0, "edits": 0}
    assert [t.prompt for t in thumbs] == ["hi"]  # the refused turn is not part of the conversation


def test_at_a_terminal_lines_are_edited_and_ctrl_c_leaves(tiny_chat_dir, tmp_path):
    """Through a pseudo-terminal: the arrow keys edit the line (their escape codes reach neither
    the model nor the store), and Ctrl-C ends the chat with its summary, not a traceback."""
    import pty
    import select
    import time

    db = tmp_path / "chat.db"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TERM": "xterm",
    }
    pid, fd = pty.fork()
    if pid == 0:  # the child: rlhfkit chat on the terminal
        # as a person's shell starts it: SIGINT unblocked and not ignored (a child inherits both
        # from the test process, where an earlier test's library may have changed them)
        import signal

        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.execve(
            sys.executable,
            [
                sys.executable,
                "-m",
                "rlhfkit.cli",
                "chat",
                "--model",
                str(tiny_chat_dir),
                "--db",
                str(db),
                "--max_new_tokens",
                "4",
                "--seed",
                "0",
                "--threads",
                "1",
            ],
            env,
        )

    def read_until(marker: str, timeout: float = 120) -> str:
        seen, end = b"", time.time() + timeout
        while marker.encode() not in seen and time.time() < end:
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    seen += os.read(fd, 4096)
                except OSError:  # the child closed the terminal
                    break
        return seen.decode(errors="replace")

    try:
        read_until("you> ")
        os.write(fd, b"helo\x1b[Dl\r")  # "helo", left arrow, "l": hello
        assert "assistant> " in read_until("you> ")
        os.write(fd, b"/up\r")
        assert "(stored thumbs up)" in read_until("you> ")
        # Ctrl-C. One sent the instant the prompt appears is sometimes not acted on by readline
        # until a further key (seen in about half the runs, and under CI load even after a 0.5 s
        # wait): like a person, press it again if nothing happened within 5 s (at most 3 times)
        rest = ""
        for _ in range(3):
            time.sleep(0.5)
            os.write(fd, b"\x03")
            rest += read_until("stored)", timeout=5)
            if "stored)" in rest:
                break
        if "stored)" not in rest:  # say what the child's signal state was, for the next person
            status = open(f"/proc/{pid}/status").read() if os.path.exists(f"/proc/{pid}/status") else ""
            sig = [
                ln for ln in status.splitlines() if ln.startswith(("State", "SigBlk", "SigIgn", "SigCgt", "Threads"))
            ]
            pytest.fail(
                f"Ctrl-C did not end the chat; the child's {sig}; the test process's SigBlk "
                f"{[ln for ln in open('/proc/self/status').read().splitlines() if ln.startswith('SigBlk')]}"
            )
        assert "bye: 1 replies, 1 thumbs" in rest and "Traceback" not in rest
        _, status = os.waitpid(pid, 0)
        pid = None
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        if pid is not None:  # still ours: never reaped
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)

    from rlhfkit.feedback.enduser import FeedbackLog

    log = FeedbackLog(str(db))
    try:
        assert [(t.prompt, t.label) for t in log.export("thumbs")] == [("hello", True)]
    finally:
        log.close()


def test_a_changed_mind_is_one_verdict_in_the_store_and_the_counts(tiny_chat, tmp_path):
    import io

    from rlhfkit.serve.chat import chat_loop
    from rlhfkit.feedback.enduser import FeedbackLog

    log = FeedbackLog(str(tmp_path / "chat.db"))
    try:
        counts = chat_loop(
            tiny_chat, log, io.StringIO("hi\n/up\n/down\n/rate 3\n/rate 5\nmore\n/up\n"), io.StringIO(), seed=0
        )
        thumbs, ratings = log.export("thumbs"), log.export("ratings")
    finally:
        log.close()
    assert [t.label for t in thumbs] == [False, True] and [r.rating for r in ratings] == [5.0]
    assert counts == {"turns": 2, "thumbs": 2, "ratings": 1, "edits": 0}
