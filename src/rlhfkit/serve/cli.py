"""Configs and entry points of ``rlhfkit serve`` and ``rlhfkit chat``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

__all__ = ["ServeConfig", "ChatConfig", "run_serve", "run_chat"]


@dataclass
class _ModelFields:
    model: str = field(
        default="smollm2-135m",
        metadata={
            "help": "the model to serve: a folder, .gguf file, HF name, "
            "smollm2-135m, tiny (a tiny model built from config), "
            "an `rlhfkit loop` output folder: the policy of its "
            "newest finished round, loaded at start, or a learner "
            "folder (current.json + versions/): its promoted "
            "version, followed as the learner promotes others "
            "(serve; chat loads it once)"
        },
    )
    name: str = field(default="", metadata={"help": "model name shown to clients (default: the folder name)"})
    db: str = field(
        default="",
        metadata={"help": "feedback store (SQLite file or SQLAlchemy URL) for completions and feedback; empty = none"},
    )
    project_prefix: str = field(
        default="serve",
        metadata={"help": "feedback projects are PREFIX-thumbs, PREFIX-ratings, PREFIX-edits and PREFIX-choices"},
    )
    rating_min: int = field(
        default=1, metadata={"help": "lowest rating (of a ratings project made now; one that exists keeps its scale)"}
    )
    rating_max: int = field(default=5, metadata={"help": "highest rating"})
    redact: bool = field(
        default=False,
        metadata={
            "help": "store conversations, replies, reasons and edits with personal data "
            "(e-mail, phone, card, IBAN, SSN, IP) replaced by [KIND], and "
            "end-user ids hashed (HMAC, key in $RLHFKIT_END_USER_KEY or "
            "DB.end_user_key); the reply itself is sent unchanged"
        },
    )
    max_new_tokens: int = field(default=128, metadata={"help": "default reply length limit (tokens)"})
    temperature: float = field(default=0.7, metadata={"help": "default sampling temperature (0 = greedy)"})
    top_p: float = field(default=1.0, metadata={"help": "default nucleus sampling (1 = off)"})
    max_prompt_length: int = field(
        default=1024, metadata={"help": "longest conversation answered (tokens); a longer one is refused, never cut"}
    )
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = default)"})
    precision: str = field(
        default="fp32",
        metadata={
            "help": "fp32, or bf16: the weights in bfloat16 (half the "
            "memory; faster where the hardware has bf16 products)"
        },
    )

    def validate(self) -> None:
        # checked before the model loads: a bad value would otherwise surface at the first reply
        from rlhfkit.core.precision import PRECISIONS

        if self.precision not in PRECISIONS:
            raise ValueError(f"field 'precision': {self.precision!r} is not one of {list(PRECISIONS)}")
        if self.max_new_tokens < 1 or self.max_prompt_length < 1:
            raise ValueError("max_new_tokens and max_prompt_length must be >= 1")
        if not 0 <= self.temperature <= 2:
            raise ValueError("temperature must be from 0 to 2")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.threads < 0:
            raise ValueError("threads must be >= 0")
        if not self.rating_min < self.rating_max:
            raise ValueError(
                f"field 'rating_max': the scale must go up (rating_min {self.rating_min}, rating_max {self.rating_max})"
            )


@dataclass
class ServeConfig(_ModelFields):
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=8080, metadata={"help": "port to listen on"})
    api_key: str = field(
        default="",
        metadata={
            "help": "require Authorization: Bearer KEY on every request but /health (default: $RLHFKIT_API_KEY, empty = open)"
        },
    )
    max_request_kb: int = field(
        default=1000,
        metadata={
            "help": "larger request bodies are refused (413); every served conversation is stored with its completion"
        },
    )
    log_level: str = field(default="warning", metadata={"help": "uvicorn log level"})
    max_batch: int = field(
        default=8, metadata={"help": "replies generated together in one batch at most (1 = one request at a time)"}
    )
    batch_wait_ms: float = field(
        default=5.0, metadata={"help": "how long a request waits for others to share its batch (milliseconds)"}
    )
    max_n: int = field(default=8, metadata={"help": "largest `n` (replies per request) a client may ask for"})
    compare_share: float = field(
        default=0.0,
        metadata={
            "help": "share of the requests that opt in "
            '("rlhfkit": {"compare": true}) answered with two '
            "replies to choose from (0 = none)"
        },
    )
    chat: str = field(
        default="auto",
        metadata={
            "help": "the end users' web chat at /chat (needs --db): auto = open "
            "without an API key, asking for the key once with one; "
            "open = open to anyone even with an API key (a public chat "
            "in front of a private API); off = no page"
        },
    )
    chat_sends_per_minute: int = field(
        default=20,
        metadata={
            "help": "web chat: messages per session (or signed-in account) per minute; more are 429 (0 = no limit)"
        },
    )
    chat_sessions_per_hour: int = field(
        default=100,
        metadata={"help": "web chat: new anonymous sessions per client address per hour; more are 429 (0 = no limit)"},
    )
    chat_address_sends_per_minute: int = field(
        default=120,
        metadata={"help": "web chat: messages per client address per minute, all its sessions together (0 = no limit)"},
    )
    chat_feedback_per_minute: int = field(
        default=60,
        metadata={"help": "web chat: thumbs, ratings, edits and choices per session per minute (0 = no limit)"},
    )
    shutdown_grace_seconds: float = field(
        default=20.0,
        metadata={
            "help": "on SIGTERM (or Ctrl-C): no new request is taken, the queued ones are generated "
            "for this long at most, then what is left is answered 503 and the server exits"
        },
    )
    reload_every: float = field(
        default=2.0,
        metadata={
            "help": "seconds between checks of a learner folder's current.json (a new version is loaded and swapped in)"
        },
    )

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.port <= 65535:
            raise ValueError("port must be from 1 to 65535")
        if self.max_batch < 1 or self.max_n < 1:
            raise ValueError("max_batch and max_n must be >= 1")
        if not 0 <= self.batch_wait_ms <= 10_000:
            raise ValueError("batch_wait_ms must be from 0 to 10000")
        if not 0 <= self.compare_share <= 1:
            raise ValueError("compare_share must be from 0 to 1")
        limits = (
            self.chat_sends_per_minute,
            self.chat_sessions_per_hour,
            self.chat_address_sends_per_minute,
            self.chat_feedback_per_minute,
        )
        if min(limits) < 0:
            raise ValueError(
                "chat_sends_per_minute, chat_sessions_per_hour, chat_address_sends_per_minute and "
                "chat_feedback_per_minute must be >= 0 (0 = no limit)"
            )
        if not 0 <= self.shutdown_grace_seconds <= 3600:
            raise ValueError("shutdown_grace_seconds must be from 0 to 3600")
        if not self.reload_every > 0:
            raise ValueError("reload_every must be > 0 seconds")
        if self.chat not in ("auto", "open", "off"):
            raise ValueError(f"field 'chat': {self.chat!r} is not one of auto, open, off")
        if self.max_request_kb < 1:
            raise ValueError("max_request_kb must be >= 1")
        if self.log_level.lower() not in ("critical", "error", "warning", "info", "debug", "trace"):
            raise ValueError("log_level must be one of critical, error, warning, info, debug, trace")


@dataclass
class ChatConfig(_ModelFields):
    system: str = field(default="", metadata={"help": "system message at the start of each conversation"})
    seed: int = field(default=-1, metadata={"help": "sampling seed (-1 = random each reply)"})

    def validate(self) -> None:
        super().validate()
        if self.seed < -1:
            raise ValueError("seed must be >= 0 (or -1 = random)")


def _err(msg: str):
    from rlhfkit.training.config import ConfigError

    return ConfigError(msg)


def _open_feedback(c: _ModelFields):
    """The feedback store, or None without --db; a store that cannot be opened is a field error
    (not a driver traceback), found before the model is loaded."""
    if not c.db:
        return None
    from sqlalchemy.exc import SQLAlchemyError

    from rlhfkit.feedback.enduser import EndUserKeyError, FeedbackLog

    try:
        return FeedbackLog(c.db, prefix=c.project_prefix, redact=c.redact, scale=(c.rating_min, c.rating_max))
    except EndUserKeyError as e:  # no key for hashing ids (before the store opens), or another one
        raise _err(f"field 'redact': {e}") from None
    except SQLAlchemyError as e:
        raise _err(f"field 'db': cannot open the feedback store {c.db!r}: {getattr(e, 'orig', None) or e}") from None
    except ValueError as e:  # a project of that name with another task type
        raise _err(f"field 'project_prefix': {e}") from None


def _resolve_line(spec: str):
    """The current version of the policy line ``spec`` (``models.policy_line``): a field error
    when it names none (a loop in its setup, a learner folder whose current.json is bad)."""
    from rlhfkit.models.policy_line import NoPolicyYet, resolve

    try:
        return resolve(spec)
    except (NoPolicyYet, ValueError) as e:
        raise _err(f"field 'model': {e}") from None


def _served_name(line) -> str:
    """The name clients see: a loop's round (``LOOP/round-N``, as when it was loaded once), a
    learner folder's own name (it stays while versions change: clients keep sending it), or the
    model folder's name."""
    from pathlib import Path

    from .engine import default_model_name

    folder = Path(line.line.rstrip("/")).name or line.line
    if line.kind == "loop":
        return f"{folder}/{line.version}"
    if line.kind == "learner":
        return folder
    return default_model_name(line.line)


