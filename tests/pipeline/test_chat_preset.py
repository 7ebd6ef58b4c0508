"""The default preset (configs/pipeline_chat.yaml): real first turns of chat conversations,
rendered with the policy's chat template in every stage that samples the policy, sampled alike
there, the ``friendly`` gold judge; tiny models, one thread."""

import json
from pathlib import Path

import pytest
import torch

from rlhfkit.pipeline import run as run_pipeline

from ..conftest import REPO_ROOT, SHARED_DATA
from .conftest import tiny_config


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_the_chat_preset_is_the_default():
    from rlhfkit.pipeline import PipelineConfig
    from rlhfkit.training.config import load_config

    preset = load_config(PipelineConfig, REPO_ROOT / "configs" / "pipeline_chat.yaml", {})
    assert preset == PipelineConfig()
    assert (preset.feedback.prompts, preset.gold, preset.chat_template) == ("chat-first-turns", "friendly", True)


def test_every_sampling_stage_renders_the_chat_template_and_samples_alike(tmp_path, pipeline_data):
    """With ``chat_template`` the labelers' samples, the GRPO run, the evaluation's replies and its
    per-token shading all render a prompt as one user turn through the policy's chat template and
    sample at the same temperature, top-k and nucleus: the stored replies are those of
    ``rollout(chat_template=True)`` for their seeds, not those of the prompt as plain text."""
    from rlhfkit.eval.cli_eval import EvalConfig, _sample_model
    from rlhfkit.models import load_policy
    from rlhfkit.rollout import SamplingConfig, make_sampler, rollout, step_seed

    out = tmp_path / "run"
    config = tiny_config(out, pipeline_data, clean_checkpoints=False)
    assert config.chat_template and (config.feedback.temperature, config.feedback.top_p, config.feedback.top_k) == (
        0.7,
        0.9,
        50,
    )
    run_pipeline(config)
    model, tok = load_policy(str(out / "init" / "model"))
    fb = config.feedback
    sampling = SamplingConfig(
        max_new_tokens=fb.max_new_tokens, temperature=fb.temperature, top_p=fb.top_p, top_k=fb.top_k
    )
    gen = make_sampler(model, sampling, tok.eos_token_id, tok.pad_token_id)

    # feedback: every labelled text of the first chunk is one of the chat-rendered candidates
    labelled = _jsonl(out / "feedback" / "chunks" / "00000.jsonl")
    batch = [r["prompt"] for r in _jsonl(out / "feedback" / "train_prompts.jsonl")][: fb.batch_size]

    def candidates(chat: bool) -> dict[str, set]:
        texts: dict[str, set] = {p: set() for p in batch}
        for salt in (11, 12):  # quick: 2 candidates
            with torch.no_grad():
                ro = rollout(
                    gen,
                    model,
                    tok,
                    batch,
                    seed=step_seed(fb.seed, 0, salt=salt),
                    chat_template=chat,
                    behaviour_logprobs=False,
                )
            for p, r in zip(batch, ro.responses):
                texts[p].add(r)
        return texts

    chat, plain = candidates(True), candidates(False)
    assert labelled and all({r["chosen"], r["rejected"]} <= chat[r["prompt"]] for r in labelled)
    assert not all({r["chosen"], r["rejected"]} <= plain[r["prompt"]] for r in labelled)

    # policy: the GRPO run was configured with the template and the same sampling
    ckpt = sorted((out / "policy").glob("checkpoint-*"))[-1]
    run_config = json.loads((ckpt / "trainer_state.json").read_text())["config"]
    assert run_config["chat_template"] is True
    assert (run_config["temperature"], run_config["top_p"], run_config["top_k"], run_config["max_new_tokens"]) == (
        0.7,
        0.9,
        50,
        fb.max_new_tokens,
    )

    # evaluation: the reference's replies are the chat-rendered ones for the evaluation's seed
    samples = _jsonl(out / "eval" / "samples.jsonl")
    prompts = [s["prompt"] for s in samples]
    ev = config.eval
    for chat_template, same in ((True, True), (False, False)):
        c = EvalConfig(
            **{
                **{
                    k: getattr(ev, k)
                    for k in (
                        "max_new_tokens",
                        "temperature",
                        "top_p",
                        "top_k",
                        "batch_size",
                        "max_prompt_length",
                        "seed",
                    )
                },
                "chat_template": chat_template,
            }
        )
        _, _, ros = _sample_model(str(out / "init" / "model"), prompts, c, salt=2, logprobs=False)
        assert ([r for ro in ros for r in ro.responses] == [s["reference"] for s in samples]) is same
        if same:  # a reply without EOS is marked as cut
            assert [bool(e) for ro in ros for e in ro.has_eos] == [s["reference_ended"] for s in samples]

    # per-token shading: the policy's replies to the first prompts, chat-rendered, seed salt 31
    toks = _jsonl(out / "eval" / "token_samples.jsonl")
    policy, ptok = load_policy(str(out / "policy" / "model"))
    pgen = make_sampler(
        policy,
        SamplingConfig(max_new_tokens=ev.max_new_tokens, temperature=ev.temperature, top_p=ev.top_p, top_k=ev.top_k),
        ptok.eos_token_id,
        ptok.pad_token_id,
    )
    with torch.no_grad():
        ro = rollout(
            pgen,
            policy,
            ptok,
            [t["prompt"] for t in toks],
            seed=step_seed(ev.seed, 0, salt=31),
            max_prompt_length=ev.max_prompt_length,
            chat_template=True,
            behaviour_logprobs=False,
        )
    assert ro.responses == [t["response"] for t in toks]


