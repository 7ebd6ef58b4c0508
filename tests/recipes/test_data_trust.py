"""Data the recipes can be trusted with: held-out sets split by prompt (whole rankings on one
side), exact duplicates dropped and counted, empty or too small data refused by name before any
model loads, record weights honoured by every loss (a weighted sum over the sum of weights, the
same however a batch is split), and held-out ratings and thumbs scored."""

import json
import random

import pytest
import torch

import rlhfkit.recipes.dpo as dpo
import rlhfkit.recipes.kto as kto
import rlhfkit.recipes.reward as reward
import rlhfkit.recipes.sft as sft
from rlhfkit.cli import main
from rlhfkit.data import DataError
from rlhfkit.data.loading import load_training_records
from rlhfkit.data.splits import split_by_prompt
from rlhfkit.training.config import load_config

from .conftest import load_weights, sentence, write_jsonl

QUIET = ["--tensorboard", "false", "--threads", "1", "--resume", "false"]


# ----------------------------------------------------------------------------- held-out splits
def test_rankings_are_held_out_whole_and_no_held_out_record_is_in_training(tmp_path, capsys):
    """12 three-way rankings (36 pairs): with a fifth held out, every pair of a held-out ranking is
    held out, so no held-out response appears in training."""
    rows = [{"prompt": f"p{i}", "responses": [f"a{i}", f"b{i}", f"c{i}"], "ranks": [0, 1, 2]} for i in range(12)]
    pairs = load_training_records(str(write_jsonl(tmp_path / "r.jsonl", rows)), "pairs")
    assert len(pairs) == 36 and "12 rankings expanded to 36 pairs" in capsys.readouterr().out
    train, held = split_by_prompt(pairs, 0.2, seed=0, shuffle=True)
    assert (len(train), len(held)) == (30, 6)  # round(12 * 0.2) = 2 rankings held out, 3 pairs each
    seen = {(p.prompt, x) for p in train for x in (p.chosen, p.rejected)}
    assert not any((p.prompt, p.chosen) in seen or (p.prompt, p.rejected) in seen for p in held)


def test_record_prompt_groups_a_conversation_by_its_opening():
    from rlhfkit.data import ConversationRecord
    from rlhfkit.data.splits import record_prompt

    opening = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    a = ConversationRecord(opening + [{"role": "assistant", "content": "hello"}])
    b = ConversationRecord(
        opening
        + [
            {"role": "assistant", "content": "hey"},
            {"role": "user", "content": "and?"},
            {"role": "assistant", "content": "that is all"},
        ]
    )
    c = ConversationRecord([{"role": "user", "content": "bye"}, {"role": "assistant", "content": "ciao"}])
    assert record_prompt(a) == record_prompt(b) != record_prompt(c)


def _data(kind: str, rng: random.Random) -> list[dict]:
    """12 prompts with two records each (a prompt's records differ) for each recipe's kind."""
    rows = []
    for i in range(12):
        prompt = f"{sentence(rng, 4)} {i}"
        for j in range(2):
            body = sentence(rng, 3)
            if kind == "sft":
                rows.append({"prompt": prompt, "completion": f" {body} {j}"})
            elif kind == "rankings":
                rows.append(
                    {
                        "prompt": prompt,
                        "responses": [f" {body} happy", f" {body} sad", f" {body} {j}"],
                        "ranks": [0, 2, 1],
                    }
                )
            elif kind == "pairs":
                rows.append({"prompt": prompt, "chosen": f" {body} happy {j}", "rejected": f" {body} sad {j}"})
            else:
                rows.append({"prompt": prompt, "completion": f" {body} {j}", "label": j == 0})
    return rows