def _load(c: _ModelFields, **chat_kwargs):
    """``(chat model, feedback store or None, the policy line's version)``."""
    import torch

    from rlhfkit.models.policy_line import load

    from .engine import ChatModel, _dtype

    if c.threads:
        torch.set_num_threads(c.threads)
    feedback = _open_feedback(c)  # first: it takes a second, the model may take minutes
    try:
        line = _resolve_line(c.model)
        try:
            model, tokenizer = load(line, dtype=_dtype(c.precision))
        except ValueError as e:  # a learner's version that does not load (models.versions.VersionError)
            raise _err(f"field 'model': {e}") from None
        chat = ChatModel(
            model,
            tokenizer,
            name=c.name or _served_name(line),
            max_new_tokens=c.max_new_tokens,
            temperature=c.temperature,
            top_p=c.top_p,
            max_prompt_length=c.max_prompt_length,
            version=None if line.kind == "model" else line.version,
            **chat_kwargs,
        )
    except BaseException:
        if feedback is not None:
            feedback.close()
        raise
    return chat, feedback, line


def _listen(host: str, port: int):
    """A socket bound to host:port, taken before the model loads: a port in use or a bad host is
    told at once as a field error, not after minutes of loading as uvicorn's exit code 3."""
    import socket

    try:
        family, type_, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        raise _err(f"field 'host': cannot listen on {host!r}: {e.strerror}") from None
    sock = socket.socket(family, type_, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: restart over TIME_WAIT
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise _err(f"field 'port': cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def _serve_until_stopped(app, sock, chat, grace_s: float, log_level: str) -> None:
    """Run uvicorn on ``sock`` until SIGTERM or Ctrl-C, then stop within ``grace_s`` (plus one
    sampler step): uvicorn stops listening and waits for the requests in flight, while the chat
    model takes no new request (503), generates the queued ones until the grace ends and answers
    the rest 503 (``Batcher.drain``) -- so the requests in flight end soon after. Without this,
    uvicorn waits for every queued generation (minutes under load, past a process manager's
    grace period, which then kills the server mid-reply). A SIGTERM ends with exit status 0:
    uvicorn raises the signal again once it has stopped, which would kill the process before
    the chat model closes; here it meets a handler that ignores it."""
    import signal

    import uvicorn

    # uvicorn's own backstop: a request still running well after the grace is cancelled
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=grace_s + 10)
    server = uvicorn.Server(config)
    uvicorn_exit = server.handle_exit

    def handle_exit(sig, frame) -> None:
        chat.drain(grace_s)
        uvicorn_exit(sig, frame)

    server.handle_exit = handle_exit  # what uvicorn installs for SIGINT and SIGTERM
    before = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, before)