def test_stages_that_would_sample_differently_are_refused():
    from rlhfkit.pipeline import PipelineConfig
    from rlhfkit.training.config import ConfigError, load_config

    with pytest.raises(
        ConfigError, match=r"field 'top_p' differs .*feedback.top_p 0.9, grpo.top_p 1.0, eval.top_p 0.9"
    ):
        load_config(PipelineConfig, None, {"grpo.top_p": 1.0})
    with pytest.raises(ConfigError, match=r"field 'max_new_tokens' differs .*eval.max_new_tokens 64"):
        load_config(PipelineConfig, None, {"eval.max_new_tokens": 64})
    # set together: accepted; a section that does not sample (ppo while grpo runs) is not compared
    ok = load_config(
        PipelineConfig,
        None,
        {"feedback.temperature": 1.0, "grpo.temperature": 1.0, "eval.temperature": 1.0, "ppo.temperature": 0.3},
    )
    assert ok.grpo.temperature == 1.0
    with pytest.raises(ConfigError, match="field 'chat_template': dpo tokenises the pairs' prompts as plain text"):
        load_config(PipelineConfig, None, {"algorithm": "dpo"})
    assert load_config(PipelineConfig, None, {"algorithm": "dpo", "chat_template": False}).algorithm == "dpo"
    for preset in ("pipeline_sentiment.yaml", "pipeline_hh.yaml"):
        for algorithm in ("grpo", "ppo", "rloo"):  # every preset runs every online algorithm as it is
            load_config(PipelineConfig, REPO_ROOT / "configs" / preset, {"algorithm": algorithm})


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real data folder {SHARED_DATA} is absent")
def test_quick_chat_preset_end_to_end(tmp_path, capsys):
    """`rlhfkit pipeline --quick`, the README's command at quick sizes (the embedded default, no
    --config), on the real chat prompts: the report shows the replies side by side with the
    friendly gold judge and how they were sampled, and the last line says where it is."""
    from rlhfkit.cli import main
    from rlhfkit.data.shared_sets import load_chat_prompts

    out = tmp_path / "chat"
    assert main(["pipeline", "--quick", "--threads", "1", "--output_dir", str(out), "--eval.n_boot", "100"]) == 0
    last = capsys.readouterr().out.rstrip().splitlines()[-1]
    assert last.startswith("pipeline: done in ") and last.endswith(f"report: {out / 'report.html'}")
    summary = json.loads((out / "pipeline.json").read_text())
    assert summary["name"] == "chat"
    assert summary["ran"] == ["init", "feedback", "reward", "policy", "eval", "report"]
    pool = {p.prompt for p in load_chat_prompts()}
    train = [r["prompt"] for r in _jsonl(out / "feedback" / "train_prompts.jsonl")]
    held = [r["prompt"] for r in _jsonl(out / "feedback" / "eval_prompts.jsonl")]
    assert len(held) == 16 and set(train) | set(held) <= pool and not set(train) & set(held)
    fb = json.loads((out / "feedback" / "stage.json").read_text())["outputs"]
    assert fb["labeler"] == "friendly"
    ev = json.loads((out / "eval" / "eval.json").read_text())
    assert ev["gold"]["judge"] == "friendly" and not ev["gold"]["lower_is_better"]
    samples = _jsonl(out / "eval" / "samples.jsonl")
    assert all(isinstance(s["policy_ended"], bool) and isinstance(s["reference_ended"], bool) for s in samples)
    page = (out / "report.html").read_text()
    assert "Held-out replies: before (reference) and after (policy)" in page
    assert "Prompts (chat-first-turns): each sent as one user turn through the policy's chat template" in page
    assert "gold (friendly)" in page


