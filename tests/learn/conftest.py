"""A tiny chat model folder and a real SQLite feedback store filled through feedback.enduser."""

from pathlib import Path

import pytest

PROMPTS = [f"Question number {i}: what do you think about topic {i}?" for i in range(24)]
# every learner folder of these tests gets this held-out key (in a deployment it is random): the
# tests' prompts are split as by the fixed key, which holds out 2 of PROMPTS[:12], 3 of
# PROMPTS[12:18], and 1 to 3 of each six-prompt block of 60 (test_adversaries' users)
TEST_KEY = bytes.fromhex("8b356509e35e2e970000af3efe2393e46595dbfaae42a57258e70738ea3e0738")


@pytest.fixture(autouse=True, scope="session")
def fixed_holdout_key():
    """Session-wide, so that module-scoped rounds (set up before any function's fixture) get it
    too; a learner run as a subprocess does not: its test writes the key file first."""
    from rlhfkit.learn import inputs

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(inputs, "new_key_hex", lambda: TEST_KEY.hex())
        yield


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    from rlhfkit.models import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    out = tmp_path_factory.mktemp("base_model")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def good(i: int) -> str:
    return f"Thank you, that is a kind and helpful answer about topic {i}."


def bad(i: int) -> str:
    return f"Go away, stupid idiot, topic {i} is garbage."


def fill(db: str, users: dict, prompts=PROMPTS[:12], start: int = 0, edits: bool = False) -> dict[str, list[int]]:
    """Each user of ``users`` ({name: behaviour}) gets every prompt answered twice (a good and a
    bad reply, one completion each) and a comparison of the two, and gives thumbs on both and a
    choice (and with ``edits`` an edit of the reply they think worse into the one they think
    better): ``honest`` as the reply deserves, ``inverted`` the opposite, ``flood`` honest but
    every verdict three times over on copies. Returns each user's label ids."""
    from rlhfkit.feedback.enduser import FeedbackLog

    log = FeedbackLog(db)
    ids: dict[str, list[int]] = {u: [] for u in users}
    try:
        for user, how in users.items():
            repeat = 3 if how == "flood" else 1
            for i, p in enumerate(prompts):
                k = start + i
                for r in range(repeat):
                    msgs = [{"role": "user", "content": p}]
                    for tag, text, up in (("g", good(k), True), ("b", bad(k), False)):
                        cid = f"{user}-{tag}-{k}-{r}"
                        log.log_completion(cid, msgs, text, model="tiny", user=user, version="v0")
                        right = up if how != "inverted" else not up
                        edit = None
                        if edits and not right:
                            edit = good(k) if how != "inverted" else bad(k)
                        out = log.feedback(cid, thumbs=right, user=user, edit=edit)
                        ids[user] += [out["thumbs_label_id"]] + ([out["edit_label_id"]] if edit else [])
                    cid = f"{user}-c-{k}-{r}"
                    log.log_choices(
                        cid, msgs, [good(k), bad(k)], model="tiny", user=user, versions=["v0", "v0"], comparison=True
                    )
                    out = log.feedback(cid, choice=0 if how != "inverted" else 1, user=user)
                    ids[user].append(out["choice_label_id"])
    finally:
        log.close()
    return ids


# a round of the tiny model in seconds
TINY = {
    "min_feedback": 4,
    "once": True,
    "threads": 1,
    "reward.epochs": 1,
    "reward.batch_size": 16,
    "reward.micro_batch_size": 16,
    "reward.learning_rate": 1e-3,
    "reward.max_length": 64,
    "policy.max_steps": 2,
    "policy.batch_size": 8,
    "policy.num_generations": 2,
    "policy.micro_batch_size": 8,
    "policy.max_new_tokens": 8,
    "policy.max_prompt_length": 48,
    "policy.learning_rate": 1e-3,
    "gate.max_prompts": 8,
    "gate.n_boot": 200,
    "gate.holdout_share": 0.25,
}


def tiny_config(learn_dir, db, base, **over):
    """The learner's config for the tiny model (``TINY``, then ``over``)."""
    from rlhfkit.learn.config import LearnConfig
    from rlhfkit.training.config import load_config

    fields = {"learn_dir": str(learn_dir), "store": str(db), "model": str(base), **TINY, **over}
    return load_config(LearnConfig, None, fields)


def cli_args(**over) -> list[str]:
    """``TINY`` (then ``over``) as ``--field value`` arguments."""
    return [
        x for k, v in {**TINY, **over}.items() for x in (f"--{k}", str(v).lower() if isinstance(v, bool) else str(v))
    ]
