"""``rlhfkit learn``: the continuous learner beside ``rlhfkit serve``.

It reads end users' verdicts from the store serve writes (``feedback.enduser``), and in rounds
refits a reward model on them (per-user caps and consensus weights against bad users), trains a
LoRA adapter on the promoted version (GRPO against that reward model, or KTO / DPO / SFT straight
from the feedback), passes it through a gate on held-out prompts, and promotes it in the learner's
folder (``models.versions``), which serve follows. Modules: ``config``, ``inputs`` (snapshot,
held-out share, forget), ``defence``, ``reward_update``, ``policy_update``, ``gate``, ``lineage``
(versions.jsonl, versions, rollback), ``round`` (cached stages, promotion), ``run`` (the follow loop).
"""
