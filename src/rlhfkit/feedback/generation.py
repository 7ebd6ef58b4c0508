"""Live generation hook: new items whose responses come from a model instead of a file.

A *generator* is any callable ``generator(prompts: list[str], n: int) -> list[list[dict]]``
returning, for each prompt, ``n`` responses ``{"text": str, "model": str | None}``. The feedback
app never imports a trainer: the caller (e.g. a recipe that owns the current policy) builds the
generator and passes it to ``create_app(..., generator=...)`` or calls :func:`generate_items`.
"""

from __future__ import annotations

from typing import Callable, Protocol

from sqlalchemy import select

from rlhfkit.data import DataError

from . import db
from .db import Store
from .queue import add_items
from .tasks import parse_item, redact_items

__all__ = ["ResponseGenerator", "generate_items"]


class ResponseGenerator(Protocol):
    def __call__(self, prompts: list[str], n: int) -> list[list[dict]]: ...


def generate_items(
    store: Store, project_id: int, prompts: list[str], generator: Callable, n: int, redact: bool = False
) -> int:
    """Generate ``n`` responses per prompt and add them to the project as items (one transaction);
    ``redact``: personal data in prompts and responses replaced first (``tasks.redact_items``)."""
    with store.read() as conn:
        proj = conn.execute(select(db.projects).where(db.projects.c.id == project_id)).mappings().one()
    outputs = generator(list(prompts), n)
    if len(outputs) != len(prompts):
        raise ValueError(f"generator returned {len(outputs)} results for {len(prompts)} prompts")
    parsed = []
    for i, (prompt, responses) in enumerate(zip(prompts, outputs)):
        try:
            parsed.append(
                parse_item(
                    {"prompt": prompt, "responses": list(responses)},
                    proj["task_type"],
                    (proj["scale_min"], proj["scale_max"]),
                )
            )
        except DataError as e:
            raise e.located(path="<generator>", index=i) from None
    if redact:
        parsed = redact_items(parsed)[0]
    return store.write(lambda c: add_items(c, project_id, parsed, source="generated"))
