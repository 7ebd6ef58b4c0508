"""Reward sources behind one interface: ``source(prompts, responses) -> FloatTensor [B]``.

``build_reward("0.7*vader+0.3*rm:outputs/rm/model")`` turns a config string into a source:
a trained reward model (``rm:PATH``), a Python function (``fn:package.module:function``),
offline judges (``vader``, ``textblob``, ``afinn``, ``toxicity``, ``readability``,
``frequency:TEXT``, ``length``), several reward models combined conservatively
(``ensemble:uwo=0.5:PATH1,PATH2``, ``ensemble:min:...``) and weighted sums of them. ``RunningNormaliser`` standardises
scores (running or fitted once) and checkpoints with the run.
"""

from .judges import JUDGES, JudgeSource, judge
from .normalise import RunningNormaliser
from .sources import (
    EnsembleSource,
    FunctionSource,
    RewardModelSource,
    RewardSource,
    WeightedSum,
    build_reward,
    check_reward_field,
    check_reward_spec,
    parse_reward_spec,
)

__all__ = [
    "JUDGES",
    "EnsembleSource",
    "FunctionSource",
    "JudgeSource",
    "RewardModelSource",
    "RewardSource",
    "RunningNormaliser",
    "WeightedSum",
    "build_reward",
    "check_reward_field",
    "check_reward_spec",
    "judge",
    "parse_reward_spec",
]
