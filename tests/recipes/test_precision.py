"""``precision: bf16``: forward passes in bfloat16 autocast with float32 master weights and a
float32 output head, in the supervised recipes (``fit``) and the online ones (hooks on the
policy, reference and value models); float32 runs (and their checkpoints and cached stages)
are unchanged."""

import json

import pytest
import torch

import rlhfkit.recipes.dpo as dpo
from rlhfkit.training.config import ConfigError, load_config
from rlhfkit.core.precision import autocast, keep_head_fp32, output_heads

from .conftest import load_weights
from .test_dpo_kto import dpo_args
from .test_resume_and_parallel import losses, sft_args


def test_head_runs_in_fp32_inside_autocast(tiny_policy_dir):
    from rlhfkit.models import load_policy

    model, _ = load_policy(str(tiny_policy_dir))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    inner = []
    model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, a, out: inner.append(out.dtype))
    with autocast("bf16"):
        assert model(ids).logits.dtype == torch.bfloat16  # autocast alone: the head makes bf16 logits
    assert keep_head_fp32(model) == ["Linear"] and keep_head_fp32(model) == ["Linear"]  # idempotent
    with autocast("bf16"):
        logits = model(ids).logits
        assert torch.is_autocast_enabled("cpu")  # restored after the head ran
    assert logits.dtype == torch.float32 and inner == [torch.bfloat16, torch.bfloat16]
    with torch.no_grad():
        exact = model(ids).logits
    # the rest of the network ran in bf16: close to float32, not equal
    assert 0 < (logits - exact).abs().max() < 0.05 * exact.abs().max()
    # the parameters and state_dict are untouched; with autocast off nothing changes
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with autocast("fp32"):
        assert torch.equal(model(ids).logits, exact)
    # a head that raises leaves autocast as it found it
    head = output_heads(model)[0]
    with autocast("bf16"):
        with pytest.raises(RuntimeError):
            head(torch.zeros(1, 3))
        assert torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        autocast("fp16")


def test_reward_model_score_head_is_found(tiny_encoder_rm_dir):
    from transformers import AutoModelForSequenceClassification

    rm = AutoModelForSequenceClassification.from_pretrained(tiny_encoder_rm_dir)
    assert [type(h).__name__ for h in output_heads(rm)] == [type(getattr(rm, "score", None) or rm.classifier).__name__]
    keep_head_fp32(rm)
    with autocast("bf16"):
        assert rm(torch.tensor([[5, 6, 7]])).logits.dtype == torch.float32


def test_sft_bf16_follows_fp32_and_saves_fp32(tmp_path, tiny_policy_dir, sft_file):
    from rlhfkit.recipes.sft import SFTConfig, run

    outs = {}
    for precision in ("fp32", "bf16"):
        out = outs[precision] = tmp_path / precision
        run(
            load_config(
                SFTConfig,
                None,
                sft_args(
                    tiny_policy_dir, sft_file, out, "--max_steps", "6", "--save_every", "3", "--precision", precision
                )[1:],
            )
        )
    a, b = losses(outs["fp32"]), losses(outs["bf16"])
    assert [s for s, _ in a] == [s for s, _ in b]
    for (_, la), (_, lb) in zip(a, b):  # the same run, rounded: within 2% at every step, not identical
        assert lb == pytest.approx(la, rel=0.02)
    assert any(la != lb for (_, la), (_, lb) in zip(a, b))
    weights = load_weights(outs["bf16"] / "model")
    assert all(w.dtype == torch.float32 for w in weights.values())
    # a float32 run's checkpoint fingerprint does not name the precision (checkpoints from before
    # the field resume), a bf16 one does, and resuming across precisions is refused
    states = {p: json.loads(next(outs[p].glob("checkpoint-*/trainer_state.json")).read_text())["config"] for p in outs}
    assert "precision" not in states["fp32"] and states["bf16"]["precision"] == "bf16"
    from rlhfkit.training.run_identity import check_resume_config

    fp32_checkpoint = next(outs["fp32"].glob("checkpoint-*"))
    check_resume_config(
        fp32_checkpoint,
        load_config(
            SFTConfig,
            None,
            sft_args(tiny_policy_dir, sft_file, outs["fp32"], "--max_steps", "6", "--save_every", "3")[1:],
        ),
    )
    with pytest.raises(ConfigError, match="precision: 'fp32' -> 'bf16'"):
        check_resume_config(
            fp32_checkpoint,
            load_config(
                SFTConfig,
                None,
                sft_args(
                    tiny_policy_dir,
                    sft_file,
                    outs["fp32"],
                    "--max_steps",
                    "6",
                    "--save_every",
                    "3",
                    "--precision",
                    "bf16",
                )[1:],
            ),
        )


