"""A streamed chat completion as OpenAI streams it: server-sent ``chat.completion.chunk`` events.

``completion_events`` turns the pieces of ``n`` replies (``streaming.CompletionStream``) into the
events; ``completion_usage`` is the token count of a completion, streamed or not.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Callable, Iterator

from .batcher import ServerStopping
from .engine import new_completion_id

log = logging.getLogger("rlhfkit.serve")


def completion_usage(outs: list) -> dict:
    """OpenAI's ``usage`` of a completion's replies (they share the prompt)."""
    completion = sum(o.completion_tokens for o in outs)
    return {
        "prompt_tokens": outs[0].prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": outs[0].prompt_tokens + completion,
    }


def _error_event(message: str, code: str | None = None) -> str:
    error = {"message": message, "type": "server_error", "param": None, "code": code}
    return f"data: {json.dumps({'error': error})}\n\n"


def completion_events(pieces, r: dict, model_name: str, store: Callable[[str, dict, list], None]) -> Iterator[str]:
    """Server-sent events as OpenAI streams them: ``chat.completion.chunk`` objects, each
    choice's role first (once generation has begun), then content deltas (``index`` says
    whose), then each finish reason (and, asked for, a last chunk with the usage and no
    choices), then ``[DONE]``. The completion is stored before the finish chunks, so feedback
    on its id can be sent as soon as the stream ends (``store(completion id, r, replies)``)."""
    cid, created = new_completion_id(), int(time.time())
    marks = {"version": pieces.version, "comparison": r["comparison"]}
    if r.get("conversation"):  # the web chat's
        marks["conversation"] = r["conversation"]

    def chunk(choices: list, usage: dict | None = None) -> str:
        out = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_name,
            "system_fingerprint": None,
            "choices": choices,
            "rlhfkit": marks,
        }
        if r["include_usage"]:
            out["usage"] = usage
        return f"data: {json.dumps(out, ensure_ascii=False)}\n\n"

    def delta(i: int, d: dict, finish: str | None = None) -> list:
        return [{"index": i, "delta": d, "logprobs": None, "finish_reason": finish}]

    def roles():
        # sent once the batch has begun: a request queued before a swap is drawn by the new
        # version (and rendered for it), and every chunk names the version that drew it
        marks["version"] = pieces.version
        return [chunk(delta(i, {"role": "assistant", "content": ""})) for i in range(r["n"])]

    announced = False
    try:
        for i, piece in pieces.events():
            if not announced:
                yield from roles()
                announced = True
            yield chunk(delta(i, {"content": piece}))
        outs = pieces.results
        if not announced:  # no piece: every reply empty
            yield from roles()
        marks["version"] = outs[0].version
        store(cid, r, outs)
    except ServerStopping as e:  # the stop's grace ended before this reply did: nothing stored
        yield _error_event(str(e), "server_shutting_down")
        return
    except Exception:  # noqa: BLE001 - the 200 is sent: the error can only be an event
        log.exception("streamed completion %s failed", cid)
        yield _error_event("the server failed to finish this reply")
        return
    for i, o in enumerate(outs):
        yield chunk(delta(i, {}, o.finish_reason))
    if r["include_usage"]:
        yield chunk([], completion_usage(outs))
    yield "data: [DONE]\n\n"