def test_a_pretrained_folder_is_used_as_it_is(tmp_path):
    from rlhfkit.models import tiny_causal_lm, tiny_tokenizer
    from rlhfkit.pipeline.stages import _materialise_gguf

    tok = tiny_tokenizer(vocab_size=300)
    folder = tmp_path / "policy"
    tiny_causal_lm(tok, hidden_size=32, num_layers=1, num_heads=2).save_pretrained(folder)
    tok.save_pretrained(folder)
    assert _materialise_gguf(str(folder), tmp_path / "init" / "model") == {"model": str(folder)}
    assert not (tmp_path / "init").exists()


@pytest.mark.slow
@torch.no_grad()
def test_the_init_stage_dequantises_the_gguf_policy_once_into_an_equal_folder(tmp_path):
    """SmolLM2 from its GGUF file and from the folder the init stage saves: the same weights,
    vocabulary, pad / EOS tokens and chat template, so the same reply for the same seed."""
    from rlhfkit.models import SMOLLM2_ALIAS, load_policy
    from rlhfkit.pipeline.stages import _materialise_gguf
    from rlhfkit.rollout import SamplingConfig, make_sampler, rollout

    out = _materialise_gguf(SMOLLM2_ALIAS, tmp_path / "model")
    assert out == {"model": str(tmp_path / "model"), "source": SMOLLM2_ALIAS}
    (a, ta), (b, tb) = load_policy(SMOLLM2_ALIAS), load_policy(out["model"])
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert ta.get_vocab() == tb.get_vocab()
    assert (ta.pad_token_id, ta.eos_token_id) == (tb.pad_token_id, tb.eos_token_id)
    turn = [{"role": "user", "content": "How do I boil an egg?"}]
    assert ta.apply_chat_template(turn, tokenize=False, add_generation_prompt=True) == tb.apply_chat_template(
        turn, tokenize=False, add_generation_prompt=True
    )
    replies = []
    for model, tok in ((a, ta), (b, tb)):
        gen = make_sampler(
            model, SamplingConfig(max_new_tokens=16, temperature=0.7, top_p=0.9), tok.eos_token_id, tok.pad_token_id
        )
        replies.append(rollout(gen, model, tok, ["How do I boil an egg?"], seed=5, chat_template=True).response_ids)
    assert torch.equal(replies[0], replies[1])
