"""``learn`` sits above ``recipes``, ``pipeline`` and ``feedback`` and beside ``serve``: it never
imports the server (the two meet only in the learner's folder), and no lower layer imports it."""

from ..feedback.test_layering import _importers


def test_learn_never_imports_serve():
    assert _importers("learn", ("rlhfkit.serve", "rlhfkit.loop")) == []


def test_no_lower_layer_imports_learn():
    for package in (
        "core",
        "models",
        "data",
        "training",
        "rollout",
        "rewards",
        "recipes",
        "pipeline",
        "feedback",
        "serve",
        "eval",
    ):
        assert _importers(package, ("rlhfkit.learn",)) == [], package
