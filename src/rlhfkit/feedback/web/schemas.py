"""The JSON API's request bodies (pydantic). Verdicts are strict (no type coercion, no unknown
fields); the pages build the same models from their form fields, so both front ends check alike."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .context import MAX_DURATION_MS

__all__ = [
    "LoginIn",
    "Verdict",
    "ProjectIn",
    "ProjectPatch",
    "UserIn",
    "UserPatch",
    "PasswordChange",
    "MembersIn",
    "ItemsIn",
    "GenerateIn",
]


class LoginIn(BaseModel):
    username: str
    password: str


class Verdict(BaseModel):
    """A verdict in screen terms (see ``rlhfkit.feedback.tasks``); give the fields of the task's type."""

    model_config = ConfigDict(strict=True, extra="forbid")
    choice: Literal["A", "B", "tie", "both_bad"] | None = Field(None, description="pairwise")
    strength: int | None = Field(None, description="pairwise: 1 slightly, 2 clearly, 3 much better")
    ranking: list[str] | None = Field(None, description="ranking: response keys, best first")
    ranks: list[int] | None = Field(None, description="ranking: rank per screen position, 0 best")
    rating: int | None = Field(None, description="rating: on the project's scale")
    flags: list[Literal["harmful", "untruthful", "off_topic"]] | None = Field(None, description="rating")
    label: bool | None = Field(None, description="thumbs: true = up")
    rewrite: str | None = Field(None, description="rewrite: the corrected response")
    duration_ms: int | None = Field(None, ge=0, le=MAX_DURATION_MS, description="time spent, measured by the client")


class ProjectIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    task_type: Literal["pairwise", "ranking", "rating", "thumbs", "rewrite"]
    instructions: str = ""
    overlap: int = Field(1, ge=1, le=100)
    gold_rate: float = Field(0.0, ge=0.0, le=1.0)
    scale_min: int = Field(1, ge=-1_000_000, le=1_000_000)
    scale_max: int = Field(7, ge=-1_000_000, le=1_000_000)


class ProjectPatch(BaseModel):
    instructions: str | None = None
    overlap: int | None = Field(None, ge=1, le=100)
    gold_rate: float | None = Field(None, ge=0.0, le=1.0)
    active: bool | None = None


class UserIn(BaseModel):
    username: str
    password: str
    role: Literal["admin", "labeler"] = "labeler"


class UserPatch(BaseModel):
    """Give only what changes. ``active: false`` ends the user's sessions at once and hands their
    open tasks back; a new ``password`` ends their sessions too."""

    model_config = ConfigDict(extra="forbid")
    active: bool | None = None
    role: Literal["admin", "labeler"] | None = None
    password: str | None = Field(None, min_length=8)


class PasswordChange(BaseModel):
    current_password: str
    new_password: str = Field(min_length=8)


class MembersIn(BaseModel):
    """The project's labelers by user name; an empty list opens the project to every labeler."""

    usernames: list[str] = Field(max_length=10_000)


class ItemsIn(BaseModel):
    items: list[dict[str, Any]]


class GenerateIn(BaseModel):
    prompts: list[str]
    n: int = Field(2, ge=1, le=26)
