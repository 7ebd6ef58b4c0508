"""`rlhfkit dpo` and `rlhfkit kto` on tiny models: the held-out implicit-reward accuracy rises,
the reference cache is computed once and invalidated by new data, the LoRA reference works,
ties are dropped or kept and counted, and a SIGKILLed run resumes exactly."""

import json
import signal

import pytest
import torch

import rlhfkit.recipes.dpo as dpo
from rlhfkit.cli import main
from rlhfkit.recipes.kto import KTOConfig
from rlhfkit.recipes.kto import run as kto_run
from rlhfkit.training.config import load_config

from .conftest import load_weights, run_cli, write_jsonl

COMMON = ["--max_length", "48", "--max_prompt_length", "16", "--tensorboard", "false", "--threads", "1"]


def dpo_args(policy, data, out, *extra):
    return [
        "--model",
        str(policy),
        "--data",
        str(data),
        "--output_dir",
        str(out),
        "--epochs",
        "2",
        "--batch_size",
        "16",
        "--micro_batch_size",
        "16",
        "--learning_rate",
        "3e-3",
        "--eval_fraction",
        "0.25",
        *COMMON,
        *extra,
    ]


@pytest.fixture
def count_reference(monkeypatch):
    """Counts calls of the reference computation (one per data split computed)."""
    from rlhfkit.recipes import reference_cache

    calls = []
    original = reference_cache.compute_reference

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(reference_cache, "compute_reference", counted)  # where cached_reference finds it
    return calls


def test_dpo_learns_and_reference_cache_is_reused_then_invalidated(
    tmp_path, tiny_policy_dir, pair_file, count_reference
):
    out = tmp_path / "run"
    metrics = dpo.run(load_config(dpo.DPOConfig, None, dpo_args(tiny_policy_dir, pair_file, out)))
    assert metrics["eval_accuracy"] >= 0.8, metrics
    assert metrics["eval_margin"] > 0 and metrics["eval_reward_chosen"] > metrics["eval_reward_rejected"]
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert {"reward_chosen", "reward_rejected", "margin", "accuracy", "pairs_per_s"} <= set(train_rows[-1])
    assert train_rows[-1]["accuracy"] > train_rows[0]["accuracy"]
    cache = out / "reference_logps.pt"
    assert len(count_reference) == 2  # train and held-out splits, once each
    stamp = cache.stat().st_mtime_ns

    # same data and model in the same folder (another run there: --resume false): the cache is
    # read, nothing recomputed
    dpo.run(
        load_config(
            dpo.DPOConfig, None, dpo_args(tiny_policy_dir, pair_file, out, "--max_steps", "1", "--resume", "false")
        )
    )
    assert len(count_reference) == 2 and cache.stat().st_mtime_ns == stamp

    # different data (a new run in the same folder, so --resume false): the key changes and the
    # cache is rebuilt
    rows = [json.loads(l) for l in pair_file.read_text().splitlines()][:-8]
    smaller = write_jsonl(tmp_path / "smaller.jsonl", rows)
    dpo.run(
        load_config(
            dpo.DPOConfig, None, dpo_args(tiny_policy_dir, smaller, out, "--max_steps", "1", "--resume", "false")
        )
    )
    assert len(count_reference) == 4
    assert torch.load(cache, weights_only=True)["splits"]["train"].shape == (114, 2)


