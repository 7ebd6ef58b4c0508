"""`rlhfkit <command>`: parses arguments and calls a recipe; nothing else lives here."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

COMMANDS: dict[str, tuple[str, str, str]] = {
    # name: (module, config class, one-line description)
    "sft": (
        "rlhfkit.recipes.sft",
        "SFTConfig",
        "supervised fine-tuning on demonstrations or conversations (prompt tokens masked)",
    ),
    "reward train": (
        "rlhfkit.recipes.reward",
        "RewardConfig",
        "train a reward model: Bradley-Terry on pairs, or regression / classification on ratings / thumbs",
    ),
    "reward eval": (
        "rlhfkit.eval.reward_eval",
        "RewardEvalConfig",
        "accuracy, precision / recall / F1, calibration and margin of a reward model on a pair file",
    ),
    "reward discriminator": (
        "rlhfkit.recipes.discriminator",
        "DiscriminatorConfig",
        "a discriminator-style reward: a classifier of people's demonstrations vs the policy's responses; its logit is the reward",
    ),
    "ppo": (
        "rlhfkit.recipes.ppo",
        "PPOConfig",
        "online RL: PPO with value model, per-token KL penalty (fixed or adaptive), GAE, clipped losses",
    ),
    "grpo": (
        "rlhfkit.recipes.grpo",
        "GRPOConfig",
        "online RL: GRPO / Dr. GRPO (k samples per prompt, group-normalised advantages, k3 KL in the loss)",
    ),
    "rloo": (
        "rlhfkit.recipes.rloo",
        "RLOOConfig",
        "online RL: REINFORCE leave-one-out (k samples per prompt, KL in the reward)",
    ),
    "reinforce": (
        "rlhfkit.recipes.reinforce",
        "ReinforceConfig",
        "online RL: REINFORCE with a running or learned baseline (KL in the reward)",
    ),
    "ilql": (
        "rlhfkit.recipes.ilql",
        "ILQLConfig",
        "offline token-level Q-learning (ILQL): Q / V heads on a frozen model from rewarded responses, decoding with logits + beta (Q - V)",
    ),
    "dpo": (
        "rlhfkit.recipes.dpo",
        "DPOConfig",
        "direct preference optimisation on pairs: DPO, IPO, cDPO, SimPO or ORPO (cached or LoRA reference)",
    ),
    "kto": (
        "rlhfkit.recipes.kto",
        "KTOConfig",
        "KTO on unpaired thumbs up / down (or pairs split in two), KL reference point from mismatched pairs",
    ),
    "feedback serve": (
        "rlhfkit.feedback.cli",
        "ServeConfig",
        "the human feedback web app and JSON API (FastAPI + uvicorn; SQLite file or PostgreSQL URL)",
    ),
    "feedback import": (
        "rlhfkit.feedback.cli",
        "ImportConfig",
        "import items (prompts + responses) from JSONL into a feedback project, all or nothing",
    ),
    "feedback export": (
        "rlhfkit.feedback.cli",
        "ExportConfig",
        "export a feedback project's labels as pairs / ratings / thumbs / sft JSONL or a HF dataset",
    ),
    "feedback create-user": (
        "rlhfkit.feedback.cli_users",
        "CreateUserConfig",
        "create an admin or labeler account for the feedback app (password from $RLHFKIT_PASSWORD or a prompt)",
    ),
    "feedback set-user": (
        "rlhfkit.feedback.cli_users",
        "SetUserConfig",
        "deactivate / reactivate a feedback app user, change their role or set a new password (ends their sessions)",
    ),
    "feedback members": (
        "rlhfkit.feedback.cli_users",
        "MembersConfig",
        "restrict a feedback project to some labelers (--add / --remove / --clear; none: open to all)",
    ),
    "feedback users": (
        "rlhfkit.feedback.cli_users",
        "UsersConfig",
        "list the feedback app's users: role, active, projects they are members of",
    ),
    "feedback forget": (
        "rlhfkit.feedback.cli",
        "ForgetConfig",
        "erase what a served model stored about one end user: their completions and all feedback on them, and their feedback elsewhere",
    ),
    "eval": (
        "rlhfkit.eval.cli_eval",
        "EvalConfig",
        "win rate of a policy vs a reference (reward model, gold judge or people in the feedback app), gold score, KL",
    ),
    "eval leaderboard": (
        "rlhfkit.eval.cli_eval",
        "LeaderboardConfig",
        "Bradley-Terry leaderboard of several models / checkpoints with bootstrap 95% intervals",
    ),
    "serve": (
        "rlhfkit.serve.cli",
        "ServeConfig",
        "OpenAI-compatible /v1/chat/completions server with a /v1/feedback endpoint (thumbs, ratings) into the feedback store",
    ),
    "chat": (
        "rlhfkit.serve.cli",
        "ChatConfig",
        "chat with a model in the terminal; /up, /down, /rate N store feedback in the feedback store",
    ),
    "pipeline": (
        "rlhfkit.pipeline.run",
        "PipelineConfig",
        "the loop end to end, cached and resumable: SFT -> feedback -> reward model -> PPO/GRPO/RLOO/DPO/KTO -> eval -> report.html (the default: real chat prompts, simulated labelers, GRPO; a quarter of an hour or so on 2 CPU cores)",
    ),
    "learn run": (
        "rlhfkit.learn.run",
        "LearnConfig",
        "the continuous learner: LEARN_DIR follows the feedback store; each round refits the reward model on users' verdicts (bad users capped and down-weighted), trains a LoRA version (GRPO, or KTO / DPO / SFT), gates it on held-out prompts and promotes it for serve",
    ),
    "learn versions": (
        "rlhfkit.learn.lineage",
        "VersionsConfig",
        "list a learner's versions: parent, round, feedback, users down-weighted, gate figures; refusals and rollbacks",
    ),
    "learn rollback": (
        "rlhfkit.learn.lineage",
        "RollbackConfig",
        "make an older version of a learner's folder current again (logged in versions.jsonl)",
    ),
    "loop": (
        "rlhfkit.loop.run",
        "LoopConfig",
        "iterated online RLHF, resumable: candidates from the policy -> pairs chosen by RM-ensemble uncertainty (or random) -> labels (app or simulated) -> RM ensemble -> GRPO/PPO round",
    ),
}

# commands whose entry point is not called `run`
COMMAND_RUN: dict[str, str] = {
    "feedback serve": "run_serve",
    "feedback import": "run_import",
    "feedback export": "run_export",
    "feedback create-user": "run_create_user",
    "feedback set-user": "run_set_user",
    "feedback members": "run_members",
    "feedback users": "run_users",
    "feedback forget": "run_forget",
    "eval leaderboard": "run_leaderboard",
    "serve": "run_serve",
    "chat": "run_chat",
    "learn versions": "run_versions",
    "learn rollback": "run_rollback",
}

# positional arguments of commands that take them, in order: turned into --field value
POSITIONAL: dict[str, tuple[str, ...]] = {
    "learn run": ("learn_dir",),
    "learn versions": ("learn_dir",),
    "learn rollback": ("learn_dir", "version"),
}

CONFIG_HELP = """\
Every field below can be set in a YAML file (--config FILE) and overridden on the command
line as --field value (nested fields as --lora.r 8). Fields:
"""


def _import(module: str, name: str):
    import importlib

    return getattr(importlib.import_module(module), name)


def _field_table(config_cls) -> str:
    from rlhfkit.training.config import describe_fields

    rows = describe_fields(config_cls)
    width = max(len(k) for k, _, _ in rows) + 2
    return CONFIG_HELP + "\n".join(f"  --{k.ljust(width)}{help_} (default {default})" for k, default, help_ in rows)


def _command_parser(prog: str, description: str, config_cls) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=_field_table(config_cls),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML file with field: value lines")
    return parser


def _run_command(name: str, argv: list[str]) -> int:
    from rlhfkit.data.errors import DataError
    from rlhfkit.models.loading import ModelLoadError
    from rlhfkit.models.versions import VersionError
    from rlhfkit.training.config import ConfigError, load_config

    module, cls_name, description = COMMANDS[name]
    config_cls = _import(module, cls_name)
    parser = _command_parser(f"rlhfkit {name}", description, config_cls)
    args, rest = parser.parse_known_args(_positionals(name, argv))
    run: Callable = _import(module, COMMAND_RUN.get(name, "run"))
    try:
        config = load_config(config_cls, args.config, rest)
        run(config)
    except (ConfigError, DataError, FileNotFoundError, ModelLoadError, VersionError) as err:
        print(f"rlhfkit {name}: error: {err}", file=sys.stderr)
        return 2
    return 0


def _positionals(name: str, argv: list[str]) -> list[str]:
    """``LEARN_DIR v2`` -> ``--learn_dir LEARN_DIR --version v2`` for the command's positional
    fields (the leading arguments that are not options)."""
    fields = POSITIONAL.get(name, ())
    out = list(argv)
    given = []
    while out and len(given) < len(fields) and not out[0].startswith("-"):
        given.append(out.pop(0))
    return [x for f, v in zip(fields, given) for x in (f"--{f}", v)] + out


def _top_help() -> str:
    lines = [
        "usage: rlhfkit <command> [--config FILE] [--field value ...]",
        "       rlhfkit --version",
        "",
        "Reinforcement learning from human feedback for language models, end to end.",
        "",
        "commands:",
    ]
    for name, (_, _, desc) in COMMANDS.items():
        lines.append(f"  {name.ljust(22)}{desc}")
    lines += ["", "`rlhfkit <command> --help` lists every field of that command's config."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if argv and argv[0] in ("serve", "chat"):
        # OpenMP's workers spin between parallel regions by default. A server's generation thread
        # hands every batch back to the HTTP threads and waits for the next: its spinning workers
        # then hold the cores those threads need (measured: 8 clients of the tiny model, --threads
        # 2, a busy 2-core machine: 1.6 requests/s against 46 with passive workers;
        # docs/BENCHMARKS.md). OpenMP reads this once, when torch loads it: here, before any
        # import does; a value the user set is kept.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_top_help())
        return 0
    if argv[0] in ("-V", "--version"):
        from rlhfkit import __version__

        print(f"rlhfkit {__version__}")
        return 0
    if argv[0] == "reward" and len(argv) > 1 and f"reward {argv[1]}" in COMMANDS:
        name, rest = f"reward {argv[1]}", argv[2:]
    elif argv[0] == "reward":
        subs = [n.split(" ", 1)[1] for n in COMMANDS if n.startswith("reward ")]
        print(
            "usage: rlhfkit reward {"
            + ",".join(subs)
            + "} ...\n"
            + "\n".join(f"  {s.ljust(13)} {COMMANDS['reward ' + s][2]}" for s in subs)
        )
        return 0 if len(argv) > 1 and argv[1] in ("-h", "--help") else 2
    elif argv[0] == "feedback" and len(argv) > 1 and f"feedback {argv[1]}" in COMMANDS:
        name, rest = f"feedback {argv[1]}", argv[2:]
    elif argv[0] == "learn" and len(argv) > 1 and f"learn {argv[1]}" in COMMANDS:
        name, rest = f"learn {argv[1]}", argv[2:]
    elif argv[0] == "learn":
        subs = [n.split(" ", 1)[1] for n in COMMANDS if n.startswith("learn ")]
        print(
            "usage: rlhfkit learn {"
            + ",".join(subs)
            + "} ...\n"
            + "\n".join(f"  {s.ljust(10)} {COMMANDS['learn ' + s][2]}" for s in subs)
        )
        return 0 if len(argv) > 1 and argv[1] in ("-h", "--help") else 2
    elif argv[0] == "feedback":
        subs = [n.split(" ", 1)[1] for n in COMMANDS if n.startswith("feedback ")]
        print(
            "usage: rlhfkit feedback {"
            + ",".join(subs)
            + "} ...\n"
            + "\n".join(f"  {s.ljust(12)} {COMMANDS['feedback ' + s][2]}" for s in subs)
        )
        return 0 if len(argv) > 1 and argv[1] in ("-h", "--help") else 2
    elif len(argv) > 1 and f"{argv[0]} {argv[1]}" in COMMANDS:  # e.g. eval leaderboard
        name, rest = f"{argv[0]} {argv[1]}", argv[2:]
    elif argv[0] in COMMANDS:
        name, rest = argv[0], argv[1:]
    else:
        print(f"rlhfkit: unknown command {argv[0]!r}\n\n{_top_help()}", file=sys.stderr)
        return 2
    return _run_command(name, rest)


if __name__ == "__main__":
    sys.exit(main())
