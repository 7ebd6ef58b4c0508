"""Reward sources on hand examples: judges, functions, composition, normalisation, RM source."""

import math

import pytest
import torch

from rlhfkit.rewards import (
    FunctionSource,
    JudgeSource,
    RewardModelSource,
    RewardSource,
    RunningNormaliser,
    WeightedSum,
    build_reward,
    parse_reward_spec,
)

P = ["q1", "q2 two", "q3"]
R = ["I love this wonderful film, it is great!", "This is a terrible, awful, boring movie.", "The film."]


def test_sentiment_judges_order_positive_negative_neutral():
    for name in ("vader", "textblob", "afinn"):
        s = build_reward(name)(P, R)
        assert isinstance(s, torch.Tensor) and s.dtype == torch.float32 and s.shape == (3,)
        assert s[0] > 0 > s[1] and s[2] == 0, (name, s)
    assert build_reward("vader")(["x"], ["I love it"]).item() == pytest.approx(0.6369)  # VADER's own number
    # AFINN-165: love +3, wonderful +4, great +3 = 10 over 8 words
    assert build_reward("afinn_sum")(["x"], [R[0]]).item() == 10.0
    assert build_reward("afinn")(["x"], [R[0]]).item() == pytest.approx(10 / 8)


def test_toxicity_readability_frequency_length():
    tox = build_reward("toxicity")(["", ""], ["you are a fucking idiot", "have a lovely day"])
    assert tox[0] > 0.9 and tox[1] < 0.1
    read = build_reward("readability")(
        ["", ""],
        [
            "The cat sat on the mat.",
            "Notwithstanding multitudinous considerations, institutional heterogeneity predominates.",
        ],
    )
    assert read[0] > 1.0 > 0 > read[1]
    f = build_reward("frequency:ab")(["", "", ""], ["abab", "xxab", ""])
    assert f.tolist() == [1.0, 0.5, 0.0]
    assert build_reward("length")([""], ["a b  c"]).tolist() == [3.0]


def test_friendly_is_vader_tone_minus_toxicity():
    """``friendly`` (the chat preset's gold judge) = VADER compound - profanity probability: a warm
    reply scores near +1, a hostile profane one near -2, a neutral one near 0."""
    texts = ["Thank you, I am happy to help!", "you are a fucking idiot", "The answer is 42."]
    f = build_reward("friendly")(["", "", ""], texts)
    v, t = build_reward("vader")(["", "", ""], texts), build_reward("toxicity")(["", "", ""], texts)
    assert f.tolist() == pytest.approx((v - t).tolist(), abs=1e-6)
    assert f.tolist() == pytest.approx(build_reward("vader + -1*toxicity")(["", "", ""], texts).tolist(), abs=1e-6)
    assert (
        f[0] > 0.8 and f[1] < -1.0 and abs(f[2]) < 0.3
    )  # VADER 0.8478 (thank, happy, help); toxicity ~1 on the insult
    assert isinstance(build_reward("friendly"), JudgeSource)


def test_function_source_and_errors():
    s = build_reward("fn:tests.rewards.rules:length_of_response")
    assert isinstance(s, FunctionSource) and isinstance(s, RewardSource)
    assert s(P, ["ab", "", "abcd"]).tolist() == [2.0, 0.0, 4.0]
    assert build_reward("tests.rewards.rules:prompt_words")(P, R).tolist() == [1.0, 2.0, 1.0]
    with pytest.raises(ValueError, match="returned 1 scores for 3"):
        build_reward("fn:tests.rewards.rules:wrong_count")(P, R)
    with pytest.raises(ValueError, match="no attribute"):
        build_reward("fn:tests.rewards.rules:nope")
    with pytest.raises(ValueError, match="unknown reward source"):
        build_reward("vaderr")


def test_weighted_sum_by_hand():
    assert parse_reward_spec("0.7*vader + -0.3*toxicity+rm:/a/b-c") == [
        (0.7, "vader"),
        (-0.3, "toxicity"),
        (1.0, "rm:/a/b-c"),
    ]
    assert parse_reward_spec("-length + 2e-1*fn:m:f") == [(-1.0, "length"), (0.2, "fn:m:f")]
    s = build_reward("0.5*fn:tests.rewards.rules:length_of_response + -2*fn:tests.rewards.rules:prompt_words")
    assert isinstance(s, WeightedSum)
    # lengths 2, 0, 4; prompt words 1, 2, 1 -> 0.5*2-2*1, 0.5*0-2*2, 0.5*4-2*1
    assert s(P, ["ab", "", "abcd"]).tolist() == [-1.0, -4.0, 0.0]
    assert s.last_components["fn:tests.rewards.rules:prompt_words"].tolist() == [1.0, 2.0, 1.0]
    assert isinstance(build_reward("vader"), JudgeSource)


