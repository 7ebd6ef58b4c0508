"""An OpenAI chat-completion request, checked, and the answers in OpenAI's error shape.

``completion_settings`` turns a request body into the settings of a completion (messages,
``max_tokens``, sampling, ``stop``, ``n``, ``user``, streaming, a comparison drawn for a client
that opted in) or the 400 / 404 answer naming the field at fault; ``read_json_object`` reads a
body up to a size limit (``RequestTooLarge`` past it); ``error_response`` is OpenAI's
``{"error": {"message", "type", "param", "code"}}``. The web chat's routes use them too, so the
page meets the API's own checks and limits.
"""

from __future__ import annotations

import json
import random
from typing import Sequence

from fastapi import Request
from fastapi.responses import JSONResponse

from .messages import validate_messages

MAX_MESSAGES = 512


def error_response(
    status: int, message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}, status_code=status
    )


# how long a client refused by a stopping server waits before it asks again (a process manager
# restarts it, or a load balancer has already moved the request to another replica)
STOPPING_RETRY_AFTER_S = 5


def stopping_response(error: Exception) -> JSONResponse:
    """The 503 of a request a stopping server did not generate (``batcher.ServerStopping``),
    with ``Retry-After``: OpenAI's clients retry a 503 after the time it names."""
    resp = error_response(503, str(error), "server_error", code="server_shutting_down")
    resp.headers["Retry-After"] = str(STOPPING_RETRY_AFTER_S)
    return resp


def unknown_field_response(body: dict, fields: Sequence[str]) -> JSONResponse | None:
    """The 400 answer naming the first field of ``body`` not among ``fields``; None when all are."""
    unknown = next((k for k in body if k not in fields), None)
    if unknown is None:
        return None
    return error_response(
        400, f"unknown field {unknown[:100]!r}; the fields are {', '.join(fields)}", param=unknown[:100]
    )


class RequestTooLarge(Exception):
    """A request body over the server's limit (answered 413)."""


async def read_json_object(request: Request, max_bytes: int) -> dict | None:
    """The JSON object of the body (None if it is not one); ``RequestTooLarge`` past
    ``max_bytes``, read in chunks so a huge body is never held whole."""
    if int(request.headers.get("content-length") or 0) > max_bytes:
        raise RequestTooLarge()
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > max_bytes:
            raise RequestTooLarge()
    try:
        body = json.loads(bytes(data))
        # a lone surrogate (``"\\ud800"``) parses but is no text: the tokenizer and the stored
        # JSON would fail on it later, after the work was done
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError):  # malformed JSON or text, nesting past the stack
        return None
    return body if isinstance(body, dict) else None


def unsupported_option(body: dict) -> str | None:
    """The first option set in ``body`` that this server cannot honour: answering as if it had
    not been sent (no tool call, no log-probs, free text where JSON was asked for) would break
    the caller."""
    for key in ("tools", "functions", "logprobs", "top_logprobs"):
        if body.get(key) not in (None, False, [], ""):
            return key
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        return "response_format"
    return None


def stop_strings(body: dict) -> tuple[str, ...]:
    """OpenAI's ``stop``: a string or up to 4 strings; ``ValueError`` otherwise."""
    stop = body.get("stop")
    if stop is None:
        return ()
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not 1 <= len(stop) <= 4 or not all(isinstance(x, str) and x for x in stop):
        raise ValueError("stop must be a non-empty string or a list of 1 to 4 of them")
    return tuple(stop)


def number_field(body: dict, key: str, kind: type, lo: float, hi: float):
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not float(v).is_integer()):
        raise ValueError(key)
    if not lo <= v <= hi:
        raise ValueError(key)
    return kind(v)


def rlhfkit_options(body: dict) -> dict:
    """The request's ``rlhfkit`` object: ``{"compare": bool}``; ``ValueError(field)`` otherwise."""
    opts = body.get("rlhfkit")
    if opts is None:
        return {}
    if not isinstance(opts, dict):
        raise ValueError("rlhfkit")
    for key, value in opts.items():
        if key != "compare" or not isinstance(value, bool):
            raise ValueError(f"rlhfkit.{key}")
    return opts


def completion_settings(
    body: dict, model_name: str, max_tokens_limit: int, max_n: int, compare_share: float, draw: random.Random
) -> dict | JSONResponse:
    """The checked settings of a completion request to the server of ``model_name``, or the error
    answer. A share ``compare_share`` of the requests that opt in get two replies to compare
    (``draw`` draws which)."""
    bad = unsupported_option(body)
    if bad is not None:
        return error_response(400, f"{bad} is not supported by this server", param=bad)
    model = body.get("model")
    if model not in (None, "", model_name):
        return error_response(
            404,
            f"the model {model!r} does not exist; this server serves {model_name!r}",
            param="model",
            code="model_not_found",
        )
    try:
        messages = validate_messages(body.get("messages"))
    except ValueError as e:
        return error_response(400, str(e), param="messages")
    if len(messages) > MAX_MESSAGES:
        return error_response(400, f"at most {MAX_MESSAGES} messages per request", param="messages")
    try:
        max_tokens = number_field(body, "max_completion_tokens", int, 1, max_tokens_limit)
        if max_tokens is None:
            max_tokens = number_field(body, "max_tokens", int, 1, max_tokens_limit)
        temperature = number_field(body, "temperature", float, 0.0, 2.0)
        top_p = number_field(body, "top_p", float, 0.0, 1.0)
        seed = number_field(body, "seed", int, -(2**63), 2**63 - 1)
        n = number_field(body, "n", int, 1, max_n)
        opts = rlhfkit_options(body)
    except ValueError as e:
        what = f"n must be an integer from 1 to {max_n}" if e.args[0] == "n" else f"invalid value for {e.args[0]}"
        return error_response(400, what, param=e.args[0])
    try:
        stop = stop_strings(body)
    except ValueError as e:
        return error_response(400, str(e), param="stop")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        return error_response(400, "user must be a string", param="user")
    if top_p == 0.0:  # only the likeliest token is left: greedy decoding
        temperature, top_p = 0.0, None
    stream, options = body.get("stream"), body.get("stream_options")
    if stream not in (None, True, False):
        return error_response(400, "stream must be true or false", param="stream")
    if options is not None and (
        not stream or not isinstance(options, dict) or options.get("include_usage") not in (None, True, False)
    ):
        return error_response(
            400, 'stream_options is {"include_usage": true|false}, with stream: true', param="stream_options"
        )
    n = n or 1
    if opts.get("compare") and n != 1:
        return error_response(
            400, "a comparison shows two replies of one request: ask for it with n = 1", param="rlhfkit.compare"
        )
    # the opted-in share of requests shows two replies; a client that did not opt in never does
    comparison = bool(opts.get("compare")) and compare_share > 0 and draw.random() < compare_share
    return dict(
        messages=messages,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=None if seed is None else seed % (2**63 - 1),
        stop=stop,
        user=user,
        n=2 if comparison else n,
        comparison=comparison,
        stream=bool(stream),
        include_usage=bool((options or {}).get("include_usage")),
    )
