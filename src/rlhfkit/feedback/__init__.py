"""The human feedback app: people judge model outputs in a browser (or scripts through the JSON
API) and every judgement is stored and exported as training data.

Modules: ``db`` (schema, engine, migrations, group-commit writer), ``auth`` (passwords, sessions,
CSRF, login rate limiting), ``tasks`` (task types, imports, verdicts), ``queue`` (assignment with
overlap and gold questions), ``agreement`` (Cohen's kappa, Krippendorff's alpha), ``stats``
(dashboard), ``export`` (JSONL / Hugging Face datasets), ``app`` (FastAPI), ``server`` (uvicorn),
``generation`` (live-generation hook). Uses ``rlhfkit.data`` only, never a trainer.

Imports are lazy: ``from rlhfkit.feedback import create_app`` loads the web stack on first use.
"""
from __future__ import annotations

__all__ = ["create_app", "serve"]


def __getattr__(name):
    if name == "create_app":
        from .app import create_app
        return create_app
    if name == "serve":
        from .server import serve
        return serve
    raise AttributeError(name)
