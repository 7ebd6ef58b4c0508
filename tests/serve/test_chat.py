"""``rlhfkit chat`` driven through stdin in a subprocess: replies are printed and /up, /down,
/rate land in the feedback store."""
import os
import subprocess
import sys


def test_chat_subprocess(tiny_chat_dir, tmp_path):
    db = tmp_path / "chat.db"
    script = "\n".join(["Hello! How are you today?", "/up lovely", "/rate 6", "/rate 9", "/bogus",
                        "Thank you for your help.", "/down", "/new", "/up", "/quit", "never read"]) + "\n"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-m", "rlhfkit.cli", "chat", "--model", str(tiny_chat_dir), "--db", str(db),
                          "--max_new_tokens", "6", "--seed", "0", "--threads", "1"],
                         input=script, capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert out.count("assistant> ") == 2
    assert "(stored thumbs up)" in out and "(stored rating 6)" in out and "(stored thumbs down)" in out
    assert "not stored" in out  # rating 9 is off the 1-7 scale
    assert "unknown command /bogus" in out
    assert "(no reply to give feedback on yet)" in out  # /up right after /new
    assert "2 replies, 2 thumbs, 1 ratings" in out

    from rlhfkit.serve.store import FeedbackLog

    log = FeedbackLog(str(db))
    try:
        thumbs, ratings = log.export("thumbs"), log.export("ratings")
    finally:
        log.close()
    assert [t.label for t in thumbs] == [True, False]
    assert thumbs[0].prompt == "Hello! How are you today?"
    assert thumbs[1].prompt.startswith("User: Hello! How are you today?\n\nAssistant: ")
    assert thumbs[1].prompt.endswith("User: Thank you for your help.")
    assert [r.rating for r in ratings] == [6.0]
    replies = [line.split("assistant> ", 1)[1] for line in out.splitlines() if line.startswith("assistant> ")]
    assert [t.completion for t in thumbs] == [r or "(empty response)" for r in replies]


def test_chat_loop_in_process(tiny_chat, tmp_path):
    import io

    from rlhfkit.serve.chat import chat_loop

    out = io.StringIO()
    counts = chat_loop(tiny_chat, None, io.StringIO("hi\n/up\n"), out, seed=1)
    assert counts == {"turns": 1, "thumbs": 0, "ratings": 0}
    assert "feedback is not stored" in out.getvalue()