@pytest.mark.parametrize("damage", ["truncated", "bit flipped"])
def test_a_damaged_reference_cache_is_computed_again_with_a_warning(
    tmp_path, tiny_policy_dir, pair_file, count_reference, capsys, damage
):
    """reference_logps.pt (shared by dpo and kto) truncated, or one bit of its log-probs flipped
    (torch.load reads that without complaint): the next run says so in one warning line and
    computes it again, to the same numbers."""
    from ..conftest import flip_tensor_bit

    out = tmp_path / "run"
    args = dpo_args(tiny_policy_dir, pair_file, out, "--max_steps", "1")
    dpo.run(load_config(dpo.DPOConfig, None, args))
    cache = out / "reference_logps.pt"
    intact = torch.load(cache, weights_only=True)["splits"]
    if damage == "truncated":
        cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
        what = "does not load (RuntimeError: PytorchStreamReader failed reading zip archive"
    else:
        flip_tensor_bit(cache)
        assert not torch.equal(torch.load(cache, weights_only=True)["splits"]["train"], intact["train"])
        what = "its log-probs do not match their sha256 (changed after it was written)"
    capsys.readouterr()
    dpo.run(load_config(dpo.DPOConfig, None, [*args, "--resume", "false"]))  # a new run in the same folder
    assert len(count_reference) == 4  # train and held-out, computed again
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rlhfkit: warning")]
    assert len(warnings) == 1 and warnings[0].startswith(f"rlhfkit: warning: {cache} {what}")
    assert warnings[0].endswith("; computing the reference log-probs again")
    again = torch.load(cache, weights_only=True)["splits"]
    assert all(torch.equal(again[name], intact[name]) for name in intact)


@pytest.mark.parametrize("reference", ["cached", "lora"])
def test_initial_policy_has_zero_implicit_rewards(tmp_path, tiny_policy_dir, pair_file, reference):
    """Why the recipes report the accuracy before training as 1/2 without measuring it: the
    untrained policy is its reference (cached log-probs, or the adapter off with LoRA B = 0)."""
    from rlhfkit.models import apply_lora, load_policy
    from rlhfkit.training.distributed import DistInfo

    lora = ["--lora.r", "8"] if reference == "lora" else []
    cfg = load_config(
        dpo.DPOConfig, None, dpo_args(tiny_policy_dir, pair_file, tmp_path, "--reference", reference, *lora)
    )
    model, tok = load_policy(str(tiny_policy_dir), padding_side="right")
    records = dpo.load_pairs(cfg.data, cfg, "pairs")[0][:24]
    examples = dpo.encode_pairs(records, tok, cfg)
    if reference == "cached":
        dpo.cached_reference(cfg, model, {"eval": examples}, tok.pad_token_id, DistInfo())
    else:
        model = apply_lora(model, r=8, alpha=16, dropout=0.0, target_modules="all-linear")
    out = dpo.evaluate(model, examples, dpo.make_collate(tok.pad_token_id), cfg, reference)
    assert abs(out["eval_reward_chosen"]) < 1e-5 and abs(out["eval_reward_rejected"]) < 1e-5
    assert abs(out["eval_margin"]) < 1e-5


def test_dpo_lora_reference_learns_without_a_cache(tmp_path, tiny_policy_dir, pair_file):
    out = tmp_path / "lora"
    metrics = dpo.run(
        load_config(
            dpo.DPOConfig,
            None,
            dpo_args(
                tiny_policy_dir, pair_file, out, "--reference", "lora", "--lora.r", "8", "--learning_rate", "1e-2"
            ),
        )
    )
    assert metrics["eval_accuracy"] >= 0.8, metrics
    assert not (out / "reference_logps.pt").exists()


@pytest.mark.parametrize("loss", ["ipo", "cdpo", "simpo", "orpo"])
def test_other_losses_train(tmp_path, tiny_policy_dir, pair_file, loss):
    metrics = dpo.run(
        load_config(
            dpo.DPOConfig, None, dpo_args(tiny_policy_dir, pair_file, tmp_path, "--loss", loss, "--max_steps", "3")
        )
    )
    assert metrics["loss"] > 0 and "eval_accuracy" in metrics
    assert (tmp_path / "reference_logps.pt").exists() == (loss in ("ipo", "cdpo"))


def test_ties_dropped_or_kept_and_counted(tmp_path, tiny_policy_dir, pair_file):
    rows = [json.loads(l) for l in pair_file.read_text().splitlines()][:40]
    for r in rows[:10]:
        r["tie"] = True
    data = write_jsonl(tmp_path / "ties.jsonl", rows)
    for ties, train_pairs in (("drop", 30), ("keep", 40)):
        out = tmp_path / ties
        metrics = dpo.run(
            load_config(
                dpo.DPOConfig,
                None,
                dpo_args(
                    tiny_policy_dir,
                    data,
                    out,
                    "--ties",
                    ties,
                    "--eval_fraction",
                    "0",
                    "--max_steps",
                    "1",
                    "--batch_size",
                    "8",
                    "--micro_batch_size",
                    "8",
                ),
            )
        )
        assert metrics["ties_seen"] == 10 and metrics["ties_kept"] == (10 if ties == "keep" else 0)
        cache = torch.load(out / "reference_logps.pt", weights_only=True)
        assert cache["splits"]["train"].shape[0] == train_pairs
        assert (metrics["ties"] > 0) == (ties == "keep")