def test_pipeline_fingerprint_names_precision_only_when_set():
    from rlhfkit.recipes.sft import SFTConfig
    from rlhfkit.training.run_identity import stage_settings

    assert "precision" not in stage_settings(SFTConfig())
    assert stage_settings(SFTConfig(precision="bf16"))["precision"] == "bf16"


def test_dpo_bf16_reference_cancels_at_step_zero(tmp_path, tiny_policy_dir, pair_file):
    """The cached reference is computed in the precision the policy runs in, so the untrained
    policy's implicit rewards are about 0, as in float32; a float32 reference under a bf16 policy
    would leave bf16's rounding in every reward."""
    from rlhfkit.models import load_policy
    from rlhfkit.training.distributed import DistInfo

    cfg = load_config(dpo.DPOConfig, None, dpo_args(tiny_policy_dir, pair_file, tmp_path, "--precision", "bf16"))
    model, tok = load_policy(str(tiny_policy_dir), padding_side="right")
    examples = dpo.encode_pairs(dpo.load_pairs(cfg.data, cfg, "pairs")[0][:24], tok, cfg)
    collate = dpo.make_collate(tok.pad_token_id)

    def rewards(precision_of_reference):
        ref_cfg = load_config(
            dpo.DPOConfig,
            None,
            dpo_args(
                tiny_policy_dir, pair_file, tmp_path / precision_of_reference, "--precision", precision_of_reference
            ),
        )
        dpo.cached_reference(ref_cfg, model, {"eval": examples}, tok.pad_token_id, DistInfo())
        keep_head_fp32(model)
        with autocast("bf16"):
            out = dpo.evaluate(model, examples, collate, cfg, "cached")
        return max(abs(out["eval_reward_chosen"]), abs(out["eval_reward_rejected"]))

    same, mixed = rewards("bf16"), rewards("fp32")
    # (the tiny model's logits are small, so bf16's rounding is too: 4e-5 here; SmolLM2's
    # sequence log-probs differ by about 0.20 nats between the two, docs/BENCHMARKS.md)
    assert same < 1e-7 and mixed > 1e-6, (same, mixed)
    # the two caches are told apart by their key
    assert (tmp_path / "bf16" / dpo.CACHE_FILE).is_file() and (tmp_path / "fp32" / dpo.CACHE_FILE).is_file()
    keys = {p: torch.load(tmp_path / p / dpo.CACHE_FILE, weights_only=True)["key"] for p in ("bf16", "fp32")}
    assert keys["bf16"] != keys["fp32"]


def test_an_unknown_precision_is_refused():
    from rlhfkit.recipes.grpo import GRPOConfig

    with pytest.raises(ConfigError, match="field 'precision': 'fp16' is not one of"):
        load_config(GRPOConfig, None, ["--precision", "fp16", "--reward", "vader"])


def test_reward_model_learns_in_bf16_with_a_linear_probe(tmp_path, tiny_encoder_rm_dir, pair_file):
    from rlhfkit.recipes.reward import RewardConfig
    from rlhfkit.recipes.reward import run as reward_run

    cfg = load_config(
        RewardConfig,
        None,
        [
            "--model",
            str(tiny_encoder_rm_dir),
            "--data",
            str(pair_file),
            "--output_dir",
            str(tmp_path / "rm"),
            "--epochs",
            "4",
            "--batch_size",
            "16",
            "--micro_batch_size",
            "16",
            "--learning_rate",
            "3e-3",
            "--eval_fraction",
            "0.25",
            "--max_length",
            "48",
            "--tensorboard",
            "false",
            "--linear_probe_steps",
            "50",
            "--precision",
            "bf16",
        ],
    )
    metrics = reward_run(cfg)
    assert metrics["eval_accuracy"] >= 0.9, metrics
    assert all(w.dtype == torch.float32 for w in load_weights(tmp_path / "rm" / "model").values())


@pytest.mark.parametrize("recipe", ["dpo", "kto"])
def test_preference_recipes_learn_in_bf16(tmp_path, tiny_policy_dir, pair_file, thumbs_file, recipe):
    from rlhfkit.recipes.kto import KTOConfig
    from rlhfkit.recipes.kto import run as kto_run

    from .test_dpo_kto import COMMON

    if recipe == "dpo":
        metrics = dpo.run(
            load_config(dpo.DPOConfig, None, dpo_args(tiny_policy_dir, pair_file, tmp_path, "--precision", "bf16"))
        )
    else:  # as test_kto_learns_from_thumbs, in bf16
        metrics = kto_run(
            load_config(
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
                    "--precision",
                    "bf16",
                ],
            )
        )
    assert metrics["eval_accuracy"] >= 0.8, metrics