@pytest.mark.parametrize("recipe", ["sft", "reward", "dpo", "kto"])
def test_every_recipe_holds_out_by_prompt_and_drops_exact_duplicates(
    tmp_path, monkeypatch, capsys, recipe, tiny_policy_dir, tiny_encoder_rm_dir
):
    """24 records over 12 prompts plus 6 exact copies: the copies are dropped and said so; the
    held-out records share no prompt with the training records, and none equals one."""
    kind = {"sft": "sft", "reward": "rankings", "dpo": "pairs", "kto": "thumbs"}[recipe]
    rows = _data(kind, random.Random(7))
    data = write_jsonl(tmp_path / "data.jsonl", rows + rows[::4])  # 6 copies, spread over the file
    seen: list[list] = []

    def spy(module, name, records_at=0):
        original = getattr(module, name)

        def wrapped(*args, **kwargs):
            seen.append(list(args[records_at]))
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapped)

    args = [
        "--data",
        str(data),
        "--output_dir",
        str(tmp_path / "out"),
        "--max_steps",
        "1",
        "--batch_size",
        "4",
        "--micro_batch_size",
        "4",
        "--max_length",
        "32",
        "--eval_fraction",
        "0.25",
        *QUIET,
    ]
    if recipe == "sft":
        spy(sft, "tokenize_all")
        sft.run(load_config(sft.SFTConfig, None, ["--model", str(tiny_policy_dir), *args]))
    elif recipe == "reward":
        spy(reward, "encode_records")
        spy(reward, "held_out_metrics", records_at=2)
        reward.run(load_config(reward.RewardConfig, None, ["--model", str(tiny_encoder_rm_dir), *args]))
    elif recipe == "dpo":
        spy(dpo, "encode_pairs")
        dpo.run(load_config(dpo.DPOConfig, None, ["--model", str(tiny_policy_dir), "--max_prompt_length", "16", *args]))
    else:
        spy(kto, "encode_thumbs")
        kto.run(load_config(kto.KTOConfig, None, ["--model", str(tiny_policy_dir), "--max_prompt_length", "16", *args]))
    from rlhfkit.data.splits import record_prompt

    out = capsys.readouterr().out
    assert f"{data}: dropped 6 exact duplicate records (24 left)" in out, out
    train, held = seen[0], seen[1]
    n_per_record = 3 if kind == "rankings" else 1  # a 3-way ranking is 3 pairs
    assert len(train) + len(held) == 24 * n_per_record
    assert len(held) == 3 * 2 * n_per_record  # round(12 * 0.25) = 3 prompts held out, all their records
    assert not {record_prompt(r) for r in train} & {record_prompt(r) for r in held}
    assert not {json.dumps(r.to_dict(), sort_keys=True) for r in train} & {
        json.dumps(r.to_dict(), sort_keys=True) for r in held
    }


def test_records_by_different_labelers_are_not_duplicates(tmp_path, capsys):
    row = {"prompt": "p", "chosen": "c", "rejected": "r"}
    rows = [{**row, "labeler": "labeler-a"}, {**row, "labeler": "labeler-b"}, {**row, "labeler": "labeler-a"}, row, row]
    records = load_training_records(str(write_jsonl(tmp_path / "p.jsonl", rows)), "pairs")
    assert [r.labeler for r in records] == ["labeler-a", "labeler-b", None]
    assert "dropped 2 exact duplicate records (3 left)" in capsys.readouterr().out


def test_what_counts_as_an_exact_duplicate(tmp_path, capsys):
    """Every field equal as training reads it: key order, a field left out or given as null or its
    default, an integer or a float, a weight of 1 or none are the same record; a weight of 2 is not."""
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"rejected": "b", "chosen": "a", "prompt": "p", "weight": 1},
        {"prompt": "p", "chosen": "a", "rejected": "b", "margin": None, "tie": False, "labeler": None, "weight": 1.0},
        {"prompt": "p", "chosen": "a", "rejected": "b", "weight": 2},
        {"prompt": "p", "chosen": "a", "rejected": "b", "margin": 1},
        {"prompt": "p", "chosen": "a", "rejected": "b", "margin": 1.0},
    ]
    records = load_training_records(str(write_jsonl(tmp_path / "d.jsonl", rows)), "pairs")
    assert [(r.weight, r.margin) for r in records] == [(None, None), (2.0, None), (None, 1.0)]
    assert "dropped 3 exact duplicate records (3 left)" in capsys.readouterr().out