def test_kto_learns_from_thumbs(tmp_path, tiny_policy_dir, thumbs_file):
    cfg = load_config(
        KTOConfig,
        None,
        [
            "--model",
            str(tiny_policy_dir),
            "--data",
            str(thumbs_file),
            "--output_dir",
            str(tmp_path),
            "--epochs",
            "3",
            "--batch_size",
            "16",
            "--micro_batch_size",
            "8",
            "--learning_rate",
            "1e-2",
            "--beta",
            "0.5",
            "--eval_fraction",
            "0.25",
            *COMMON,
        ],
    )
    metrics = kto_run(cfg)
    assert metrics["eval_accuracy"] >= 0.8, metrics
    assert metrics["eval_reward_desirable"] > metrics["eval_reward_undesirable"]
    assert {"kl", "reward", "margin", "accuracy"} <= set(metrics)
    cache = torch.load(tmp_path / "reference_logps.pt", weights_only=True)
    assert cache["splits"]["train"].shape == (180, 2)  # matched and mismatched (KL) pair per example


def test_kto_from_pairs_with_lora_reference(tmp_path, tiny_policy_dir, pair_file):
    cfg = load_config(
        KTOConfig,
        None,
        [
            "--model",
            str(tiny_policy_dir),
            "--data",
            str(pair_file),
            "--output_dir",
            str(tmp_path),
            "--max_steps",
            "4",
            "--batch_size",
            "16",
            "--micro_batch_size",
            "8",
            "--learning_rate",
            "1e-2",
            "--reference",
            "lora",
            "--lora.r",
            "8",
            "--eval_fraction",
            "0.25",
            *COMMON,
        ],
    )
    metrics = kto_run(cfg)
    assert metrics["eval_examples"] == 80  # 40 held-out pairs, split into 2 examples each
    assert metrics["loss"] > 0 and not (tmp_path / "reference_logps.pt").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--loss", "simpo", "--reference", "cached"], "uses no reference"),
        (["--loss", "sigmoid", "--reference", "none"], "needs a reference"),
        (["--reference", "lora"], "--lora.r"),
        (["--loss", "kto"], "is not one of"),
        (["--max_length", "16", "--max_prompt_length", "16"], "max_length"),
    ],
)
def test_bad_config_gives_a_clear_error(capsys, args, message):
    assert main(["dpo", *args]) == 2
    assert message in capsys.readouterr().err


def test_dpo_sigkill_and_resume_gives_identical_weights(tmp_path, tiny_policy_dir, pair_file, capsys):
    # 120 training pairs / batch 16 = 7 steps per epoch, 14 in all; checkpoints every 4 steps.
    args = lambda out: [  # noqa: E731
        "dpo",
        *dpo_args(
            tiny_policy_dir,
            pair_file,
            out,
            "--micro_batch_size",
            "8",  # noqa: E731
            "--save_every",
            "4",
        ),
    ]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main(args(straight)) == 0
    r = run_cli(args(killed), kill_after=10)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-3000:])
    assert (killed / "checkpoint-8").is_dir() and not (killed / "model").exists()
    capsys.readouterr()
    assert main(args(killed)) == 0  # resumed in this process (one torch thread, like the CLI run)
    assert "reference log-probs: reused" in capsys.readouterr().out
    a, b = load_weights(straight / "model"), load_weights(killed / "model")
    for name in a:
        assert torch.equal(a[name], b[name]), name

    def losses(out):
        rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in rows if "loss" in r]

    assert losses(straight) == losses(killed) and len(losses(killed)) == 14


