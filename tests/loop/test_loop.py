"""`rlhfkit loop` end to end on a tiny model: 2 rounds with in-process simulated labelers; resume
after a stage raises in round 2 (round 1 is not redone); labels from the feedback store given
by a simulated labeler thread through the store API. One torch thread."""

import json
import re
import threading
from pathlib import Path

import pytest

from rlhfkit.loop import run as loop_run
from rlhfkit.loop.layout import ROUND_STAGES
from rlhfkit.loop.rounds import Loop

from .. import kill_after_step
from .conftest import tiny_loop_config


def _stage(out, key):
    r, s = key.split("/")
    return json.loads((out / f"round-{r}" / s / "stage.json").read_text())


def test_two_rounds_end_to_end_with_simulated_labelers(tmp_path, loop_prompts):
    out = tmp_path / "loop"
    res = loop_run.run(tiny_loop_config(out, loop_prompts, selection="uncertainty"))
    keys = ["setup"] + [f"{r}/{s}" for r in (1, 2) for s in ROUND_STAGES]
    assert res["summary"]["ran"] == keys
    curve = json.loads((out / "curve.json").read_text())
    assert [p["labels"] for p in curve] == [0, 8, 16] and all(math_ok(p["gold"]) for p in curve)
    state = json.loads((out / "loop_state.json").read_text())
    assert state["status"] == "done" and state["rounds_done"] == 2
    assert state["policy"] == str(out / "round-2" / "policy" / "model")
    # round 1 selects at random (no ensemble yet); round 2 by the ensemble trained in round 1
    assert _stage(out, "1/select")["outputs"]["method"] == "random"
    sel2 = _stage(out, "2/select")["outputs"]
    assert sel2["method"] == "uncertainty" and sel2["mean_uncertainty_selected"] >= sel2["mean_uncertainty_all"]
    # round 2's candidates come from round 1's policy; the RM retrains on all 16 labels
    assert _stage(out, "2/candidates")["outputs"]["policy"] == str(out / "round-1" / "policy" / "model")
    assert len((out / "round-2" / "labels" / "all_pairs.jsonl").read_text().splitlines()) == 16
    assert len(_stage(out, "2/reward")["outputs"]["members"]) == 2
    ev = json.loads((out / "round-2" / "eval" / "eval.json").read_text())
    assert {"gold", "kl", "rm_accuracy", "labels"} <= set(ev)
    # the report: a row per round (and the initial policy), curves against labels, the last labels
    page = (out / "report.html").read_text()
    for title in (
        "Rounds",
        "Held-out gold score vs labels",
        "Ensemble accuracy on held-out pairs vs labels",
        "Uncertainty of the pairs sent to labelers",
        "Policy optimisation, all rounds",
        "Pairs labelled in round 2",
    ):
        assert title in page, title
    assert page.count("<svg") == 5 and page.count('<tr><td class="num">') == 3
    assert f"{curve[2]['gold']:.4f}" in page
    # label agreement with gold rests on the pairs the gold judge orders; ties are counted apart
    lab = _stage(out, "2/labels")["outputs"]
    labelled = [json.loads(x) for x in (out / "round-2" / "labels" / "labels.jsonl").read_text().splitlines()]
    decided = [x for x in labelled if x["gold_chosen"] != x["gold_rejected"]]
    assert (lab["agreement_pairs"], lab["gold_tie_pairs"]) == (len(decided), 8 - len(decided))
    if decided:
        assert lab["agreement_with_gold"] == pytest.approx(
            sum(x["gold_chosen"] > x["gold_rejected"] for x in decided) / len(decided)
        )
    assert f"of {lab['agreement_pairs']} ({lab['gold_tie_pairs']} ties)" in page
    assert not re.search(r"<script|<link|<img|src=|href=", page)


def math_ok(x):
    return x == x and abs(x) < 10