def test_a_held_out_file_removes_its_copies_from_training(tmp_path, capsys, tiny_encoder_rm_dir, monkeypatch):
    rows = _data("pairs", random.Random(3))
    train_file = write_jsonl(tmp_path / "train.jsonl", rows)
    eval_file = write_jsonl(tmp_path / "eval.jsonl", [{**r, "labeler": "someone"} for r in rows[:4]])
    seen = []
    original = reward.encode_records

    def spy(recs, *a, **k):
        seen.append(list(recs))
        return original(recs, *a, **k)

    monkeypatch.setattr(reward, "encode_records", spy)
    reward.run(
        load_config(
            reward.RewardConfig,
            None,
            [
                "--model",
                str(tiny_encoder_rm_dir),
                "--data",
                str(train_file),
                "--eval_data",
                str(eval_file),
                "--output_dir",
                str(tmp_path / "o"),
                "--max_steps",
                "1",
                "--batch_size",
                "4",
                "--micro_batch_size",
                "4",
                "--max_length",
                "32",
                *QUIET,
            ],
        )
    )
    assert (
        f"{train_file}: dropped 4 training records that share a prompt with the held-out data"
        in capsys.readouterr().out
    )
    assert len(seen[0]) == 20


def test_a_held_out_file_removes_every_training_record_of_its_prompts(tmp_path, capsys):
    """Compared as splits group them: the same prompt in other case or spacing, the held-out pair
    the other way round or in another subset, another answer to a held-out prompt; an unrelated
    record stays."""
    from rlhfkit.data import PreferencePair
    from rlhfkit.data.splits import drop_held_out_copies

    held = [
        PreferencePair("What is 2+2?", "4", "5"),
        PreferencePair("", "Human: hi Assistant: a", "Human: hi Assistant: b"),
    ]
    train = [
        PreferencePair("what is  2+2? ", "4", "5"),
        PreferencePair("What is 2+2?", "5", "4", subset="proj"),
        PreferencePair("What is 2+2?", "four", "5"),
        PreferencePair("", "Human: hi Assistant: b", "Human: hi Assistant: a"),
        PreferencePair("", "Human: hi Assistant: a", "Human: hi Assistant: c"),
        PreferencePair("What is 3+3?", "6", "5"),
    ]
    kept = drop_held_out_copies(train, held, "t.jsonl")
    assert kept == train[4:]  # an implicit-prompt pair with another answer is another example
    assert "t.jsonl: dropped 4 training records that share a prompt with the held-out data" in capsys.readouterr().out


def test_prompts_differing_in_case_or_spacing_are_held_out_together(capsys):
    from rlhfkit.data import PreferencePair
    from rlhfkit.data.splits import prompt_key

    recs = [PreferencePair(p, f"a{i}", f"b{i}") for i in range(50) for p in (f"What is {i}?", f"what  is {i}? \n")]
    train, held = split_by_prompt(recs, 0.2, seed=0)
    assert (len(train), len(held)) == (80, 20)  # 10 of the 50 prompts, both spellings
    assert not {prompt_key(r.prompt) for r in train} & {prompt_key(r.prompt) for r in held}
    assert prompt_key("Ｗhat\tis  ２+2?\u00a0") == "what is 2+2?"  # NFKC, case, any white space


def test_implicit_prompt_records_are_held_out_by_their_texts(capsys):
    """Records with an empty prompt (the prompt inside the responses) are grouped by the texts
    they judge: a fraction of them is held out (not all or none, as one shared prompt "" would
    make it), and a pair judged twice, once the other way round, stays on one side."""
    from rlhfkit.data import PreferencePair

    recs = [PreferencePair("", f"Human: q{i} Assistant: a", f"Human: q{i} Assistant: b") for i in range(40)]
    recs += [PreferencePair("", r.rejected, r.chosen, labeler="other") for r in recs[::4]]
    train, held = split_by_prompt(recs, 0.25, seed=0)
    assert len({r.chosen for r in held} | {r.rejected for r in held}) == 2 * 10  # 10 of the 40 examples held out
    held_texts = {frozenset((r.chosen, r.rejected)) for r in held}
    assert not {frozenset((r.chosen, r.rejected)) for r in train} & held_texts


def test_a_split_that_holds_out_nothing_says_so(capsys):
    from rlhfkit.data import PreferencePair

    recs = [PreferencePair(f"p{k}", f"a{i}", f"b{i}") for k in range(3) for i in range(100)]
    train, held = split_by_prompt(recs, 0.1, seed=0)
    assert (len(train), len(held)) == (300, 0)
    assert "a fraction of 0.1 of 3 distinct prompts rounds to none: nothing is held out" in capsys.readouterr().out
    split_by_prompt(recs, 0.0, seed=0)
    assert "nothing is held out" not in capsys.readouterr().out  # asked for none