def test_autocast_forward_hooks(tiny_policy_dir):
    """Every forward of a hooked model runs in bf16 autocast, wherever it is called from (its own
    call, ``generate``, a LoRA wrapper, a deep copy), the backward pass outside it, and the
    gradients land on the float32 weights."""
    import copy

    from rlhfkit.models import apply_lora, load_policy
    from rlhfkit.core.precision import autocast_forward

    model, tok = load_policy(str(tiny_policy_dir))
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        exact = model(ids).logits
    assert autocast_forward(model, "fp32") is False
    assert autocast_forward(model, "bf16") is True and autocast_forward(model, "bf16") is False  # once
    dtypes = []
    model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    out = model(ids).logits
    assert out.dtype == torch.float32 and dtypes == [torch.bfloat16] and not torch.is_autocast_enabled("cpu")
    assert 0 < (out - exact).abs().max() < 0.05 * exact.abs().max()
    out.sum().backward()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())
    model.zero_grad()
    dtypes.clear()
    model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert dtypes and set(dtypes) == {torch.bfloat16}
    twin = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(twin(ids).logits, model(ids).logits)
    dtypes.clear()
    wrapped = apply_lora(model, r=4, alpha=8, dropout=0.0, target_modules="all-linear")
    with torch.no_grad():
        wrapped(input_ids=ids)
    assert dtypes == [torch.bfloat16]


def _record_layer_dtypes(monkeypatch, seen: dict):
    """Record the dtype of a decoder layer's MLP output in the policy, reference and value model
    as the recipe builds them (the feature switched off would record float32)."""
    from rlhfkit.recipes import online_driver, ppo

    def watch(name, model):
        if model is not None:
            inner = getattr(model, "get_base_model", lambda: model)()
            layer = getattr(inner, inner.base_model_prefix).layers[0].mlp.down_proj
            layer.register_forward_hook(lambda m, a, out: seen.setdefault(name, set()).add(out.dtype))
        return model

    load_models, load_value_model = online_driver.load_models, ppo.load_value_model

    def models(config, need_reference):
        policy, tok, reference = load_models(config, need_reference)
        return watch("policy", policy), tok, watch("reference", reference)

    monkeypatch.setattr(online_driver, "load_models", models)
    monkeypatch.setattr(ppo, "load_value_model", lambda c, t: watch("value", load_value_model(c, t)))


def test_grpo_learns_in_bf16_and_starts_at_its_reference(tmp_path, tiny_policy_dir, prompt_file, monkeypatch):
    from .test_online_recipes import LEARN, run_inproc

    seen: dict = {}
    _record_layer_dtypes(monkeypatch, seen)
    rows = run_inproc(
        "grpo",
        tiny_policy_dir,
        prompt_file,
        tmp_path / "grpo",
        "--resume",
        "false",
        *LEARN["grpo"],
        "--kl_coef",
        "0.05",
        "--precision",
        "bf16",
    )
    assert seen == {"policy": {torch.bfloat16}, "reference": {torch.bfloat16}}
    r = [x["reward"] for x in rows]
    first, last = sum(r[:15]) / 15, sum(r[-15:]) / 15
    assert last > 2 * first and last - first > 0.04, (first, last)
    # the first rollout comes from the reference, computed in the same precision: KL 0
    assert abs(rows[0]["kl"]) < 1e-6
    assert all(w.dtype == torch.float32 for w in load_weights(tmp_path / "grpo" / "model").values())


def test_ppo_in_bf16_starts_with_ratio_one(tmp_path, tiny_policy_dir, prompt_file, monkeypatch):
    """PPO's behaviour log-probs (the rollout's teacher-forced pass) and the update's first pass
    are the same bf16 computation: at the first minibatch nothing is clipped and the approximate
    KL between them is 0 (one epoch, one minibatch: the only minibatch is the first). The policy,
    the reference and the value model (run as backbone + head by ``token_values``) all run bf16."""
    from .test_online_recipes import run_inproc

    seen: dict = {}
    _record_layer_dtypes(monkeypatch, seen)
    rows = run_inproc(
        "ppo",
        tiny_policy_dir,
        prompt_file,
        tmp_path / "ppo",
        "--resume",
        "false",
        "--max_steps",
        "3",
        "--ppo_epochs",
        "1",
        "--num_minibatches",
        "1",
        "--micro_batch_size",
        "16",
        "--precision",
        "bf16",
    )
    assert seen == {"policy": {torch.bfloat16}, "reference": {torch.bfloat16}, "value": {torch.bfloat16}}
    # exactly: the two passes see the same rows in one micro-batch, so the same bf16 numbers (a
    # behaviour pass left in float32 under a bf16 update gives about 1.4e-8 here)
    for row in rows:
        assert row["clipfrac"] == 0.0 and row["approx_kl"] == 0.0, row


