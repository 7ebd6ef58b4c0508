"""The human feedback app: people judge model outputs in a browser (or scripts through the JSON
API) and every judgement is stored and exported as training data.

Modules: ``schema`` (the tables), ``db`` (engine, migrations, group-commit writer, ``Store``),
``auth`` (passwords, sessions, CSRF, login rate limiting), ``tasks`` (task types, imports,
verdicts), ``queue`` (assignment with overlap and gold questions), ``agreement`` (Cohen's kappa,
Krippendorff's alpha), ``stats`` (dashboard), ``export`` (JSONL / Hugging Face datasets), ``app``
(``create_app``, composing the HTTP layer in ``web``: routers, auth dependencies, ``AppContext``),
``server`` (uvicorn), ``generation`` (live-generation hook), ``cli`` and ``cli_users`` (the
``rlhfkit feedback`` commands). Uses ``rlhfkit.data`` only, never a trainer.

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
