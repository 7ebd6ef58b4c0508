"""The web chat's conversations, read back from the completions the end-user store holds.

Each reply the chat served is a stored completion that keeps its conversation id; these pure
functions group one end user's completions into conversations and rebuild each transcript
(regenerated replies, branches and which of several replies the conversation went on with).
"""

from __future__ import annotations

from rlhfkit.feedback.enduser.kinds import _index, _served_to


def grouped(rows, stored: str) -> list[dict]:
    """The conversations of the completions ``rows`` (items of the chat, in id order) served to
    the end user stored as ``stored``, newest first: ``{"id", "title", "updated", "turns"}``."""
    by_conversation: dict[str, list] = {}
    for r in rows:
        response = r.responses[0]
        if _served_to(r.responses) == stored and response.get("conversation"):
            by_conversation.setdefault(response["conversation"], []).append(r)
    out = []
    for cid, items in by_conversation.items():
        turns = transcript(items)
        first = next((t["content"] for t in turns if t["role"] == "user"), "")
        out.append(
            {
                "id": cid,
                "title": " ".join(first.split())[:60],
                "updated": max(r.created_at for r in items),
                "turns": turns,
            }
        )
    return sorted(out, key=lambda c: -c["updated"])


def transcript(items) -> list[dict]:
    """A chat conversation's turns from its stored completions (items in id order, one per
    reply): ``{"role": "user", "content"}`` and ``{"role": "assistant", "completion_id",
    "replies": [text, ...], "versions", "comparison", "picked"}``. A completion asked with the
    first k turns replaces what followed them (a regenerated reply, a new branch); ``picked``
    says which of several replies the conversation went on with (read from the next
    completion's messages; None for the last one). System turns are not shown."""
    completions: dict[str, list] = {}
    for r in items:
        completions.setdefault(r.external_id, []).append(r)
    turns: list[dict] = []
    for cid, rows in completions.items():
        rows = sorted(rows, key=lambda r: _index(r.responses[0]))
        shown = [m for m in (rows[0].messages or []) if m["role"] != "system"]
        if not shown:
            continue
        del turns[len(shown) - 1 :]
        if turns and turns[-1]["role"] == "assistant" and len(turns) == len(shown) - 1:
            went_on = shown[-2]["content"] if len(shown) >= 2 else None
            texts = turns[-1]["replies"]
            turns[-1]["picked"] = texts.index(went_on) if went_on in texts else turns[-1]["picked"]
        while len(turns) < len(shown) - 1:  # turns asked before this conversation's first stored reply
            m = shown[len(turns)]
            turns.append(
                {"role": m["role"], "content": m["content"]}
                if m["role"] == "user"
                else {
                    "role": "assistant",
                    "completion_id": None,
                    "replies": [m["content"]],
                    "versions": [None],
                    "comparison": False,
                    "picked": 0,
                }
            )
        turns.append({"role": "user", "content": shown[-1]["content"]})
        responses = [r.responses[0] for r in rows]
        turns.append(
            {
                "role": "assistant",
                "completion_id": cid,
                "replies": [x["text"] for x in responses],
                "versions": [x.get("version") for x in responses],
                "comparison": bool(responses[0].get("comparison")),
                "picked": 0 if len(responses) == 1 else None,
            }
        )
    return turns
