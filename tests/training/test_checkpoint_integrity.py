"""Checkpoint integrity: a manifest (size and sha256 of every file, written last) is checked on
resume; a damaged checkpoint is passed over for the newest intact one with a one-line warning,
and no intact checkpoint is a CheckpointError naming the folder and the damage."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

from rlhfkit.training.checkpoint import (
    MANIFEST,
    CheckpointError,
    checkpoint_problem,
    latest_intact_checkpoint,
    list_checkpoints,
    load_checkpoint,
    resume_checkpoint,
    save_checkpoint,
)

from ..conftest import flip_tensor_bit


def write_two(out, manifest=True):
    """checkpoint-1 and checkpoint-2 of a tiny model with AdamW and a scheduler; without
    `manifest`, as an rlhfkit from before manifests wrote them."""
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    for step in (1, 2):
        model(torch.randn(3, 6)).sum().backward()
        opt.step()
        sched.step()
        ckpt = save_checkpoint(out, step, model, opt, sched, {"epoch": 0})
        if not manifest:
            unmanifest(ckpt)
    return model, opt


def unmanifest(ckpt):
    """`ckpt` as an rlhfkit from before manifests wrote it: no manifest.json, and a
    trainer_state.json that does not name one."""
    (ckpt / MANIFEST).unlink()
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state.pop("manifest") == MANIFEST
    (ckpt / "trainer_state.json").write_text(json.dumps(state, indent=1))


def test_manifest_holds_size_and_sha256_of_every_file(tmp_path):
    write_two(tmp_path)
    ckpt = tmp_path / "checkpoint-2"
    files = json.loads((ckpt / MANIFEST).read_text())["files"]
    on_disk = {p.name for p in ckpt.iterdir()} - {MANIFEST}
    assert set(files) == on_disk == {"model.pt", "optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json"}
    for name, entry in files.items():  # hashed while written: the digest of the bytes on disk
        data = (ckpt / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}, name
    assert checkpoint_problem(ckpt) is None
    assert latest_intact_checkpoint(tmp_path) == (ckpt, [])


def truncate_model(ckpt):
    data = (ckpt / "model.pt").read_bytes()
    (ckpt / "model.pt").write_bytes(data[: len(data) // 2])
    return f"model.pt is {len(data) // 2} bytes, manifest.json says {len(data)}"


def empty_optimizer(ckpt):
    size = (ckpt / "optimizer.pt").stat().st_size
    (ckpt / "optimizer.pt").write_bytes(b"")
    return f"optimizer.pt is 0 bytes, manifest.json says {size}"


def break_trainer_state(ckpt):
    text = (ckpt / "trainer_state.json").read_text()
    (ckpt / "trainer_state.json").write_text(text[:-1] + ",")  # the same length, no longer JSON
    return "trainer_state.json does not match its sha256 in manifest.json"


def flip_model_bit(ckpt):
    flip_tensor_bit(ckpt / "model.pt")
    return "model.pt does not match its sha256 in manifest.json"


def break_manifest(ckpt):
    (ckpt / MANIFEST).write_text('{"files": {"model.pt": ')
    return "manifest.json is unreadable (JSONDecodeError"


@pytest.mark.parametrize(
    "damage", [truncate_model, empty_optimizer, break_trainer_state, flip_model_bit, break_manifest]
)
def test_a_damaged_latest_checkpoint_is_passed_over_for_the_previous_one(tmp_path, damage):
    write_two(tmp_path)
    latest, previous = tmp_path / "checkpoint-2", tmp_path / "checkpoint-1"
    what = damage(latest)
    path, warnings = latest_intact_checkpoint(tmp_path)
    assert path == previous
    assert len(warnings) == 1
    assert warnings[0].startswith(f"rlhfkit: warning: passing over damaged {latest}: {what}")
    assert warnings[0].endswith("; resuming from checkpoint-1") and "\n" not in warnings[0]


def test_the_bit_flip_loads_silently_without_the_manifest(tmp_path):
    """torch.load itself does not notice a flipped bit in tensor data: only the checksum does."""
    model, _ = write_two(tmp_path)
    flip_model_bit(tmp_path / "checkpoint-2")
    loaded = torch.load(tmp_path / "checkpoint-2" / "model.pt", weights_only=True)
    assert not all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    assert checkpoint_problem(tmp_path / "checkpoint-2").startswith("model.pt does not match its sha256")


@pytest.mark.parametrize(
    "damage,what",
    [
        (
            lambda c: (c / "model.pt").write_bytes((c / "model.pt").read_bytes()[:200]),
            "model.pt does not load (RuntimeError: PytorchStreamReader failed reading zip archive",
        ),
        (lambda c: (c / "optimizer.pt").write_bytes(b""), "optimizer.pt is empty; "),
        (
            lambda c: (c / "trainer_state.json").write_text('{"step": 2, '),
            "trainer_state.json is unreadable (JSONDecodeError",
        ),
        (lambda c: (c / "rng.pt").unlink(), "rng.pt is missing"),
    ],
)
def test_a_checkpoint_without_manifest_resumes_when_every_file_loads(tmp_path, damage, what):
    """Written before manifests existed: accepted when its JSON parses and every .pt file loads
    (the load failures are the damage found); a flipped bit in tensor data cannot be found."""
    model, opt = write_two(tmp_path, manifest=False)
    latest = tmp_path / "checkpoint-2"
    assert latest_intact_checkpoint(tmp_path) == (latest, [])
    fresh = torch.nn.Linear(6, 4)
    assert load_checkpoint(latest, fresh, torch.optim.AdamW(fresh.parameters(), lr=0.1))["step"] == 2
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters()))
    damage(latest)
    path, warnings = latest_intact_checkpoint(tmp_path)
    assert path == tmp_path / "checkpoint-1" and len(warnings) == 1
    assert warnings[0].startswith(f"rlhfkit: warning: passing over damaged {latest}: {what}"), warnings[0]


def test_no_intact_checkpoint_is_an_error_naming_the_folder_and_each_damage(tmp_path):
    write_two(tmp_path)
    truncate_model(tmp_path / "checkpoint-2")
    empty_optimizer(tmp_path / "checkpoint-1")
    with pytest.raises(CheckpointError) as err:
        resume_checkpoint(tmp_path)
    message = str(err.value)
    assert message.startswith(f"{tmp_path}: no intact checkpoint to resume from. checkpoint-2: model.pt is ")
    assert "; checkpoint-1: optimizer.pt is 0 bytes, manifest.json says " in message
    assert message.endswith(". Delete them, or use another --output_dir, to start afresh") and "\n" not in message


def test_no_checkpoint_is_a_fresh_start(tmp_path):
    assert latest_intact_checkpoint(tmp_path / "absent") == (None, [])
    assert resume_checkpoint(tmp_path) is None


def test_resume_checkpoint_prints_one_warning_line(tmp_path, capsys):
    write_two(tmp_path)
    flip_model_bit(tmp_path / "checkpoint-2")
    assert resume_checkpoint(tmp_path) == tmp_path / "checkpoint-1"
    err = capsys.readouterr().err
    assert err == (
        f"rlhfkit: warning: passing over damaged {tmp_path / 'checkpoint-2'}: model.pt does not match "
        "its sha256 in manifest.json (changed after it was written); resuming from checkpoint-1\n"
    )


def test_a_checkpoint_that_lost_its_manifest_is_damaged(tmp_path):
    """A checkpoint written with a manifest (its trainer_state.json says so) and found without
    one is damaged, not taken for an old one: a flipped bit would otherwise load unchecked."""
    write_two(tmp_path)
    latest = tmp_path / "checkpoint-2"
    (latest / MANIFEST).unlink()
    flip_model_bit(latest)
    path, warnings = latest_intact_checkpoint(tmp_path)
    assert path == tmp_path / "checkpoint-1"
    assert warnings == [
        f"rlhfkit: warning: passing over damaged {latest}: manifest.json is missing "
        "(trainer_state.json says there was one); resuming from checkpoint-1"
    ]


def test_a_loadable_file_the_manifest_does_not_list_is_damage(tmp_path):
    """Every file the loaders read must be vouched for: an unlisted optimizer.pt (copied in from
    another checkpoint) would be loaded unchecked. Other files in the folder do not matter."""
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    other = save_checkpoint(tmp_path / "other", 1, model, opt)
    ckpt = save_checkpoint(tmp_path, 1, model)  # no optimizer: its manifest lists none
    (ckpt / "notes.txt").write_text("not read by anything")
    assert checkpoint_problem(ckpt) is None
    (ckpt / "optimizer.pt").write_bytes((other / "optimizer.pt").read_bytes())
    assert checkpoint_problem(ckpt) == "optimizer.pt is not listed in manifest.json"


def damage_model(ckpt):
    (ckpt / "model.pt").write_bytes((ckpt / "model.pt").read_bytes()[:100])


@pytest.mark.parametrize("keep_last", [1, 2])
def test_saving_after_resuming_past_damaged_checkpoints_keeps_what_it_wrote(tmp_path, keep_last):
    """Resumed from checkpoint-4 past damaged checkpoints 6 and 8, the next save (5) is kept and
    the damaged ones, of the run being replaced, are removed (counted, they would outnumber it
    and checkpoint-5 would be pruned as soon as written); saving 6 again writes an intact one."""
    model = torch.nn.Linear(3, 2)
    for step in (2, 4, 6, 8):
        save_checkpoint(tmp_path, step, model, keep_last=4)
    damage_model(tmp_path / "checkpoint-6")
    damage_model(tmp_path / "checkpoint-8")
    path, warnings = latest_intact_checkpoint(tmp_path)
    assert path == tmp_path / "checkpoint-4" and len(warnings) == 2
    written = save_checkpoint(tmp_path, 5, model, keep_last=keep_last)
    assert written.is_dir()
    assert [c.name for c in list_checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-5"][-keep_last:]
    assert latest_intact_checkpoint(tmp_path) == (written, [])
    save_checkpoint(tmp_path, 6, model, keep_last=keep_last)
    assert [c.name for c in list_checkpoints(tmp_path)] == ["checkpoint-5", "checkpoint-6"][-keep_last:]
    assert latest_intact_checkpoint(tmp_path) == (tmp_path / "checkpoint-6", [])


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux /proc/self/mem for a read error")
def test_a_file_that_cannot_be_read_is_damage(tmp_path):
    """A read error (EIO from a bad sector) is damage like any other: the checkpoint is passed
    over, no traceback. /proc/self/mem read at offset 0 fails with EIO, as such a disk does; the
    manifest is made to list its size (0), so only the read can find it."""
    write_two(tmp_path)
    latest = tmp_path / "checkpoint-2"
    (latest / "model.pt").unlink()
    (latest / "model.pt").symlink_to("/proc/self/mem")
    manifest = json.loads((latest / MANIFEST).read_text())
    manifest["files"]["model.pt"]["size"] = 0
    (latest / MANIFEST).write_text(json.dumps(manifest))
    assert checkpoint_problem(latest) == "model.pt is unreadable (OSError: Input/output error)"
    assert latest_intact_checkpoint(tmp_path)[0] == tmp_path / "checkpoint-1"
