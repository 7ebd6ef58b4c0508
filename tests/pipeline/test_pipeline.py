"""`rlhfkit pipeline`: stage caching by fingerprint, resume after an exception and after SIGKILL,
and the --quick preset end to end producing a self-contained report. Tiny models, one thread."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rlhfkit.pipeline import run as run_pipeline
from rlhfkit.pipeline import stages

from .. import kill_after_step
from ..conftest import REPO_ROOT, SHARED_DATA
from .conftest import tiny_config

ALL = ["init", "sft", "feedback", "reward", "policy", "eval", "report"]


def records(out: Path) -> dict:
    return {s: json.loads((out / s / "stage.json").read_text()) for s in ALL if (out / s / "stage.json").exists()}


def test_second_run_skips_every_stage_and_a_change_reruns_only_downstream(tmp_path, pipeline_data):
    out = tmp_path / "run"
    res = run_pipeline(tiny_config(out, pipeline_data, run_sft=True))
    assert res["summary"]["ran"] == ALL and res["summary"]["skipped"] == []
    first = records(out)
    assert all(r["status"] == "done" and r["runs"] == 1 for r in first.values())
    assert not list(out.glob("*/checkpoint-*"))  # cleaned once a stage is done

    # unchanged: every stage is read from its folder, nothing is touched
    res = run_pipeline(tiny_config(out, pipeline_data, run_sft=True))
    assert res["summary"]["ran"] == [] and res["summary"]["skipped"] == ALL
    assert records(out) == first

    # the reward model's settings change: reward and what reads it rerun; init, sft, feedback do not
    res = run_pipeline(tiny_config(out, pipeline_data, run_sft=True, **{"reward.warmup_ratio": 0.2}))
    assert res["summary"]["skipped"] == ["init", "sft", "feedback"]
    assert res["summary"]["ran"] == ["reward", "policy", "eval", "report"]
    after = records(out)
    for s in ("init", "sft", "feedback"):
        assert after[s] == first[s]
    for s in ("reward", "policy", "eval", "report"):
        assert after[s]["fingerprint"] != first[s]["fingerprint"] and after[s]["started"] > first[s]["finished"]

    # only the evaluation's settings change: only eval and report rerun
    res = run_pipeline(tiny_config(out, pipeline_data, run_sft=True, **{"reward.warmup_ratio": 0.2, "eval.seed": 1}))
    assert res["summary"]["ran"] == ["eval", "report"]


def test_editing_a_data_file_in_place_reruns_the_stages_that_read_it(tmp_path, pipeline_data):
    """Fingerprints carry what a path-valued setting holds, not only its name: new demonstrations
    in the same SFT file rerun SFT and everything after it, not init."""
    import shutil

    data = {k: tmp_path / v.name for k, v in pipeline_data.items()}
    for k, v in pipeline_data.items():
        shutil.copy(v, data[k])
    out = tmp_path / "run"
    run_pipeline(tiny_config(out, data, run_sft=True))
    with open(data["demos"], "a", encoding="utf-8") as f:
        f.write(json.dumps({"prompt": "a new demonstration", "completion": " of something else ."}) + "\n")
    res = run_pipeline(tiny_config(out, data, run_sft=True))
    assert res["summary"]["skipped"] == ["init"] and res["summary"]["ran"][0] == "sft"


def test_eval_every_counts_when_it_chooses_the_kept_weights():
    from rlhfkit.training.run_identity import stage_settings

    base = {"learning_rate": 1e-4, "eval_every": 10, "best_metric": ""}
    assert stage_settings(base) == stage_settings({**base, "eval_every": 50})  # only how often it is looked at
    chosen = {**base, "best_metric": "eval_accuracy"}
    assert stage_settings(chosen) != stage_settings({**chosen, "eval_every": 50})  # which checkpoints compete


def test_a_file_named_inside_a_nested_section_is_known_by_its_content(tmp_path):
    """An online stage's ``adversarial.demos`` (a nested section) is read like a top-level data
    file: editing it changes the stage's settings, so the stage reruns."""
    from rlhfkit.recipes.grpo import GRPOConfig
    from rlhfkit.training.run_identity import stage_settings

    demos = tmp_path / "demos.jsonl"
    demos.write_text('{"prompt": "p", "completion": "c"}\n')
    cfg = GRPOConfig()
    cfg.adversarial.demos, cfg.adversarial.discriminator = str(demos), str(tmp_path)
    before = stage_settings(cfg)
    assert before["adversarial"]["demos"]["value"] == str(demos)
    demos.write_text('{"prompt": "p", "completion": "another"}\n')
    assert stage_settings(cfg) != before
    # switched off, the section stays out of the settings (stages cached before it existed stay cached)
    assert "adversarial" not in stage_settings(GRPOConfig())