def run_serve(c: ServeConfig) -> None:
    from .app import create_app
    from .line import PolicyWatcher
    from .webchat import ChatLimits, chat_secret

    sock = _listen(c.host, c.port)
    chat = watcher = None
    try:
        chat, feedback, line = _load(c, max_batch=c.max_batch, batch_wait_ms=c.batch_wait_ms)
        if line.kind == "learner":
            watcher = PolicyWatcher(c.model, chat, every=c.reload_every, dtype=chat.model.dtype)
        api_key = c.api_key or os.environ.get("RLHFKIT_API_KEY") or None
        page = c.chat if feedback is not None else "off"
        secret, secret_from = chat_secret(c.db) if page != "off" else (None, "")
        app = create_app(
            chat,
            feedback,
            api_key=api_key,
            max_request_bytes=c.max_request_kb * 1000,
            compare_share=c.compare_share,
            max_n=c.max_n,
            line=watcher,
            chat_page=page,
            chat_secret=secret,
            chat_limits=ChatLimits(
                c.chat_sends_per_minute,
                c.chat_sessions_per_hour,
                c.chat_address_sends_per_minute,
                c.chat_feedback_per_minute,
            ),
        )
        where = (c.db + (", personal data redacted" if c.redact else "")) if c.db else "off"
        origin = line.describe() if line.kind != "model" else ""
        if watcher is not None:
            origin += f"; following it every {c.reload_every:g} s"
        print(
            f"rlhfkit serve: {chat.name} on http://{c.host}:{c.port}/v1 ("
            + (f"{origin}; " if origin else "")
            + f"feedback: {where}; batches of up to {c.max_batch})",
            flush=True,
        )
        if page != "off":
            guard = "open to anyone" if page == "open" or not api_key else "asks for the API key once"
            print(
                f"rlhfkit serve: web chat on http://{c.host}:{c.port}/chat ({guard}; sessions signed with "
                f"{secret_from})",
                flush=True,
            )
        _serve_until_stopped(app, sock, chat, c.shutdown_grace_seconds, c.log_level.lower())
    finally:
        sock.close()
        if watcher is not None:
            watcher.stop()
        if chat is not None:
            chat.close()


def run_chat(c: ChatConfig) -> None:
    from .chat import chat_loop

    chat, feedback, line = _load(c)
    if line.kind != "model":
        print(f"rlhfkit chat: {line.describe()}", flush=True)
    try:
        counts = chat_loop(chat, feedback, system=c.system, seed=None if c.seed < 0 else c.seed)
    finally:
        chat.close()
        if feedback is not None:
            feedback.close()
    print(
        f"(bye: {counts['turns']} replies, {counts['thumbs']} thumbs, {counts['ratings']} ratings, "
        f"{counts['edits']} edits stored)"
    )