# ----------------------------------------------------------------------------- empty and small data
@pytest.mark.parametrize("command", [["sft"], ["reward", "train"], ["dpo"], ["kto"], ["reward", "eval"]])
def test_an_empty_data_file_is_named_before_any_model_loads(tmp_path, capsys, command):
    """The model does not exist: an error about the data proves the data was read first."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    out = ["--output_dir", str(tmp_path / "o")] if command[-1] != "eval" else []
    code = main([*command, "--model", str(tmp_path / "no_model"), "--data", str(empty), *out])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == (
        f"rlhfkit {' '.join(command)}: error: {empty}: no records in it (an empty file?)"
    ), err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", [["sft"], ["reward", "train"], ["dpo"], ["kto"]])
def test_too_few_training_examples_for_a_batch_are_named_before_any_model_loads(tmp_path, capsys, command):
    rows = {
        "sft": _data("sft", random.Random(1)),
        "train": _data("pairs", random.Random(1)),
        "dpo": _data("pairs", random.Random(1)),
        "kto": _data("thumbs", random.Random(1)),
    }[command[-1]][:4]
    data = write_jsonl(tmp_path / "small.jsonl", rows)
    code = main(
        [
            *command,
            "--model",
            str(tmp_path / "no_model"),
            "--data",
            str(data),
            "--output_dir",
            str(tmp_path / "o"),
            "--batch_size",
            "8",
            "--micro_batch_size",
            "4",
            "--eval_fraction",
            "0.5",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and f"error: {data}: 2 training examples (2 held out) for a batch of 8" in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("recipe", ["dpo", "kto"])
def test_a_refused_preference_run_leaves_nothing_behind(tmp_path, capsys, recipe, tiny_policy_dir):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = tmp_path / "o"
    assert main([recipe, "--model", str(tiny_policy_dir), "--data", str(empty), "--output_dir", str(out)]) == 2
    assert "no records in it" in capsys.readouterr().err
    assert not out.exists()  # no reference_logps.pt


# ----------------------------------------------------------------------------- weights
WEIGHTS = [0.2, 0.0, 0.1, 0.1, 0.05, 0.3, 0.1, 0.2]  # every global batch of 4 weighs less than 1 in all


def _weighted_file(tmp_path, kind: str, scale: float | None, name: str):
    rows = _data({"sft": "sft", "reward": "pairs", "dpo": "pairs", "kto": "thumbs"}[kind], random.Random(11))[::3][:8]
    if scale is not None:
        rows = [{**r, "weight": w * scale} for r, w in zip(rows, WEIGHTS)]
    return write_jsonl(tmp_path / f"{name}.jsonl", rows)


def _train(tmp_path, kind, data, name, micro, policy, rm):
    """Three steps; returns (final weights, the first step's logged metrics: loss and gradient norm
    at the initial weights, before AdamW, which turns a gradient's float noise into a full step
    where the gradient is near 0, makes any two runs differ)."""
    args = [
        "--data",
        str(data),
        "--output_dir",
        str(tmp_path / name),
        "--max_steps",
        "3",
        "--batch_size",
        "4",
        "--micro_batch_size",
        str(micro),
        "--max_length",
        "32",
        "--eval_fraction",
        "0",
        "--learning_rate",
        "1e-2",
        *QUIET,
    ]
    if kind == "sft":
        sft.run(load_config(sft.SFTConfig, None, ["--model", str(policy), *args]))
    elif kind == "reward":
        reward.run(load_config(reward.RewardConfig, None, ["--model", str(rm), "--warmup_ratio", "0", *args]))
    elif kind == "dpo":
        dpo.run(load_config(dpo.DPOConfig, None, ["--model", str(policy), "--max_prompt_length", "16", *args]))
    else:
        kto.run(load_config(kto.KTOConfig, None, ["--model", str(policy), "--max_prompt_length", "16", *args]))
    first = json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0])
    return load_weights(tmp_path / name / "model"), first


def _same(a, b) -> bool:
    return all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)


@pytest.mark.parametrize("kind", ["sft", "reward", "dpo", "kto"])
def test_weights_are_a_weighted_mean_whatever_the_batch_split(tmp_path, kind, tiny_policy_dir, tiny_encoder_rm_dir):
    """8 weighted records, global batches of 4 weighing less than 1 in all: weights times 10 train
    the same (the normaliser is the sum of weights, fractional or not); batch 4 as 2 micro-batches
    of 2 gives the same first loss and gradient as one micro-batch of 4 (not KTO: its reference
    point z0 is a micro-batch statistic); without the weights the training differs."""

    def run(scale, name, micro=4):
        return _train(
            tmp_path,
            kind,
            _weighted_file(tmp_path, kind, scale, name),
            name,
            micro,
            tiny_policy_dir,
            tiny_encoder_rm_dir,
        )

    weights, first = run(1.0, "w1")
    weights10, first10 = run(10.0, "w10")
    assert _same(weights, weights10)
    assert (first10["loss"], first10["grad_norm"]) == (
        pytest.approx(first["loss"], rel=1e-6),
        pytest.approx(first["grad_norm"], rel=1e-5),
    )
    if kind != "kto":
        _, split = run(1.0, "w1_micro2", micro=2)
        assert (split["loss"], split["grad_norm"]) == (
            pytest.approx(first["loss"], rel=1e-6),
            pytest.approx(first["grad_norm"], rel=1e-5),
        )
    plain, _ = run(None, "plain")
    assert not _same(weights, plain)


@pytest.mark.parametrize("kind", ["sft", "reward"])
def test_weights_near_the_float_range_train_as_their_ratios(tmp_path, kind, tiny_policy_dir, tiny_encoder_rm_dir):
    """The loss is a weighted mean, so weights times 2**1020 (1.1e307: their products with the
    losses overflow a float) train exactly as the weights themselves: finite, the same model."""

    def run(scale, name):
        return _train(
            tmp_path, kind, _weighted_file(tmp_path, kind, scale, name), name, 4, tiny_policy_dir, tiny_encoder_rm_dir
        )

    weights, first = run(1.0, "w1")
    huge, first_huge = run(2.0**1020, "huge")
    assert first_huge["loss"] == first["loss"] and all(torch.equal(weights[k], huge[k]) for k in weights)


@pytest.mark.parametrize("recipe", ["sft", "dpo"])
def test_a_training_set_of_zero_weights_is_refused_before_the_model_loads(tmp_path, recipe):
    rows = [{**r, "weight": 0} for r in _data("sft" if recipe == "sft" else "pairs", random.Random(2))]
    data = write_jsonl(tmp_path / "zero.jsonl", rows)
    args = [
        "--data",
        str(data),
        "--model",
        str(tmp_path / "no-model"),
        "--output_dir",
        str(tmp_path / "o"),
        "--batch_size",
        "4",
        "--micro_batch_size",
        "4",
        "--eval_fraction",
        "0.25",
        *QUIET,
    ]
    with pytest.raises(DataError, match="every one of the 18 training records has weight 0") as e:
        (
            sft.run(load_config(sft.SFTConfig, None, args))
            if recipe == "sft"
            else dpo.run(load_config(dpo.DPOConfig, None, args))
        )
    assert e.value.field == "weight" and not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- ratings and thumbs
def _scored_file(tmp_path, kind: str, n: int = 160):
    rng = random.Random(5)
    rows = []
    for i in range(n):
        good = i % 2 == 0
        row = {"prompt": f"{sentence(rng, 3)} {i}", "completion": f" {sentence(rng, 3)} {'happy' if good else 'sad'}"}
        if kind == "ratings":
            row.update(rating=6 if good else 2, labeler=f"labeler-{i % 3}")
        else:
            row["label"] = good
        rows.append(row)
    return write_jsonl(tmp_path / f"{kind}.jsonl", rows), rows


@pytest.mark.parametrize("objective", ["regression", "classification"])
def test_held_out_ratings_and_thumbs_are_scored(tmp_path, capsys, tiny_encoder_rm_dir, objective):
    """The held-out part is scored by the objective's metrics, and they are what the saved model's
    scores give."""
    from transformers import AutoTokenizer

    from rlhfkit.rewards.metrics import rating_metrics, score_texts, thumbs_metrics
    from rlhfkit.models import load_reward_model

    kind = "ratings" if objective == "regression" else "thumbs"
    data, rows = _scored_file(tmp_path, kind)
    out = tmp_path / "rm"
    metrics = reward.run(
        load_config(
            reward.RewardConfig,
            None,
            [
                "--model",
                str(tiny_encoder_rm_dir),
                "--data",
                str(data),
                "--objective",
                objective,
                "--output_dir",
                str(out),
                "--epochs",
                "8",
                "--batch_size",
                "16",
                "--micro_batch_size",
                "16",
                "--learning_rate",
                "1e-2",
                "--eval_fraction",
                "0.25",
                "--max_length",
                "32",
                *QUIET,
            ],
        )
    )
    last = capsys.readouterr().out.strip().splitlines()[-1]
    # the held-out quarter: 40 of the 160 prompts; scored again here from the saved model
    held = split_by_prompt(load_training_records(str(data), kind), 0.25, seed=0)[1]
    assert len(held) == 40
    model, _ = load_reward_model(str(out / "model"), trained_head=True)
    tok = AutoTokenizer.from_pretrained(out / "model")
    scores = score_texts(model, tok, [(r.prompt, r.completion) for r in held], 32, 16).tolist()
    if kind == "ratings":
        expected = rating_metrics(scores, [(r.rating - 1) / 6 for r in held])
        assert metrics["eval_spearman"] > 0.7, metrics  # two rating values: ties cap it below 1
        assert last.endswith(
            f"held-out MSE {metrics['eval_mse']:.3f} and Spearman {metrics['eval_spearman']:.3f} on 40 ratings"
        ), last
        keys = ("mse", "spearman")
    else:
        expected = thumbs_metrics(scores, [r.label for r in held])
        assert metrics["eval_auc"] > 0.9, metrics
        assert last.endswith(
            f"held-out accuracy {metrics['eval_accuracy']:.3f} and AUC {metrics['eval_auc']:.3f} on 40 thumbs"
        ), last
        keys = ("accuracy", "auc", "loss")
    assert metrics["eval_examples"] == 40
    for k in keys:
        assert metrics[f"eval_{k}"] == pytest.approx(expected[k], abs=1e-5), k


def test_labeler_scales_by_hand():
    """A strict labeler (2, 4 of 7) and a lenient one (5, 7) who order their responses alike get
    the same targets: each one's z-scores (-1, +1) mapped to the pooled mean and sd."""
    from rlhfkit.data import RatingRecord

    recs = [
        RatingRecord("p", "a", 2, labeler="strict"),
        RatingRecord("p", "b", 4, labeler="strict"),
        RatingRecord("q", "a", 5, labeler="lenient"),
        RatingRecord("q", "b", 7, labeler="lenient"),
        RatingRecord("r", "a", 7),
        RatingRecord("s", "a", 3, labeler="once"),
    ]
    scales = reward.labeler_scales(recs[:4])
    # targets /6: 1, 3, 4, 6 -> pooled mean 14/24, population sd sqrt(13/4)/6
    assert scales.mean == pytest.approx(14 / 24) and scales.sd == pytest.approx((13 / 4) ** 0.5 / 6)
    assert scales.labelers == {"strict": pytest.approx((2 / 6, 1 / 6)), "lenient": pytest.approx((5 / 6, 1 / 6))}
    t = reward.normalised_targets(recs, scales)
    low, high = scales.mean - scales.sd, scales.mean + scales.sd
    assert t == pytest.approx([low, high, low, high, 1.0, 2 / 6])  # no labeler / unknown one: as given


def test_per_labeler_normalisation_trains_and_needs_labelers(tmp_path, capsys, tiny_encoder_rm_dir):
    data, rows = _scored_file(tmp_path, "ratings", n=32)
    args = [
        "--model",
        str(tiny_encoder_rm_dir),
        "--objective",
        "regression",
        "--normalise_ratings",
        "per_labeler",
        "--max_steps",
        "1",
        "--batch_size",
        "8",
        "--max_length",
        "32",
        "--eval_fraction",
        "0.25",
        *QUIET,
    ]
    metrics = reward.run(
        load_config(reward.RewardConfig, None, [*args, "--data", str(data), "--output_dir", str(tmp_path / "a")])
    )
    assert "reward: ratings normalised per labeler for 3 labelers" in capsys.readouterr().out
    assert metrics["eval_examples"] == 8
    bare = write_jsonl(tmp_path / "bare.jsonl", [{k: v for k, v in r.items() if k != "labeler"} for r in rows])
    with pytest.raises(DataError, match="no labeler has two different ratings"):
        reward.run(
            load_config(reward.RewardConfig, None, [*args, "--data", str(bare), "--output_dir", str(tmp_path / "b")])
        )