def test_resume_after_a_failure_in_round_2_does_not_redo_round_1(tmp_path, loop_prompts, monkeypatch):
    out = tmp_path / "loop"
    real = Loop.candidates

    def boom(self, r, d):
        if r == 2:
            raise RuntimeError("killed in round 2")
        return real(self, r, d)

    monkeypatch.setattr(Loop, "candidates", boom)
    with pytest.raises(RuntimeError, match="round 2"):
        loop_run.run(tiny_loop_config(out, loop_prompts, selection="random"))
    state = json.loads((out / "loop_state.json").read_text())
    assert (state["round"], state["stage"], state["status"]) == (2, "candidates", "running")
    first = {f"1/{s}": _stage(out, f"1/{s}") for s in ROUND_STAGES}
    monkeypatch.undo()
    res = loop_run.run(tiny_loop_config(out, loop_prompts, selection="random"))
    assert res["summary"]["skipped"] == ["setup"] + [f"1/{s}" for s in ROUND_STAGES]
    assert res["summary"]["ran"] == [f"2/{s}" for s in ROUND_STAGES]
    assert {k: _stage(out, k) for k in first} == first  # round 1 untouched
    assert _stage(out, "2/candidates")["runs"] == 2 and _stage(out, "2/candidates")["resumed"]
    # more rounds later: rounds 1-2 cached, round 3 runs
    res = loop_run.run(tiny_loop_config(out, loop_prompts, selection="random", rounds=3))
    assert res["summary"]["ran"] == [f"3/{s}" for s in ROUND_STAGES]


def test_labels_from_the_feedback_store_given_by_a_labeler_thread(tmp_path, loop_prompts):
    from rlhfkit.feedback import db
    from rlhfkit.feedback.auth import create_user
    from rlhfkit.feedback.queue import next_task, submit_label

    dbfile = tmp_path / "feedback.db"
    store = db.Store(str(dbfile))
    uid = store.write(lambda conn: create_user(conn, "sim", "a long enough password", "labeler"))
    stop = threading.Event()
    given = []

    def labeler():  # prefers the longer response, answering in screen terms like a person
        while not stop.is_set():
            task = store.write(lambda conn: next_task(conn, uid))
            if task is None:
                stop.wait(0.05)
                continue
            a, b = (r["text"] for r in task["responses"])
            choice = "A" if len(a) >= len(b) else "B"
            store.write(lambda conn: submit_label(conn, uid, task["task_id"], {"choice": choice}))
            given.append(task["task_id"])

    th = threading.Thread(target=labeler, daemon=True)
    th.start()
    try:
        out = tmp_path / "loop"
        res = loop_run.run(
            tiny_loop_config(
                out,
                loop_prompts,
                labeler="store",
                db=str(dbfile),
                poll_seconds=0.1,
                label_timeout=30,
                project_prefix="movie",
            )
        )
    finally:
        stop.set()
        th.join(5)
        store.close()
    assert len(given) == 16
    lab = _stage(out, "2/labels")["outputs"]
    assert lab["project"] == "movie-round-2" and lab["labels_received"] == 8 and lab["total_pairs"] == 16
    rows = [json.loads(x) for x in (out / "round-2" / "labels" / "all_pairs.jsonl").read_text().splitlines()]
    assert all(len(r["chosen"]) >= len(r["rejected"]) for r in rows)  # the labeler's verdicts, exported
    assert res["curve"][-1]["labels"] == 16


def test_store_labels_time_out_and_a_rerun_keeps_waiting(tmp_path, loop_prompts):
    out = tmp_path / "loop"
    cfg = tiny_loop_config(out, loop_prompts, labeler="store", poll_seconds=0.05, label_timeout=0.2, rounds=1)
    with pytest.raises(TimeoutError, match="0 of 8 labels"):
        loop_run.run(cfg)
    assert json.loads((out / "round-1" / "labels" / "stage.json").read_text())["status"] == "running"


