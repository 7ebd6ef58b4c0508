"""Configs and entry points of ``rlhfkit serve`` and ``rlhfkit chat``."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

__all__ = ["ServeConfig", "ChatConfig", "run_serve", "run_chat"]


@dataclass
class _ModelFields:
    model: str = field(default="smollm2-135m", metadata={"help": "the model to serve: a folder, .gguf file, HF name or smollm2-135m"})
    name: str = field(default="", metadata={"help": "model name shown to clients (default: the folder name)"})
    db: str = field(default="", metadata={"help": "feedback store (SQLite file or SQLAlchemy URL) for completions and feedback; empty = none"})
    project_prefix: str = field(default="serve", metadata={"help": "feedback projects are PREFIX-thumbs and PREFIX-ratings"})
    max_new_tokens: int = field(default=128, metadata={"help": "default reply length limit (tokens)"})
    temperature: float = field(default=0.7, metadata={"help": "default sampling temperature (0 = greedy)"})
    top_p: float = field(default=1.0, metadata={"help": "default nucleus sampling (1 = off)"})
    max_prompt_length: int = field(default=1024, metadata={"help": "conversation tokens kept (the latest)"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = default)"})


@dataclass
class ServeConfig(_ModelFields):
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=8080, metadata={"help": "port to listen on"})
    api_key: str = field(default="", metadata={"help": "require Authorization: Bearer KEY (default: $RLHFKIT_API_KEY, empty = open)"})
    max_request_kb: int = field(default=1000, metadata={"help": "larger request bodies are refused (413); every served "
                                                                 "conversation is stored with its completion"})
    log_level: str = field(default="warning", metadata={"help": "uvicorn log level"})


@dataclass
class ChatConfig(_ModelFields):
    system: str = field(default="", metadata={"help": "system message at the start of each conversation"})
    seed: int = field(default=-1, metadata={"help": "sampling seed (-1 = random each reply)"})


def _load(c: _ModelFields):
    import torch

    from .engine import ChatModel
    from .store import FeedbackLog

    if c.threads:
        torch.set_num_threads(c.threads)
    chat = ChatModel.load(c.model, name=c.name or None, max_new_tokens=c.max_new_tokens,
                          temperature=c.temperature, top_p=c.top_p, max_prompt_length=c.max_prompt_length)
    feedback = FeedbackLog(c.db, prefix=c.project_prefix) if c.db else None
    return chat, feedback


def run_serve(c: ServeConfig) -> None:
    import uvicorn

    from .app import create_app

    chat, feedback = _load(c)
    app = create_app(chat, feedback, api_key=c.api_key or os.environ.get("RLHFKIT_API_KEY") or None,
                     max_request_bytes=c.max_request_kb * 1000)
    print(f"rlhfkit serve: {chat.name} on http://{c.host}:{c.port}/v1 (feedback: {c.db or 'off'})", flush=True)
    uvicorn.run(app, host=c.host, port=c.port, log_level=c.log_level)


def run_chat(c: ChatConfig) -> None:
    from .chat import chat_loop

    chat, feedback = _load(c)
    try:
        counts = chat_loop(chat, feedback, system=c.system, seed=None if c.seed < 0 else c.seed)
    finally:
        if feedback is not None:
            feedback.close()
    print(f"(bye: {counts['turns']} replies, {counts['thumbs']} thumbs, {counts['ratings']} ratings stored)")
