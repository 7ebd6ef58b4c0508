"""Configs and entry points of ``rlhfkit serve`` and ``rlhfkit chat``."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

__all__ = ["ServeConfig", "ChatConfig", "run_serve", "run_chat"]


@dataclass
class _ModelFields:
    model: str = field(default="smollm2-135m", metadata={"help": "the model to serve: a folder, .gguf file, HF name, "
                                                                 "smollm2-135m, tiny (a tiny model built from config), "
                                                                 "or an `rlhfkit loop` output folder: the policy of its "
                                                                 "newest finished round, loaded at start"})
    name: str = field(default="", metadata={"help": "model name shown to clients (default: the folder name)"})
    db: str = field(default="", metadata={"help": "feedback store (SQLite file or SQLAlchemy URL) for completions and feedback; empty = none"})
    project_prefix: str = field(default="serve", metadata={"help": "feedback projects are PREFIX-thumbs and PREFIX-ratings"})
    redact: bool = field(default=False, metadata={"help": "store conversations, replies and comments with personal data "
                                                          "(e-mail, phone, card, IBAN, SSN, IP) replaced by [KIND], and "
                                                          "end-user ids hashed (HMAC, key in $RLHFKIT_END_USER_KEY or "
                                                          "DB.end_user_key); the reply itself is sent unchanged"})
    max_new_tokens: int = field(default=128, metadata={"help": "default reply length limit (tokens)"})
    temperature: float = field(default=0.7, metadata={"help": "default sampling temperature (0 = greedy)"})
    top_p: float = field(default=1.0, metadata={"help": "default nucleus sampling (1 = off)"})
    max_prompt_length: int = field(default=1024, metadata={"help": "longest conversation answered (tokens); a longer "
                                                                    "one is refused, never cut"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = default)"})
    precision: str = field(default="fp32", metadata={"help": "fp32, or bf16: the weights in bfloat16 (half the "
                                                             "memory; faster where the hardware has bf16 products)"})

    def validate(self) -> None:
        # checked before the model loads: a bad value would otherwise surface at the first reply
        from rlhfkit.training.precision import PRECISIONS

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


@dataclass
class ServeConfig(_ModelFields):
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=8080, metadata={"help": "port to listen on"})
    api_key: str = field(default="", metadata={"help": "require Authorization: Bearer KEY on every request but /health (default: $RLHFKIT_API_KEY, empty = open)"})
    max_request_kb: int = field(default=1000, metadata={"help": "larger request bodies are refused (413); every served "
                                                                 "conversation is stored with its completion"})
    log_level: str = field(default="warning", metadata={"help": "uvicorn log level"})

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.port <= 65535:
            raise ValueError("port must be from 1 to 65535")
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

    from .store import EndUserKeyError, FeedbackLog

    try:
        return FeedbackLog(c.db, prefix=c.project_prefix, redact=c.redact)
    except EndUserKeyError as e:  # no key for hashing ids (before the store opens), or another one
        raise _err(f"field 'redact': {e}") from None
    except SQLAlchemyError as e:
        raise _err(f"field 'db': cannot open the feedback store {c.db!r}: {getattr(e, 'orig', None) or e}") from None
    except ValueError as e:  # a project of that name with another task type
        raise _err(f"field 'project_prefix': {e}") from None


def _resolve_model(spec: str) -> tuple[str, str | None, str]:
    """``(model to load, default name or None, what it is for the start-up line)``: a loop's
    output folder names the policy of its newest finished round (as ``feedback serve --policy``
    does; loaded once here, not followed as the loop moves on), called LOOP/round-N."""
    from pathlib import Path

    from .live import NoPolicyYet, loop_policy, rounds_done

    try:
        path, round_ = loop_policy(spec)
        done = rounds_done(spec)
    except (NoPolicyYet, ValueError) as e:
        raise _err(f"field 'model': {e}") from None
    if round_ is None:
        return spec, None, ""
    loop = Path(spec.rstrip("/")).name or spec
    policy = f"round {round_}'s policy" if round_ else "its initial policy"
    if round_ < done:  # the newest round's policy is being redone by a resumed loop, or gone
        which = f"{policy}: round {done}'s, the newest finished, is not there whole (being redone, or removed)"
    else:
        which = f"{policy}, the newest finished round" if round_ else "its initial policy, no round finished yet"
    return path, f"{loop}/round-{round_}", f"from the loop {spec}, {which}: {path}"


def _load(c: _ModelFields):
    """``(chat model, feedback store or None, what was loaded from a loop folder or '')``."""
    import torch

    from .engine import ChatModel

    if c.threads:
        torch.set_num_threads(c.threads)
    feedback = _open_feedback(c)  # first: it takes a second, the model may take minutes
    try:
        path, loop_name, origin = _resolve_model(c.model)
        chat = ChatModel.load(path, name=c.name or loop_name, max_new_tokens=c.max_new_tokens,
                              temperature=c.temperature, top_p=c.top_p, max_prompt_length=c.max_prompt_length,
                              precision=c.precision)
    except BaseException:
        if feedback is not None:
            feedback.close()
        raise
    return chat, feedback, origin


def _listen(host: str, port: int):
    """A socket bound to host:port, taken before the model loads: a port in use or a bad host is
    told at once as a field error, not after minutes of loading as uvicorn's exit code 3."""
    import socket

    try:
        family, type_, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                           flags=socket.AI_PASSIVE)[0]
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


def run_serve(c: ServeConfig) -> None:
    import uvicorn

    from .app import create_app

    sock = _listen(c.host, c.port)
    try:
        chat, feedback, origin = _load(c)
        app = create_app(chat, feedback, api_key=c.api_key or os.environ.get("RLHFKIT_API_KEY") or None,
                         max_request_bytes=c.max_request_kb * 1000)
        where = (c.db + (", personal data redacted" if c.redact else "")) if c.db else "off"
        print(f"rlhfkit serve: {chat.name} on http://{c.host}:{c.port}/v1 ("
              + (f"{origin}; " if origin else "") + f"feedback: {where})", flush=True)
        uvicorn.Server(uvicorn.Config(app, log_level=c.log_level.lower())).run(sockets=[sock])
    finally:
        sock.close()


def run_chat(c: ChatConfig) -> None:
    from .chat import chat_loop

    chat, feedback, origin = _load(c)
    if origin:
        print(f"rlhfkit chat: {origin}", flush=True)
    try:
        counts = chat_loop(chat, feedback, system=c.system, seed=None if c.seed < 0 else c.seed)
    finally:
        if feedback is not None:
            feedback.close()
    print(f"(bye: {counts['turns']} replies, {counts['thumbs']} thumbs, {counts['ratings']} ratings stored)")
