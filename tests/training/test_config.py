from dataclasses import dataclass, field

import pytest

from rlhfkit.training.config import ConfigError, describe_fields, load_config, parse_overrides


@dataclass
class Inner:
    r: int = 0
    alpha: float = 16.0


@dataclass
class Example:
    learning_rate: float = 1e-5
    steps: int = 10
    name: str = "x"
    flag: bool = False
    layers: list[str] = field(default_factory=list)
    maybe: int | None = None
    lora: Inner = field(default_factory=Inner)


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_yaml_then_overrides(tmp_path):
    p = write(tmp_path, "learning_rate: 3e-4\nsteps: 5\nlora:\n  r: 8\n")
    c = load_config(Example, p, ["--steps", "7", "--lora.alpha=4", "--flag", "--layers", "a,b", "--maybe", "none"])
    assert c.learning_rate == pytest.approx(3e-4)
    assert c.steps == 7 and c.lora.r == 8 and c.lora.alpha == 4.0
    assert c.flag is True and c.layers == ["a", "b"] and c.maybe is None


def test_unknown_key_names_file_line_and_suggests(tmp_path):
    p = write(tmp_path, "steps: 5\nlearning_rat: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(Example, p)
    msg = str(e.value)
    assert f"{p}:2" in msg and "learning_rat" in msg and "did you mean 'learning_rate'" in msg


def test_wrong_type_names_line_and_field(tmp_path):
    p = write(tmp_path, "name: ok\nlora:\n  r: eight\n")
    with pytest.raises(ConfigError) as e:
        load_config(Example, p)
    msg = str(e.value)
    assert f"{p}:3" in msg and "'lora.r'" in msg and "expected int" in msg


def test_bad_yaml_and_missing_file(tmp_path):
    p = write(tmp_path, "steps: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(Example, p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(Example, tmp_path / "nope.yaml")


def test_override_type_error():
    with pytest.raises(ConfigError, match="command line: field 'steps'"):
        load_config(Example, None, ["--steps", "1.5"])
    with pytest.raises(ConfigError, match="expected --key value"):
        parse_overrides(["steps", "3"])


def test_describe_fields_lists_nested():
    keys = [k for k, _, _ in describe_fields(Example)]
    assert "lora.r" in keys and "learning_rate" in keys


def test_help_shows_the_defaults_a_parent_gives_its_section():
    """The loop's ``reward`` section has its own defaults (``RewardConfig(batch_size=16, ...)``);
    ``--help`` printed the reward recipe's class defaults for it (32) instead."""
    from rlhfkit.loop.config import LoopConfig

    defaults = {k: d for k, d, _ in describe_fields(LoopConfig)}
    assert defaults["reward.batch_size"] == "16" and defaults["reward.learning_rate"] == "5e-05"
    assert defaults["grpo.max_steps"] == "8"


def test_a_message_naming_its_field_blames_that_fields_line(tmp_path):
    """A reward-model path ending in /model must not blame the line of the ``model`` field."""
    from rlhfkit.recipes.grpo import GRPOConfig

    cfg = tmp_path / "g.yaml"
    cfg.write_text("model: x\nprompts: p.jsonl\nnum_generations: 4\nreward: ensemble:avg:out/rm0/model\n")
    with pytest.raises(ConfigError, match=r"g\.yaml:4: field 'reward'"):
        load_config(GRPOConfig, cfg)
    with pytest.raises(ConfigError, match=r"^command line: field 'reward'"):
        load_config(GRPOConfig, cfg, ["--reward", "ensemble:avg:a/model"])


@dataclass
class WithQuick:
    quick: bool = False
    steps: int = 30
    name: str = "full"
    lora: Inner = field(default_factory=Inner)


QUICK_VALUES = {"steps": 6, "name": "small", "lora.r": 2}


def test_load_config_records_the_fields_the_file_and_the_command_line_set(tmp_path):
    from rlhfkit.training.config import given_fields

    p = write(tmp_path, "steps: 5\nlora:\n  r: 8\n")
    c = load_config(Example, p, ["--steps", "7", "--lora.alpha=4"])
    assert given_fields(c) == {"file": {"steps": 5, "lora.r": 8}, "command line": {"steps": 7, "lora.alpha": 4.0}}
    assert given_fields(Example()) == {"file": {}, "command line": {}}


def test_quick_never_overrides_the_command_line_and_shrinks_a_full_size_file(tmp_path):
    """--quick sets its values over the defaults and over a config file that does not itself say
    quick: true (a full-size preset); a field given on the command line keeps its value."""
    from rlhfkit.training.config import describe_quick, set_quick_fields

    preset = write(tmp_path, "steps: 30\nname: preset\nlora:\n  r: 16\n")
    c = load_config(WithQuick, preset, ["--quick", "--steps", "2"])
    changed, kept = set_quick_fields(c, QUICK_VALUES)
    assert (c.steps, c.name, c.lora.r) == (2, "small", 2)
    assert changed == ["name", "lora.r"] and kept == {"steps": "command line"}
    assert describe_quick(c, changed, kept) == (
        "--quick set 2 fields: name, lora.r; left 1 as given: steps = 2 (command line)"
    )
    assert set_quick_fields(c, QUICK_VALUES) == ([], {"steps": "command line"})  # applied twice: the same
    c = load_config(WithQuick, None, {"quick": True})  # no file, nothing given: every quick value
    assert set_quick_fields(c, QUICK_VALUES) == (["steps", "name", "lora.r"], {})
    assert (c.steps, c.name, c.lora.r) == (6, "small", 2)


def test_a_config_file_that_says_quick_keeps_its_values_under_quick(tmp_path):
    """A file written for quick runs (quick: true) is explicit too: its values win over quick's,
    the command line's over both."""
    from rlhfkit.training.config import set_quick_fields

    quick_file = write(tmp_path, "quick: true\nsteps: 2\nlora:\n  r: 16\n")
    c = load_config(WithQuick, quick_file, ["--lora.r", "4"])
    changed, kept = set_quick_fields(c, QUICK_VALUES)
    assert (c.steps, c.name, c.lora.r) == (2, "small", 4)
    assert changed == ["name"] and kept == {"steps": "file", "lora.r": "command line"}


@dataclass
class Batches:
    batch_size: int = 64
    micro_batch_size: int = 8


@dataclass
class WithBatches:
    quick: bool = False
    reward: Batches = field(default_factory=Batches)
    policy: Batches = field(default_factory=Batches)


def test_quick_batch_sizes_fit_a_batch_size_given_on_the_command_line(tmp_path):
    """A batch size given explicitly stands, and quick's sibling is fitted to it: micro-batches of
    16 under a given batch of 8 become 8 (they would stop the run at that stage, minutes in), a
    batch of 16 under given micro-batches of 32 becomes 32; a sibling that fits is quick's."""
    from rlhfkit.training.config import describe_quick, set_quick_fields

    quick = {
        "reward.batch_size": 16,
        "reward.micro_batch_size": 16,
        "policy.batch_size": 16,
        "policy.micro_batch_size": 4,
    }
    preset = write(tmp_path, "reward:\n  batch_size: 64\n  micro_batch_size: 8\n")
    c = load_config(WithBatches, preset, ["--quick", "--reward.batch_size", "8", "--policy.micro_batch_size", "32"])
    changed, kept = set_quick_fields(c, quick)
    assert (c.reward.batch_size, c.reward.micro_batch_size) == (8, 8)
    assert (c.policy.batch_size, c.policy.micro_batch_size) == (32, 32)
    assert changed == []
    assert describe_quick(c, changed, kept) == (
        "--quick set 0 fields: none; left 2 as given: reward.batch_size = 8 (command line), "
        "policy.micro_batch_size = 32 (command line); fitted 2 to what was given: reward.micro_batch_size = 8 "
        "(quick's 16 fitted to the given reward.batch_size), policy.batch_size = 32 (quick's 16 fitted to the "
        "given policy.micro_batch_size)"
    )
    c = load_config(WithBatches, preset, ["--quick", "--reward.batch_size", "32"])
    assert set_quick_fields(c, quick) == (
        ["reward.micro_batch_size", "policy.batch_size", "policy.micro_batch_size"],
        {"reward.batch_size": "command line"},
    )
    assert (c.reward.batch_size, c.reward.micro_batch_size) == (32, 16)
    # a default that already holds quick's value is quick's too: fitted the same
    c = load_config(WithBatches, None, ["--quick", "--policy.batch_size", "4"])
    changed, kept = set_quick_fields(c, {"policy.micro_batch_size": 8})
    assert (c.policy.batch_size, c.policy.micro_batch_size) == (4, 4) and changed == []
    assert kept == {"policy.micro_batch_size": "quick's 8 fitted to the given policy.batch_size"}