@pytest.mark.parametrize("lora", [False, True])
def test_response_only_logits_match_the_full_logits(tiny_policy_dir, lora):
    """sequence_logps runs the LM head on the scored positions only; the log-prob sums and their
    gradients equal those from the full [N, T, V] logits."""
    from transformers import AutoModelForCausalLM

    from rlhfkit.core.logprobs import token_logprobs
    from rlhfkit.models import apply_lora, position_ids_from_mask

    model = AutoModelForCausalLM.from_pretrained(tiny_policy_dir)
    if lora:
        model = apply_lora(model, r=4, alpha=8, dropout=0.0, target_modules="all-linear")
        for name, p in model.named_parameters():  # a non-zero adapter, so it matters
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1)
    assert dpo.decoder_and_head(model) is not None
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 250, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # right padding
    labels = torch.full_like(ids, -100)
    labels[0, 4:] = ids[0, 4:]
    labels[1, 6:9] = ids[1, 6:9]
    labels[2, 10:] = ids[2, 10:]

    sums, counts = dpo.sequence_logps(model, ids, mask, labels)
    sums.sum().backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    full = token_logprobs(logits[:, :-1], labels[:, 1:]).sum(-1)
    full.sum().backward()
    torch.testing.assert_close(sums, full, rtol=1e-5, atol=1e-5)
    assert counts.tolist() == [8, 3, 2]
    assert fast and all(
        torch.allclose(fast[n], p.grad, rtol=1e-4, atol=1e-6) for n, p in model.named_parameters() if p.grad is not None
    )


@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_changes_memory_not_the_result(tmp_path, tiny_policy_dir, pair_file, monkeypatch, lora):
    """Activation checkpointing recomputes each layer in the backward pass: the trained weights
    equal those of a run without it (dropout is off, so the recomputation is exact up to float
    rounding), and the layers really were checkpointed (the recompute runs)."""
    from transformers.models.llama import modeling_llama

    calls = []
    # inside a decoder layer (patching the layer's own forward would replace its checkpointing wrapper)
    original = modeling_llama.LlamaMLP.forward

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", counted)
    extra = ["--epochs", "1", *(["--lora.r", "4", "--reference", "lora"] if lora else [])]
    plain, checkpointed = tmp_path / "plain", tmp_path / "ckpt"
    assert main(["dpo", *dpo_args(tiny_policy_dir, pair_file, plain, *extra)]) == 0
    n_plain = len(calls)
    assert (
        main(["dpo", *dpo_args(tiny_policy_dir, pair_file, checkpointed, *extra, "--gradient_checkpointing", "true")])
        == 0
    )
    # every training forward of a layer runs again in the backward pass (evaluation does not)
    assert len(calls) - n_plain > n_plain, (n_plain, len(calls) - n_plain)
    a, b = load_weights(plain / "model"), load_weights(checkpointed / "model")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


def test_kto_mismatched_pairs_never_take_their_own_prompts_answer():
    """The KL sample of KTO's reference point pairs each prompt with the nearest earlier example of
    another prompt (rotating): prompts a a b b c c (a pair split into its chosen and rejected
    thumbs) pair with examples 5 5 1 1 3 3; one prompt alone falls back to the previous example."""
    from rlhfkit.data.records import ThumbsRecord
    from rlhfkit.models import tiny_tokenizer
    from rlhfkit.recipes.kto import encode_thumbs, mismatched_partners

    assert mismatched_partners(["a", "a", "b", "b", "c", "c"]) == [5, 5, 1, 1, 3, 3]
    assert mismatched_partners(["a", "a", "a"]) == [2, 0, 1]
    tok = tiny_tokenizer()
    records = [
        ThumbsRecord(p, c, good)
        for p, pair in (("the film", ("great fun", "dull")), ("a story", ("moving", "boring")))
        for c, good in zip(pair, (True, False))
    ]
    encoded = encode_thumbs(records, tok, KTOConfig(max_length=48, max_prompt_length=16), fixed_kl=True)
    for e, partner in zip(encoded, [3, 3, 1, 1]):
        other = encoded[partner]
        assert other["prompt_ids"] != e["prompt_ids"]
        assert e["seqs"][1] == e["prompt_ids"] + other["response_ids"]