@pytest.mark.parametrize(
    "damage,what",
    [
        (lambda t: t[: len(t) // 2], "JSONDecodeError: "),
        (lambda t: b"\xff" + t[1:], "UnicodeDecodeError: "),
        (lambda t: b"[1, 2]", "a JSON list, not an object"),
    ],
)
def test_an_unreadable_stage_record_runs_the_stage_afresh_with_a_warning(tmp_path, capsys, damage, what):
    """stage.json truncated, not UTF-8 or not a JSON object: what it said is unknown, so the stage
    runs afresh in an emptied folder (as under other settings), saying so in one warning line."""
    from rlhfkit.pipeline.cache import run_stage

    stage = tmp_path / "reward"

    def produce(d):
        (d / "model.txt").write_text("weights")
        return {"model": str(d / "model.txt")}

    run_stage("reward", stage, "fp", produce, log=lambda m: None)
    (stage / "leftover.txt").write_text("from the earlier run")
    record = stage / "stage.json"
    record.write_bytes(damage(record.read_bytes()))
    capsys.readouterr()
    rec = run_stage("reward", stage, "fp", produce, log=lambda m: None)
    assert rec["ran"] and rec["status"] == "done" and rec["runs"] == 1 and not (stage / "leftover.txt").exists()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"rlhfkit: warning: {record} is unreadable ({what}")
    assert err[0].endswith("); stage reward runs afresh")
    assert json.loads(record.read_text())["status"] == "done"


def test_resume_after_a_stage_raises(tmp_path, pipeline_data, monkeypatch):
    out = tmp_path / "run"

    def boom(ctx, d):
        (d / "partial.txt").write_text("started")
        raise RuntimeError("evaluation interrupted")

    monkeypatch.setitem(stages.RUNNERS, "eval", boom)
    with pytest.raises(RuntimeError, match="interrupted"):
        run_pipeline(tiny_config(out, pipeline_data))
    rec = records(out)
    assert rec["eval"]["status"] == "running" and "report" not in rec
    done_before = {s: rec[s] for s in ("init", "feedback", "reward", "policy")}
    monkeypatch.undo()
    res = run_pipeline(tiny_config(out, pipeline_data))
    assert res["summary"]["skipped"] == ["init", "feedback", "reward", "policy"]
    assert res["summary"]["ran"] == ["eval", "report"]
    rec = records(out)
    assert rec["eval"]["status"] == "done" and rec["eval"]["resumed"] and rec["eval"]["runs"] == 2
    assert (out / "eval" / "partial.txt").exists()  # same fingerprint: resumed in place, not wiped
    assert {s: rec[s] for s in done_before} == done_before
    assert (out / "report.html").is_file()


def test_resume_after_sigkill_in_the_policy_stage(tmp_path, pipeline_data):
    """SIGKILL right after GRPO step 3 (checkpoint at step 2); the rerun skips the finished stages,
    resumes the policy stage from its checkpoint and finishes; every step is logged once."""
    out = tmp_path / "run"
    cfg = tmp_path / "p.yaml"
    cfg.write_text(
        f"feedback:\n  prompts: {pipeline_data['prompts']}\nreward:\n  max_steps: 2\n  tensorboard: false\n"
        "grpo:\n  tensorboard: false\neval:\n  n_boot: 50\n",
        encoding="utf-8",
    )
    cmd = [
        sys.executable,
        "-m",
        "rlhfkit.cli",
        "pipeline",
        "--config",
        str(cfg),
        "--quick",
        "--threads",
        "1",
        "--output_dir",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RLHFKIT_NO_PROGRESS": "1"}
    killed = subprocess.run(kill_after_step.command(3, cmd[3:]), env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    rec = records(out)
    assert rec["reward"]["status"] == "done" and rec["policy"]["status"] == "running"
    assert (out / "policy" / "checkpoint-2").is_dir()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pipeline: policy: resuming" in done.stdout
    assert "pipeline: reward: cached" in done.stdout
    last = done.stdout.rstrip().splitlines()[-1]  # the last line says where the report is
    assert last.startswith("pipeline: done in ") and last.endswith(f"report: {out / 'report.html'}")
    rec = records(out)
    assert rec["policy"]["status"] == "done" and rec["policy"]["resumed"] and rec["policy"]["runs"] == 2
    steps = [json.loads(line)["step"] for line in (out / "policy" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert (out / "report.html").is_file()


def test_a_setting_that_changes_no_result_may_change_when_a_killed_stage_resumes(tmp_path, pipeline_data):
    """``sample_every`` (how often the sample table is written) is left out of the policy stage's
    fingerprint, so after a SIGKILL a rerun with another value resumes the stage in its folder; the
    checkpoint it resumes from accepts the new value too (one list of result-free fields serves the
    stage fingerprint and the resume check)."""
    out = tmp_path / "run"
    cfg = tmp_path / "p.yaml"
    cfg.write_text(
        f"feedback:\n  prompts: {pipeline_data['prompts']}\nreward:\n  max_steps: 2\n  tensorboard: false\n"
        "grpo:\n  tensorboard: false\neval:\n  n_boot: 50\n",
        encoding="utf-8",
    )
    args = ["pipeline", "--config", str(cfg), "--quick", "--threads", "1", "--output_dir", str(out)]
    cmd = [sys.executable, "-m", "rlhfkit.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RLHFKIT_NO_PROGRESS": "1"}
    # killed after training step 3: the reward stage stops at 2, so GRPO's third step
    killed = subprocess.run(kill_after_step.command(3, args), env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert records(out)["policy"]["status"] == "running" and (out / "policy" / "checkpoint-2").is_dir()
    done = subprocess.run(cmd + ["--grpo.sample_every", "3"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pipeline: policy: resuming" in done.stdout
    rec = records(out)
    assert rec["policy"]["status"] == "done" and rec["policy"]["resumed"] and rec["policy"]["runs"] == 2
    # the table: step 2 from before the kill (every 2), steps 3 and 6 after it (every 3)
    steps = sorted({json.loads(line)["step"] for line in (out / "policy" / "samples.jsonl").read_text().splitlines()})
    assert steps == [2, 3, 6]


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real data folder {SHARED_DATA} is absent")
def test_quick_sentiment_preset_end_to_end_writes_a_self_contained_report(tmp_path):
    from rlhfkit.pipeline import PipelineConfig
    from rlhfkit.training.config import load_config

    out = tmp_path / "sentiment"
    config = load_config(
        PipelineConfig,
        REPO_ROOT / "configs" / "pipeline_sentiment.yaml",
        {"quick": True, "threads": 1, "output_dir": str(out), "eval.n_boot": 100},
    )
    res = run_pipeline(config)
    assert res["summary"]["ran"] == ["init", "feedback", "reward", "policy", "eval", "report"]
    assert (out / "init" / "model" / "config.json").is_file()  # the tiny model, built from config
    ev = json.loads((out / "eval" / "eval.json").read_text())
    assert {"win_rate", "gold", "kl"} <= set(ev) and ev["gold"]["judge"] == "vader"
    toks = [json.loads(l) for l in (out / "eval" / "token_samples.jsonl").read_text().splitlines()]
    assert len(toks) == 6
    for t in toks:
        assert len(t["tokens"]) == len(t["kl"]) == len(t["reward"]) > 0
        # shaped reward = -beta * KL per token, plus the RM score on the last token (hand-checked)
        beta = t["kl_coef"]
        for k, r in zip(t["kl"][:-1], t["reward"][:-1]):
            assert r == pytest.approx(-beta * k, abs=1e-4)
        assert t["reward"][-1] == pytest.approx(-beta * t["kl"][-1] + t["score"], abs=1e-4)
        assert t["seq_kl"] == pytest.approx(sum(t["kl"]), abs=1e-3)
    page = (out / "report.html").read_text()
    for title in (
        "Reward during training",
        "Gold judge during training",
        "KL to the reference during training",
        "Win rate of the policy vs the reference",
        "Reward-model calibration",
        "token by token",
    ):
        assert title in page
    assert page.count("<svg") >= 6
    assert "k3 estimate (never negative)" in page  # beside the k1 KL, which can be negative on few prompts
    assert len(re.findall(r'class="tok reward" style="background:rgba\(', page)) >= sum(len(t["tokens"]) for t in toks)
    assert len(re.findall(r'class="tok kl" style="background:rgba\(', page)) >= sum(len(t["tokens"]) for t in toks)
    # self-contained: nothing fetched from anywhere (no scripts, stylesheets, images or links)
    assert not re.search(r"<script|<link|<img|src=|href=|url\(|@import", page)


@pytest.mark.shared_data
def test_quick_hh_preset_learns_from_the_human_pairs_and_reports_rm_win_rate_and_toxicity(tmp_path, shared_data):
    """The HH-RLHF preset (real human preferences from ../shared/data), --quick sizes: a reward
    model on the human pairs, DPO on them, and the report's reward-model win rate and toxicity
    (lower is better) of the policy against the reference on the held-out dialogues."""
    from rlhfkit.pipeline import PipelineConfig
    from rlhfkit.training.config import load_config

    out = tmp_path / "hh"
    config = load_config(
        PipelineConfig,
        REPO_ROOT / "configs" / "pipeline_hh.yaml",
        {"quick": True, "threads": 1, "output_dir": str(out), "eval.n_boot": 100},
    )
    res = run_pipeline(config)
    assert res["summary"]["ran"] == ["init", "feedback", "reward", "policy", "eval", "report"]
    fb = json.loads((out / "feedback" / "stage.json").read_text())["outputs"]
    assert fb["source"] == "dataset" and fb["pairs"] > 0 and fb["heldout_pairs"] > 0
    ev = json.loads((out / "eval" / "eval.json").read_text())
    assert ev["judge"].startswith("rm:") and ev["win_rate"]["n"] == ev["prompts"] == 16
    gold = ev["gold"]
    assert gold["judge"] == "toxicity" and gold["lower_is_better"]
    # the gold win rate counts the policy's less toxic answers (not the more toxic ones)
    samples = [json.loads(l) for l in (out / "eval" / "samples.jsonl").read_text().splitlines()]
    less = sum(s["gold_policy"] < s["gold_reference"] for s in samples)
    assert gold["win_rate"]["wins"] == less
    page = (out / "report.html").read_text()
    assert "toxicity, lower is better" in page and "win rate vs reference (judge: reward model)" in page


def test_simulated_rankings_expand_to_all_pairs_and_hold_out_whole_prompts(tmp_path, pipeline_data):
    """num_candidates = 3: each prompt's three samples get one noisy score each and become up to
    three pairs, every pair consistent with that one ranking; held-out pairs never share a prompt
    with a training pair. With zero noise every pair is ordered by the gold judge."""
    from rlhfkit.pipeline.config import apply_quick
    from rlhfkit.pipeline.context import Context

    config = tiny_config(tmp_path / "run", pipeline_data, **{"feedback.label_noise": 0.0})
    apply_quick(config)
    config.feedback.num_candidates = 3
    config.feedback.max_pairs = 0
    ctx = Context(config=config, out=tmp_path / "run")
    for stage in ("init", "feedback"):
        ctx.dir(stage).mkdir(parents=True)
        ctx.outputs[stage] = stages.RUNNERS[stage](ctx, ctx.dir(stage))
    fb = ctx.dir("feedback")
    chunks = [json.loads(l) for p in sorted((fb / "chunks").glob("*.jsonl")) for l in p.read_text().splitlines()]
    by_prompt: dict[str, list] = {}
    for r in chunks:
        by_prompt.setdefault(r["prompt"], []).append(r)
    assert max(len(v) for v in by_prompt.values()) == 3  # 3 samples -> 3 pairs where all differ
    assert all(len(v) <= 3 for v in by_prompt.values())
    assert all(r["gold_chosen"] >= r["gold_rejected"] for r in chunks)  # noise 0: the gold order
    for rows in by_prompt.values():  # one ranking per prompt: the preference graph has no cycle
        beats = {(r["chosen"], r["rejected"]) for r in rows}
        assert not any((b, a) in beats for a, b in beats)
    train = {json.loads(l)["prompt"] for l in (fb / "pairs.jsonl").read_text().splitlines()}
    held = {json.loads(l)["prompt"] for l in (fb / "heldout_pairs.jsonl").read_text().splitlines()}
    assert train and held and not train & held
    assert ctx.outputs["feedback"]["pairs"] + ctx.outputs["feedback"]["heldout_pairs"] == len(chunks)
    # the agreement figure rests on the pairs whose gold scores differ; with noise 0 they all agree
    ties = sum(r["gold_chosen"] == r["gold_rejected"] for r in chunks)
    out = ctx.outputs["feedback"]
    assert out["gold_tie_pairs"] == ties and out["labeler_agreement_pairs"] == len(chunks) - ties
    assert out["labeler_agreement_with_gold"] == (1.0 if len(chunks) > ties else None)

    config.feedback.num_candidates = 1  # no pair to judge: refused when the config is checked
    with pytest.raises(ValueError, match="feedback.num_candidates"):
        config.validate()


def test_dataset_pairs_are_held_out_by_prompt(tmp_path, pipeline_data):
    """Imported pairs with repeated prompts (one pair labelled by three people, exported a record
    per label with each one's labeler id): no held-out pair shares its prompt, and so no pair, with
    the training pairs."""
    from rlhfkit.pipeline.config import apply_quick
    from rlhfkit.pipeline.context import Context

    rows = [
        {
            "prompt": f"question {i}",
            "chosen": f"good answer {i}",
            "rejected": f"bad answer {i}",
            "labeler": f"labeler-{k}",
        }
        for i in range(40)
        for k in range(3)
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = tiny_config(
        tmp_path / "run",
        pipeline_data,
        **{"feedback.source": "dataset", "feedback.data": str(data), "feedback.max_pairs": 0, "feedback.prompts": ""},
    )
    apply_quick(config)
    config.feedback.max_pairs = 0
    ctx = Context(config=config, out=tmp_path / "run")
    ctx.dir("feedback").mkdir(parents=True)
    out = stages.RUNNERS["feedback"](ctx, ctx.dir("feedback"))
    train = [json.loads(l) for l in (ctx.dir("feedback") / "pairs.jsonl").read_text().splitlines()]
    held = [json.loads(l) for l in (ctx.dir("feedback") / "heldout_pairs.jsonl").read_text().splitlines()]
    assert out["pairs"] + out["heldout_pairs"] == 120 and held
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    assert all(sum(r["prompt"] == p for r in held) == 3 for p in {r["prompt"] for r in held})


def test_a_stage_record_holds_its_cpu_time_beside_its_wall_time(tmp_path):
    """``cpu_seconds`` counts the process's CPU time in the stage, not the time it waited: a
    stage that computes for 0.2 CPU-seconds and sleeps 0.3 s records about 0.2 and at least 0.5."""
    import time

    from rlhfkit.pipeline.cache import run_stage

    def busy_then_asleep(d):
        t = time.process_time()
        while time.process_time() - t < 0.2:
            pass
        time.sleep(0.3)
        return {}

    rec = run_stage("eval", tmp_path / "eval", "f" * 64, busy_then_asleep, log=lambda s: None)
    assert rec["seconds"] >= 0.5
    assert 0.2 <= rec["cpu_seconds"] < 0.3
    assert json.loads((tmp_path / "eval" / "stage.json").read_text())["cpu_seconds"] == rec["cpu_seconds"]


def test_quick_leaves_a_command_line_setting_alone(tmp_path, pipeline_data, capsys):
    """`pipeline --quick --grpo.max_steps 2`: quick sizes the other fields (a tiny model built
    from config, its GRPO learning rate), the policy trains the 2 steps the command line asked for, and
    the log names what quick set and what it left as given."""
    from rlhfkit.cli import main

    out = tmp_path / "run"
    assert (
        main(
            [
                "pipeline",
                "--quick",
                "--grpo.max_steps",
                "2",
                "--threads",
                "1",
                "--output_dir",
                str(out),
                "--feedback.prompts",
                str(pipeline_data["prompts"]),
                "--eval.n_boot",
                "50",
                "--reward.tensorboard",
                "false",
                "--grpo.tensorboard",
                "false",
            ]
        )
        == 0
    )
    steps = [json.loads(line)["step"] for line in (out / "policy" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert (out / "init" / "model" / "config.json").is_file()  # quick's tiny model
    log = capsys.readouterr().out
    quick_line = next(line for line in log.splitlines() if line.startswith("pipeline: --quick set"))
    assert "init.kind" in quick_line and "grpo.learning_rate" in quick_line
    assert quick_line.endswith("left 2 as given: grpo.max_steps = 2 (command line), eval.n_boot = 50 (command line)")


def test_quick_shrinks_a_full_size_preset_but_not_a_file_that_says_quick(tmp_path):
    """--quick over configs/pipeline_sentiment.yaml (a full-size preset: 30 GRPO steps of
    SmolLM2) gives quick's sizes; a file that itself says quick: true keeps its own values."""
    from rlhfkit.pipeline import PipelineConfig
    from rlhfkit.pipeline.config import QUICK, apply_quick
    from rlhfkit.training.config import load_config

    config = load_config(PipelineConfig, REPO_ROOT / "configs" / "pipeline_sentiment.yaml", ["--quick"])
    assert config.grpo.max_steps == 30 and config.init.kind == "pretrained"
    changed, kept = apply_quick(config)
    assert kept == {} and "grpo.max_steps" in changed
    assert config.grpo.max_steps == QUICK["grpo.max_steps"] and config.init.kind == "tiny"
    assert config.reward.model == "init"

    own = tmp_path / "quick.yaml"
    own.write_text("quick: true\ngrpo:\n  max_steps: 2\nreward:\n  model: minilm-l6\n", encoding="utf-8")
    config = load_config(PipelineConfig, own, {"output_dir": str(tmp_path / "o")})
    changed, kept = apply_quick(config)
    assert kept == {"reward.model": "file", "grpo.max_steps": "file"}
    assert config.grpo.max_steps == 2 and config.reward.model == "minilm-l6" and config.init.kind == "tiny"
