"""Reward functions importable as `tests.rewards.rules:NAME` (used by the tests)."""


def length_of_response(prompts, responses):
    return [float(len(r)) for r in responses]


def prompt_words(prompts, responses):
    return [float(len(p.split())) for p in prompts]


def wrong_count(prompts, responses):
    return [1.0]
