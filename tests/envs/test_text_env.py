"""The Gym-style environment for language tasks: Gymnasium's own checker, the token-level MDP by
hand (observation, reward only at the end, terminated at EOS, truncated at the length limit with
the missing-EOS penalty), and a tiny Hugging Face model as the policy, whose greedy episode must
be the continuation ``generate`` makes."""

import pytest

gym = pytest.importorskip("gymnasium")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from rlhfkit.envs import ENV_ID, TextGenerationEnv, run_policy_episode  # noqa: E402
from rlhfkit.models import tiny_causal_lm, tiny_tokenizer  # noqa: E402
from rlhfkit.rollout import tokenize_prompts  # noqa: E402

PROMPTS = ["The cat found", "My friend wrote", "Our team watched the"]


def count_e(prompts, responses):
    """A reward anyone can check: the number of letters e in the response."""
    return torch.tensor([float(r.count("e")) for r in responses])


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_gymnasium_env_checker_passes(tok):
    from gymnasium.utils.env_checker import check_env

    env = TextGenerationEnv(tok, PROMPTS, count_e, max_new_tokens=4, max_prompt_length=8)
    check_env(env, skip_render_check=True)


def test_an_episode_by_hand(tok):
    env = TextGenerationEnv(
        tok, [{"prompt": p} for p in PROMPTS], count_e, max_new_tokens=10, max_prompt_length=8, render_mode="ansi"
    )
    obs, info = env.reset(seed=3)
    again, info2 = env.reset(seed=3)
    assert info["prompt"] == info2["prompt"] and info["prompt"] in PROMPTS  # the seed picks the prompt
    assert np.array_equal(obs["input_ids"], again["input_ids"])
    prompt_ids = tokenize_prompts([info["prompt"]], tok, 8)[0][0].tolist()
    P = len(prompt_ids)
    assert obs["input_ids"].shape == (18,) and obs["input_ids"].dtype == np.int64
    assert obs["input_ids"][:P].tolist() == prompt_ids and obs["attention_mask"].tolist() == [1] * P + [0] * (18 - P)
    assert (obs["input_ids"][P:] == tok.pad_token_id).all()

    words = tok(" the tree here", add_special_tokens=False)["input_ids"]
    for i, t in enumerate(words):
        obs, reward, terminated, truncated, info = env.step(t)
        assert (reward, terminated, truncated, info) == (0.0, False, False, {})  # nothing until the end
        assert obs["input_ids"][: P + i + 1].tolist() == prompt_ids + words[: i + 1]
        assert obs["attention_mask"].sum() == P + i + 1
    obs, reward, terminated, truncated, info = env.step(tok.eos_token_id)
    assert terminated and not truncated
    assert info["response"] == " the tree here" and info["response_tokens"] == len(words) + 1
    assert reward == info["task_reward"] == 5.0  # t-h-e, t-r-e-e, h-e-r-e: five e's
    assert env.render() == info["prompt"] + " the tree here"
    with pytest.raises(RuntimeError, match="reset"):
        env.step(5)


def test_truncation_scores_the_cut_response_minus_the_missing_eos_penalty(tok):
    env = TextGenerationEnv(tok, PROMPTS, count_e, max_new_tokens=3, max_prompt_length=8, missing_eos_penalty=1.5)
    env.reset(seed=0, options={"prompt": "Hello"})
    e = tok("e", add_special_tokens=False)["input_ids"]
    assert len(e) == 1
    for _ in range(2):
        assert env.step(e[0])[1:4] == (0.0, False, False)
    obs, reward, terminated, truncated, info = env.step(e[0])
    assert truncated and not terminated
    assert info["task_reward"] == 3.0 and reward == 3.0 - 1.5
    assert info["prompt"] == "Hello"