def test_running_normaliser_by_hand():
    n = RunningNormaliser(eps=0.0)
    out = n(torch.tensor([1.0, 3.0]))  # mean 2, population var 1
    assert out.tolist() == [-1.0, 1.0]
    out = n(torch.tensor([5.0, 7.0]))  # pooled 1,3,5,7: mean 4, var 5
    torch.testing.assert_close(out, torch.tensor([1.0, 3.0]) / math.sqrt(5.0))
    state = n.state_dict()
    m = RunningNormaliser()
    m.load_state_dict(state)
    assert (m.count, m.mean, m.var) == (4, 4.0, 5.0)
    frozen = RunningNormaliser(eps=0.0, shift_mean=False).fit(torch.tensor([2.0, 4.0]))  # mean 3, std 1
    assert frozen.normalise(torch.tensor([5.0]), update=False).tolist() == [5.0 - 3.0 + 3.0]
    assert frozen.count == 2


def test_reward_model_source_matches_reward_scores_and_is_batch_invariant():
    from rlhfkit.data.tokenize import pad_sequences, tokenize_pair
    from rlhfkit.models import reward_scores, tiny_reward_model, tiny_tokenizer

    tok = tiny_tokenizer(vocab_size=300)
    rm = tiny_reward_model(tok, kind="causal", seed=1)
    src = RewardModelSource(rm, tok, max_length=64, batch_size=2)
    got = src(P, R)
    ids, mask = pad_sequences([tokenize_pair(p, r, tok, 64) for p, r in zip(P, R)], tok.pad_token_id)
    with torch.no_grad():
        expect = reward_scores(rm, ids, mask)
    torch.testing.assert_close(got, expect, atol=1e-5, rtol=1e-5)
    one = torch.cat([src([p], [r]) for p, r in zip(P, R)])
    torch.testing.assert_close(one, got, atol=1e-5, rtol=1e-5)


def test_ensemble_combinations_by_hand():
    """Coste et al. 2023's combinations on three members' scores of two responses:
    response 0: 1, 3, 2 -> mean 2, min 1, population variance (1 + 1 + 0) / 3 = 2/3;
    response 1: 2, 0, 4 -> mean 2, min 0, variance (0 + 4 + 4) / 3 = 8/3; uwo with lambda 0.5
    subtracts 1/3 and 4/3: the response the members disagree on loses more."""
    from rlhfkit.core.reward_shaping import combine_ensemble

    s = torch.tensor([[1.0, 2.0], [3.0, 0.0], [2.0, 4.0]])
    assert combine_ensemble(s, "mean").tolist() == [2.0, 2.0]
    assert combine_ensemble(s, "min").tolist() == [1.0, 0.0]
    assert combine_ensemble(s, "uwo", 0.5).tolist() == pytest.approx([2 - 1 / 3, 2 - 4 / 3])
    one = torch.tensor([[0.25, -1.0]])
    for how in ("mean", "min", "uwo"):
        assert combine_ensemble(one, how, 3.0).tolist() == [0.25, -1.0]
    with pytest.raises(ValueError, match="one of mean, min, uwo"):
        combine_ensemble(s, "max")


def test_ensemble_source_and_spec():
    from rlhfkit.rewards import EnsembleSource, check_reward_spec
    from rlhfkit.rewards.sources import parse_ensemble_term

    a = FunctionSource(lambda p, r: [float(len(x)) for x in r])
    b = FunctionSource(lambda p, r: [1.0 for _ in r])
    src = EnsembleSource([a, b], "uwo", 1.0)
    # lengths 1 and 3 against 1: means 1 and 2, variances 0 and 1
    assert src(["p", "p"], ["x", "xyz"]).tolist() == [1.0, 1.0]
    assert src.last_members.tolist() == [[1.0, 3.0], [1.0, 1.0]]
    assert parse_ensemble_term("uwo=0.5:A, B") == ("uwo", 0.5, ["A", "B"])
    assert parse_ensemble_term("min:A") == ("min", 0.0, ["A"])
    check_reward_spec("0.5*ensemble:uwo=2:outputs/a,outputs/b + vader")
    assert parse_ensemble_term("mean:rm:A,rm:B") == ("mean", 0.0, ["A", "B"])
    for bad in (
        "ensemble:max:A",
        "ensemble:uwo=x:A",
        "ensemble:uwo=-1:A",
        "ensemble:min:",
        "ensemble:min",
        "ensemble:uwo=nan:A",
        "ensemble:uwo=inf:A",
        "ensemble:uwo:A,B",
        "ensemble:min:A,vader",
    ):
        with pytest.raises(ValueError):
            check_reward_spec(bad)