def test_a_finished_run_is_not_taken_for_one_at_another_precision(tmp_path, tiny_policy_dir, sft_file):
    from rlhfkit.recipes.sft import SFTConfig, run

    def cfg(out, *extra):
        return load_config(SFTConfig, None, sft_args(tiny_policy_dir, sft_file, out, "--max_steps", "2", *extra)[1:])

    run(cfg(tmp_path / "a", "--precision", "bf16"))
    with pytest.raises(ConfigError, match="precision: 'bf16' -> 'fp32'"):
        run(cfg(tmp_path / "a"))
    run(cfg(tmp_path / "b"))
    saved = (tmp_path / "b" / "config.yaml").read_text()
    # a run finished before the field existed (no precision line) ran in float32
    (tmp_path / "b" / "config.yaml").write_text(
        "".join(l for l in saved.splitlines(True) if not l.startswith("precision"))
    )
    assert run(cfg(tmp_path / "b"))["eval_loss"] > 0  # the finished run, returned
    with pytest.raises(ConfigError, match="precision: 'fp32' -> 'bf16'"):
        run(cfg(tmp_path / "b", "--precision", "bf16"))


def test_an_interrupt_inside_a_wrapped_forward_leaves_autocast_as_it_was(tiny_policy_dir):
    from rlhfkit.models import load_policy
    from rlhfkit.core.precision import autocast_forward

    model, _ = load_policy(str(tiny_policy_dir))
    autocast_forward(model, "bf16")

    def interrupt(m, a, out):
        raise KeyboardInterrupt

    handle = model.model.layers[0].register_forward_hook(interrupt)
    with pytest.raises(KeyboardInterrupt):
        model(torch.tensor([[5, 6, 7]]))
    assert not torch.is_autocast_enabled("cpu")
    handle.remove()
    with autocast("bf16"):
        head = output_heads(model)[0]
        with pytest.raises(KeyboardInterrupt):
            head.register_forward_hook(interrupt)
            head(torch.zeros(1, 32))
        assert torch.is_autocast_enabled("cpu")


def test_native_sampler_follows_the_models_precision(tiny_policy_dir):
    """The native sampler (its own forward, no module calls) runs a bf16-hooked model in bf16 too,
    with float32 logits: its first-step logits match the hooked HF forward's, not float32's."""
    from rlhfkit.models import load_policy
    from rlhfkit.rollout import SamplingConfig, make_sampler
    from rlhfkit.core.precision import autocast_forward

    model, tok = load_policy(str(tiny_policy_dir))
    ids = torch.tensor([[5, 6, 7, 8, 9], [7, 7, 8, 9, 10]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        exact = model(ids, attention_mask=mask).logits[:, -1]
    autocast_forward(model, "bf16")
    with torch.no_grad():
        hooked = model(ids, attention_mask=mask).logits[:, -1]
    sampler = make_sampler(
        model, SamplingConfig(max_new_tokens=1, temperature=0.0), tok.eos_token_id, tok.pad_token_id, "native"
    )
    seen = []
    original = sampler._next_tokens
    sampler._next_tokens = lambda logits, g, rows=None: (seen.append(logits), original(logits, g, rows))[1]
    sampler.generate(model, ids, mask, seed=0)
    (native,) = seen
    assert native.dtype == torch.float32
    assert (native - hooked).abs().max() < 0.25 * (native - exact).abs().max(), (
        (native - hooked).abs().max(),
        (native - exact).abs().max(),
    )


@pytest.mark.parametrize("engine", ["native", "hf"])
def test_samplers_run_one_autocast_region_per_generation(tiny_policy_dir, engine):
    """Between the steps of a generation (where ``on_token`` is called) autocast stays on for a
    bf16 model, so its cache of bf16 weight copies lives across steps instead of being rebuilt for
    every token; a float32 model samples with autocast off."""
    from rlhfkit.models import load_policy
    from rlhfkit.rollout import SamplingConfig, make_sampler
    from rlhfkit.core.precision import autocast_forward

    model, tok = load_policy(str(tiny_policy_dir))
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    sampler = make_sampler(
        model, SamplingConfig(max_new_tokens=4, temperature=1.0), tok.eos_token_id, tok.pad_token_id, engine
    )
    for precision in ("fp32", "bf16"):
        autocast_forward(model, precision)
        between_steps = []
        sampler.generate(
            model,
            ids,
            torch.ones_like(ids),
            seed=0,
            on_token=lambda t: between_steps.append(torch.is_autocast_enabled("cpu")),
        )
        assert between_steps and set(between_steps) == {precision == "bf16"}, (precision, between_steps)
    assert not torch.is_autocast_enabled("cpu")
