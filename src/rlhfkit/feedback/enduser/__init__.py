"""End users' feedback on served completions, kept in the feedback app's store.

This is the end-user side of the feedback store: ``rlhfkit serve`` and ``rlhfkit chat`` write
through ``FeedbackLog``, a learner reads with ``feedback_events``, and ``rlhfkit feedback
forget`` erases one person. Everything is an ordinary feedback-app project, item and label, so
the app's dashboards and ``rlhfkit feedback export`` work on it as on any project:

==================  =========  ================================================================
project             type       item / label
==================  =========  ================================================================
``PREFIX-thumbs``   thumbs     every served reply (one item per choice: conversation, reply,
                               ``external_id`` = completion id); label: thumbs up / down
``PREFIX-ratings``  rating     a copy of the rated reply; label: the rating (1-5 by default; a
                               project that exists keeps its own scale)
``PREFIX-edits``    rewrite    a copy of the edited reply; label: the better reply the user wrote
``PREFIX-choices``  pairwise   a comparison's two replies; label: which one the user picked
==================  =========  ================================================================

Each stored reply (``items.responses[i]``) carries ``text``, ``model``, ``version`` (the policy
version that produced it), ``end_user`` (the caller's ``user``, an HMAC under ``redact``) and,
for completions with several choices, ``index`` and ``choices``, and ``comparison: true`` for the
two replies a comparison showed. A label's payload holds the verdict, ``reason`` (the user's
optional words; older stores call it ``comment``) and the ``end_user`` who gave it.

Exports: ``--project serve-thumbs --kind thumbs`` (KTO / binary reward data), ``serve-ratings
--kind ratings``, ``serve-edits --kind rewrites`` (or ``sft``: the conversation with the better
reply), ``serve-choices --kind pairs`` (preference pairs).

The projects are created inactive, so the app's labelling queue never hands end-user traffic to
labelers. Labels are written for one labeler account, ``enduser`` (created with a random
password nobody knows): a reply was served to one caller, so it holds at most one verdict of each
kind, and giving feedback again replaces the earlier one (people change their minds) -- as a new
label with a new id, so label ids only grow and a reader holding "every id <= X" never sees one
of them change (migration 0005 keeps SQLite from reusing ids). The ``user`` string is the
caller's claim, so it names no account. Only public pieces of ``rlhfkit.feedback`` are used: the
store and its tables, ``tasks.parse_item``, ``queue.add_items`` / ``queue.submit_label`` and
``auth.create_user``.

The package, one concern a module: ``kinds`` (the feedback kinds, their limits and value checks),
``keys`` (the end-user key and hashed ids), ``log`` (``FeedbackLog``: writing), ``store_rows``
(the rows it writes and reads, one transaction's worth each), ``events`` (the reader for learners), ``erasure`` (``forget``), ``conversations`` (the web chat's transcripts).
"""

from rlhfkit.feedback.enduser.events import FeedbackEvent, feedback_events, last_event_id
from rlhfkit.feedback.enduser.keys import END_USER_KEY_ENV, EndUserKeyError, end_user_key, hashed_user, key_id
from rlhfkit.feedback.enduser.kinds import (
    CHAT_SOURCE,
    EVENT_KINDS,
    MAX_COMPLETION_ID_CHARS,
    MAX_EDIT_CHARS,
    MAX_REASON_CHARS,
    FeedbackError,
    project_names,
)
from rlhfkit.feedback.enduser.log import FeedbackLog

__all__ = [
    "FeedbackLog",
    "FeedbackError",
    "FeedbackEvent",
    "feedback_events",
    "last_event_id",
    "EndUserKeyError",
    "end_user_key",
    "hashed_user",
    "key_id",
    "EVENT_KINDS",
    "CHAT_SOURCE",
    "MAX_REASON_CHARS",
    "MAX_EDIT_CHARS",
    "END_USER_KEY_ENV",
    "MAX_COMPLETION_ID_CHARS",
    "project_names",
]
