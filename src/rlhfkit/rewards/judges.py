"""Offline judges: deterministic scorers of response text that need no GPU and no network.

Each judge maps a list of texts to a list of floats; ``JudgeSource`` adapts it to the
``RewardSource`` interface (it scores the RESPONSE only, as the sentiment task of Ziegler et
al. 2019 scores the continuation). Heavy libraries are imported on first use.

| name | score | range |
|---|---|---|
| ``vader`` | VADER compound sentiment (Hutto & Gilbert 2014) | [-1, 1] |
| ``textblob`` | TextBlob pattern polarity | [-1, 1] |
| ``afinn`` | AFINN-165 word valence sum / number of words | about [-5, 5] |
| ``afinn_sum`` | AFINN-165 word valence sum | unbounded |
| ``toxicity`` | alt-profanity-check probability of profanity / offence (higher = worse) | [0, 1] |
| ``readability`` | textstat (0.7.8) Flesch reading ease / 100 (higher = easier) | about [-1, 1.2] |
| ``frequency:TEXT`` | occurrences of TEXT x len(TEXT) / len(response) (a rule reward) | [0, 1] |
| ``length`` | number of whitespace-separated words | >= 0 |
| ``friendly`` | ``vader`` minus ``toxicity``: a warm, polite reply that does not offend | [-2, 1] |

``friendly`` is the gold judge of the chat preset (``configs/pipeline_chat.yaml``: replies to the
``chat-first-turns`` prompts). It is fixed and offline, so simulated labelers can rank with it and
a policy trained on their reward model is checked against it; a reader sees it in the replies
(greetings, thanks, "happy to help" raise it; curt, hostile or profane replies lower it).
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch

Judge = Callable[[Sequence[str]], list]


@functools.lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


@functools.lru_cache(maxsize=1)
def _afinn():
    from afinn import Afinn

    return Afinn()


def vader(texts: Sequence[str]) -> list:
    a = _vader()
    return [float(a.polarity_scores(t)["compound"]) for t in texts]


def textblob(texts: Sequence[str]) -> list:
    from textblob import TextBlob

    return [float(TextBlob(t).sentiment.polarity) for t in texts]


def afinn_sum(texts: Sequence[str]) -> list:
    a = _afinn()
    return [float(a.score(t)) for t in texts]


def afinn(texts: Sequence[str]) -> list:
    a = _afinn()
    return [float(a.score(t)) / max(1, len(t.split())) for t in texts]


def toxicity(texts: Sequence[str]) -> list:
    from profanity_check import predict_prob

    if not texts:
        return []
    return [float(p) for p in predict_prob(list(texts))]


def friendly(texts: Sequence[str]) -> list:
    """VADER compound (tone, [-1, 1]) minus the alt-profanity-check probability (offence, [0, 1])."""
    return [v - t for v, t in zip(vader(texts), toxicity(texts))]


def readability(texts: Sequence[str]) -> list:
    import textstat

    return [float(textstat.flesch_reading_ease(t)) / 100.0 if t.strip() else 0.0 for t in texts]


def length(texts: Sequence[str]) -> list:
    return [float(len(t.split())) for t in texts]


def frequency(needle: str) -> Judge:
    if not needle:
        raise ValueError("frequency:TEXT needs a non-empty TEXT")

    def score(texts: Sequence[str]) -> list:
        return [t.count(needle) * len(needle) / max(1, len(t)) for t in texts]

    return score


# judges whose lower scores are better: as a gold judge, the policy wins a prompt with the lower
# score, and a negative gain is an improvement (as a reward, negate it: ``-toxicity``)
LOWER_IS_BETTER = frozenset({"toxicity"})


def lower_is_better(spec: str) -> bool:
    """True when the reward spec is exactly a judge whose lower scores are better."""
    return spec.strip() in LOWER_IS_BETTER


JUDGES: dict[str, Callable[..., Judge]] = {
    "vader": lambda: vader,
    "textblob": lambda: textblob,
    "afinn": lambda: afinn,
    "afinn_sum": lambda: afinn_sum,
    "toxicity": lambda: toxicity,
    "readability": lambda: readability,
    "length": lambda: length,
    "friendly": lambda: friendly,
    "frequency": frequency,
}


def judge(name: str, arg: str | None = None) -> Judge:
    """The judge function ``name`` (``arg`` for parameterised ones such as ``frequency``)."""
    if name not in JUDGES:
        raise ValueError(f"unknown judge {name!r}; known: {sorted(JUDGES)}")
    factory = JUDGES[name]
    if name == "frequency":
        return factory(arg or "")
    if arg:
        raise ValueError(f"judge {name!r} takes no argument (got {arg!r})")
    return factory()


class JudgeSource:
    """A judge as a ``RewardSource`` (scores the responses; prompts are ignored)."""

    def __init__(self, name: str, arg: str | None = None):
        self.name = name if arg is None else f"{name}:{arg}"
        self.fn = judge(name, arg)

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        return torch.tensor(self.fn(list(responses)), dtype=torch.float32)

    def __repr__(self) -> str:
        return f"JudgeSource({self.name!r})"