def test_sigkill_mid_round_then_the_cli_rerun_resumes(tmp_path, loop_prompts):
    """`rlhfkit loop` SIGKILLed after the first optimiser step of round 1's reward ensemble; the
    rerun skips setup, candidates, select and labels and finishes both rounds."""
    import os
    import subprocess
    import sys

    from rlhfkit.loop.config import QUICK

    from .conftest import tiny_loop_config

    out = tmp_path / "loop"
    cfg = tiny_loop_config(out, loop_prompts)  # the same settings, written as YAML overrides
    args = [
        sys.executable,
        "-m",
        "rlhfkit.cli",
        "loop",
        "--threads",
        "1",
        "--output_dir",
        str(out),
        "--prompts",
        str(loop_prompts),
    ]
    for k in list(QUICK) + [
        "rounds",
        "n_eval_prompts",
        "max_train_prompts",
        "prompts_per_round",
        "labels_per_round",
        "eval_samples",
        "max_new_tokens",
        "ensemble_size",
        "init.hidden_size",
        "init.num_heads",
        "init.vocab_size",
        "reward.epochs",
        "reward.batch_size",
        "reward.micro_batch_size",
        "grpo.max_steps",
        "grpo.batch_size",
        "grpo.micro_batch_size",
        "grpo.max_new_tokens",
    ]:
        obj = cfg
        for part in k.split("."):
            obj = getattr(obj, part)
        args += [f"--{k}", str(obj)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RLHFKIT_NO_PROGRESS": "1"}
    killed = subprocess.run(kill_after_step.command(1, args[3:]), env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr[-2000:]
    state = json.loads((out / "loop_state.json").read_text())
    assert (state["round"], state["stage"], state["status"]) == (1, "reward", "running")
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    for s in ("setup", "round 1/candidates", "round 1/select", "round 1/labels"):
        assert f"loop: {s}: cached" in done.stdout
    assert "loop: round 1/reward: resuming" in done.stdout
    assert json.loads((out / "loop_state.json").read_text())["status"] == "done"


def test_active_run_started_from_the_random_runs_first_round_equals_one_run_alone(tmp_path, loop_prompts):
    """The comparison of selections shares setup and round 1 (random in both): the active loop
    skips them, leaves the random loop's records as they were, records its own paths, and ends
    with the curve of an active loop that computed everything itself."""
    rnd, shared, alone = tmp_path / "random", tmp_path / "active_shared", tmp_path / "active_alone"
    loop_run.run(tiny_loop_config(rnd, loop_prompts, selection="random"))
    before = {p: p.read_text() for p in rnd.rglob("stage.json")}
    assert loop_run.share_first_round(rnd, shared) == ["setup", "round-1"]
    res = loop_run.run(tiny_loop_config(shared, loop_prompts, selection="uncertainty"))
    assert res["summary"]["skipped"] == ["setup"] + [f"1/{s}" for s in ROUND_STAGES]
    assert res["summary"]["ran"] == [f"2/{s}" for s in ROUND_STAGES]
    assert {p: p.read_text() for p in rnd.rglob("stage.json")} == before
    assert _stage(shared, "1/policy")["outputs"]["model"] == str(shared / "round-1" / "policy" / "model")
    assert _stage(shared, "2/candidates")["outputs"]["policy"] == str(shared / "round-1" / "policy" / "model")
    assert str(rnd) not in json.dumps(_stage(shared, "1/reward"))
    # the files are the random loop's own (hard links), not copies
    model = next((rnd / "round-1" / "policy" / "model").glob("*.safetensors"))
    assert (shared / "round-1" / "policy" / "model" / model.name).stat().st_ino == model.stat().st_ino
    assert loop_run.share_first_round(rnd, shared) == []  # already there: left alone
    ref = loop_run.run(tiny_loop_config(alone, loop_prompts, selection="uncertainty"))
    assert ref["summary"]["ran"][:1] == ["setup"]
    assert json.loads((shared / "curve.json").read_text()) == json.loads((alone / "curve.json").read_text())


@pytest.mark.parametrize("anchor", ["round", "initial"])
def test_kl_anchor_sets_the_reference_of_later_rounds(tmp_path, loop_prompts, anchor):
    """Round 2 starts from round 1's policy; its first step's KL is 0 to itself (``round``) and
    the drift of round 1 to the initial policy (``initial``)."""
    out = tmp_path / anchor
    loop_run.run(tiny_loop_config(out, loop_prompts, selection="random", kl_anchor=anchor))
    first = json.loads((out / "round-2" / "policy" / "metrics.jsonl").read_text().splitlines()[0])
    if anchor == "round":
        assert abs(first["kl"]) < 1e-5
    else:
        assert first["kl"] > 1e-3


def test_kl_anchor_is_checked():
    from rlhfkit.loop.config import LoopConfig

    with pytest.raises(ValueError, match="kl_anchor"):
        LoopConfig(kl_anchor="sft").validate()


def test_share_first_round_takes_only_finished_folders_and_renames_whole_paths(tmp_path, monkeypatch):
    """Records written with relative paths, shared by absolute ones: every spelling of the random
    loop's folder is renamed, a longer name that starts the same is not, and a round with a
    stage still running is not shared (it would be resumed through the links)."""
    monkeypatch.chdir(tmp_path)

    def record(path, status, outputs):
        path.mkdir(parents=True)
        (path / "stage.json").write_text(json.dumps({"status": status, "outputs": outputs}))

    record(
        Path("runs/a/setup"),
        "done",
        {
            "model": "runs/a/setup/model",
            "sft": "runs/a_sft/model",
            "abs": str(tmp_path / "runs/a/setup/x"),
            "spec": "0.5*rm:runs/a/m0 + 0.5*rm:runs/a/m1",
        },
    )
    (Path("runs/a/setup/weights.bin")).write_bytes(b"w")
    record(Path("runs/a/round-1/candidates"), "done", {})
    record(Path("runs/a/round-1/policy"), "running", {})
    assert loop_run.share_first_round(tmp_path / "runs" / "a", Path("runs/b")) == ["setup"]
    assert not Path("runs/b/round-1").exists()
    out = json.loads(Path("runs/b/setup/stage.json").read_text())["outputs"]
    assert out == {
        "model": "runs/b/setup/model",
        "sft": "runs/a_sft/model",
        "abs": "runs/b/setup/x",
        "spec": "0.5*rm:runs/b/m0 + 0.5*rm:runs/b/m1",
    }
    assert json.loads(Path("runs/a/setup/stage.json").read_text())["outputs"]["model"] == "runs/a/setup/model"
    assert Path("runs/b/setup/weights.bin").stat().st_ino == Path("runs/a/setup/weights.bin").stat().st_ino


@pytest.mark.parametrize("damage", [b"\xff{}", b"[1, 2]", b'{"status": "do'])
def test_share_first_round_passes_over_a_folder_with_an_unreadable_record(tmp_path, damage):
    """A record that is not UTF-8, not a JSON object or truncated does not say ``done``: the folder
    is not shared (nothing is linked, no traceback)."""
    src = tmp_path / "a" / "setup"
    src.mkdir(parents=True)
    (src / "stage.json").write_bytes(damage)
    assert loop_run.share_first_round(tmp_path / "a", tmp_path / "b") == []
    assert not (tmp_path / "b" / "setup").exists()


def test_heldout_pairs_are_every_gold_ordered_pair_of_the_samples(tmp_path, loop_prompts):
    """``heldout_samples: 3``: up to 3 pairs per held-out prompt, each ordered by the gold judge."""
    from rlhfkit.rewards import build_reward

    out = tmp_path / "loop"
    # gold: the share of 'e' characters (VADER scores the tiny model's gibberish 0: no order)
    loop_run.run(
        tiny_loop_config(out, loop_prompts, selection="random", rounds=1, heldout_samples=3, gold="frequency:e")
    )
    pairs = [json.loads(l) for l in (out / "setup" / "heldout_pairs.jsonl").read_text().splitlines()]
    prompts = [json.loads(l)["prompt"] for l in (out / "setup" / "eval_prompts.jsonl").read_text().splitlines()]
    per_prompt = {p: sum(x["prompt"] == p for x in pairs) for p in prompts}
    assert max(per_prompt.values()) <= 3 and len(pairs) > len(prompts)
    gold = build_reward("frequency:e")
    sc = gold([x["prompt"] for x in pairs], [x["chosen"] for x in pairs])
    sr = gold([x["prompt"] for x in pairs], [x["rejected"] for x in pairs])
    assert bool((sc > sr).all())
    assert json.loads((out / "setup" / "stage.json").read_text())["outputs"]["heldout_pairs"] == len(pairs)


def test_an_existing_project_of_an_earlier_selection_is_refused(tmp_path):
    """A restart finds its round's project again; a project of that name made for other pairs
    (settings changed since) or another overlap is not taken for this round's."""
    from rlhfkit.feedback import db
    from rlhfkit.loop.labelers import ensure_project

    store = db.Store(str(tmp_path / "fb.db"))
    try:
        items = [
            {"id": "r2-p5", "prompt": "the film", "responses": ["was good", "was bad"]},
            {"id": "r2-p9", "prompt": "a story", "responses": ["of love", "of hate"]},
        ]
        pid = ensure_project(store, "loop-round-2", items, overlap=1)
        assert ensure_project(store, "loop-round-2", list(reversed(items)), overlap=1) == pid
        other = [items[0], {**items[1], "responses": ["of love", "of war"]}]
        with pytest.raises(ValueError, match="exists with other items or overlap"):
            ensure_project(store, "loop-round-2", other, overlap=1)
        with pytest.raises(ValueError, match="exists with other items or overlap"):
            ensure_project(store, "loop-round-2", items, overlap=2)
        with pytest.raises(ValueError, match="exists with other items or overlap"):
            ensure_project(store, "loop-round-2", items[:1], overlap=1)
    finally:
        store.close()


def test_a_restart_keeps_the_finished_rounds_in_the_state_and_does_not_nest_it(tmp_path, loop_prompts, monkeypatch):
    """The app's live generation follows ``rounds_done``: a restart (the way to keep waiting for
    labels) must not fall back to the initial policy, and the state file must not grow per run."""
    from rlhfkit.models.policy_line import current_policy

    out = tmp_path / "loop"
    loop_run.run(tiny_loop_config(out, loop_prompts, selection="random", rounds=1))
    first = json.loads((out / "loop_state.json").read_text())
    seen = []
    real = loop_run._write_state

    def spy(o, state):
        seen.append(current_policy(str(o)))
        real(o, state)

    monkeypatch.setattr(loop_run, "_write_state", spy)
    loop_run.run(tiny_loop_config(out, loop_prompts, selection="random", rounds=2))
    assert seen[0] == str(out / "round-1" / "policy" / "model")  # before anything reran
    state = json.loads((out / "loop_state.json").read_text())
    assert state["rounds_done"] == 2 and state["runs"] == 2 and first["runs"] == 1
    assert "previous" not in state["previous"] and len(json.dumps(state)) < 4 * len(json.dumps(first))


@pytest.mark.parametrize("damage", [lambda t: t[: len(t) // 2], lambda t: b"\xff" + t[1:]])
def test_an_unreadable_loop_state_is_started_afresh_with_a_warning(tmp_path, loop_prompts, capsys, damage):
    """loop_state.json truncated, or not UTF-8: the rerun says so in one line and goes on (the
    stages, skipped by fingerprint, give the finished rounds and the policy back)."""
    out = tmp_path / "loop"
    loop_run.run(tiny_loop_config(out, loop_prompts, selection="random", rounds=1))
    state_file = out / "loop_state.json"
    state_file.write_bytes(damage(state_file.read_bytes()))
    capsys.readouterr()
    res = loop_run.run(tiny_loop_config(out, loop_prompts, selection="random", rounds=1))
    assert res["summary"]["ran"] == []
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rlhfkit: warning")]
    assert len(warnings) == 1 and warnings[0].startswith(f"rlhfkit: warning: {state_file} is unreadable (")
    assert warnings[0].endswith(
        "); the loop starts its state afresh (finished stages are still skipped by fingerprint)"
    )
    state = json.loads(state_file.read_text())
    assert state["status"] == "done" and state["rounds_done"] == 1
    assert state["policy"] == str(out / "round-1" / "policy" / "model")


def test_a_conservative_ensemble_reward_drives_the_policy_rounds(tmp_path, loop_prompts):
    """``ensemble_reward: uwo=1`` gives each policy round the members combined as mean - variance
    (an ``ensemble:`` reward term over the round's members); the default ``mean`` keeps the
    weighted-sum spec and the stage fingerprints of loops run before the field existed."""
    from rlhfkit.loop.config import LoopConfig

    out = tmp_path / "uwo"
    loop_run.run(tiny_loop_config(out, loop_prompts, selection="random", rounds=1, ensemble_reward="uwo=1"))
    members = _stage(out, "1/reward")["outputs"]["members"]
    saved = (out / "round-1" / "policy" / "config.yaml").read_text()
    assert f"ensemble:uwo=1:{','.join(members)}" in saved
    assert _stage(out, "1/policy")["outputs"]["model"] == str(out / "round-1" / "policy" / "model")
    loop = Loop(tiny_loop_config(tmp_path / "mean", loop_prompts), tmp_path / "mean")
    loop.fps = {"setup": "s", "1/reward": "r"}
    assert "ensemble_reward" not in loop.spec(1, "policy")[0]
    with pytest.raises(ValueError, match="field 'ensemble_reward'"):
        LoopConfig(ensemble_reward="uwo=-2").validate()


def test_quick_leaves_the_command_lines_label_budget_alone(tmp_path, loop_prompts, capsys):
    """`loop --quick --labels_per_round 6`: round 1 selects 6 pairs, not quick's 16, and quick's
    reward batches of 16 fit the 6 labels; a reward batch given above the labels is refused before
    anything runs."""
    from rlhfkit.cli import main

    out = tmp_path / "loop"
    base = [
        "loop",
        "--quick",
        "--labels_per_round",
        "6",
        "--rounds",
        "1",
        "--prompts",
        str(loop_prompts),
        "--threads",
        "1",
        "--output_dir",
        str(out),
    ]
    assert main([*base, "--reward.batch_size", "8"]) == 2
    err = capsys.readouterr().err
    assert "field 'labels_per_round': 6 labels are fewer than one batch" in err and "reward.batch_size 8" in err
    assert not out.exists()
    assert main(base) == 0
    selected = (out / "round-1" / "select" / "selected.jsonl").read_text().splitlines()
    assert len(selected) == 6
    log = capsys.readouterr().out
    assert "labels_per_round = 6 (command line)" in log
    assert "reward.batch_size = 6 (quick's 16 fitted to the given labels_per_round)" in log