def test_bad_input_is_refused_with_what_is_wrong(tok):
    env = TextGenerationEnv(tok, PROMPTS, count_e, max_new_tokens=3)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="not a token id"):
        env.step(len(tok))
    with pytest.raises(ValueError, match="at least one prompt"):
        TextGenerationEnv(tok, [], count_e)
    with pytest.raises(ValueError, match=r"prompts\[1\]"):
        TextGenerationEnv(tok, ["ok", 5], count_e)
    with pytest.raises(ValueError, match="unknown reward|reward"):
        TextGenerationEnv(tok, PROMPTS, "no-such-judge")
    with pytest.raises(ValueError, match="below the tokenizer"):
        TextGenerationEnv(tok, PROMPTS, count_e, vocab_size=10)
    # a model with a padded output layer: every id it can emit is an action
    wide = TextGenerationEnv(tok, PROMPTS, count_e, max_new_tokens=3, vocab_size=len(tok) + 64)
    assert wide.action_space.n == len(tok) + 64


def test_gym_make_and_a_vector_of_environments(tok):
    env = gym.make(ENV_ID, tokenizer=tok, prompts=PROMPTS, reward=count_e, max_new_tokens=2, max_prompt_length=8)
    obs, info = env.reset(seed=1)
    assert info["prompt"] in PROMPTS and env.observation_space.contains(obs)
    model = tiny_causal_lm(tok, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    ret, info = run_policy_episode(env, model, seed=4)  # through gym.make's wrappers
    assert ret == info["task_reward"] == info["response"].count("e")
    envs = gym.vector.SyncVectorEnv(
        [lambda: TextGenerationEnv(tok, PROMPTS, count_e, max_new_tokens=2, max_prompt_length=8) for _ in range(3)]
    )
    obs, _ = envs.reset(seed=0)
    assert obs["input_ids"].shape == (3, 10)
    rewards = []
    for _ in range(2):  # two non-EOS tokens: every episode is cut at the second
        obs, reward, terminated, truncated, info = envs.step(np.array([7, 8, 9]))
        rewards.append(reward)
    assert truncated.all() and not terminated.any()
    assert (rewards[0] == 0).all()


def test_a_tiny_model_as_the_policy_greedy_is_what_generate_makes(tok):
    model = tiny_causal_lm(tok, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    env = TextGenerationEnv(tok, PROMPTS, count_e, max_new_tokens=6, max_prompt_length=8)
    ret, info = run_policy_episode(env, model, seed=2, temperature=0)
    ids, mask = tokenize_prompts([info["prompt"]], tok, 8)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=6,
            do_sample=False,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    body = [t for t in out[0, ids.shape[1] :].tolist() if t not in (tok.eos_token_id, tok.pad_token_id)]
    assert info["response"] == tok.decode(body, skip_special_tokens=True)
    assert ret == info["task_reward"] == float(info["response"].count("e"))
    # sampled episodes: the return is the task reward of what was sampled, and a seed repeats it
    r1, i1 = run_policy_episode(env, model, seed=5)
    r2, i2 = run_policy_episode(env, model, seed=5)
    assert (r1, i1["response"]) == (r2, i2["response"]) and r1 == i1["response"].count("e")


def test_the_kv_cache_runs_each_token_once_and_changes_nothing(tok):
    """With the cache carried between steps a token is run once (prompt + one per later step), not
    the whole sequence every step; greedy and sampled episodes are the same as without it."""
    model = tiny_causal_lm(tok, hidden_size=32, num_layers=2, num_heads=2, seed=1)
    env = TextGenerationEnv(tok, PROMPTS, count_e, max_new_tokens=12, max_prompt_length=8)
    fed = []
    hook = model.register_forward_pre_hook(lambda m, args, kw: fed.append(kw["input_ids"].shape[1]), with_kwargs=True)
    try:
        for seed, temperature in ((2, 0.0), (5, 1.0), (7, 1.0)):
            fed.clear()
            cached = run_policy_episode(env, model, seed=seed, temperature=temperature)
            steps, prompt_len = cached[1]["response_tokens"], fed[0]
            assert fed == [prompt_len] + [1] * (steps - 1)
            fed.clear()
            plain = run_policy_episode(env, model, seed=seed, temperature=temperature, use_cache=False)
            assert fed == [prompt_len + i for i in range(steps)]
            assert (cached[0], cached[1]["response"]) == (plain[0], plain[1]["response"])
    finally:
        hook.remove()
