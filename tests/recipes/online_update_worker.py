"""Run by ``test_online_parallel.py`` in one process or under torchrun: one update of the same
8-row rollout, all of it in one process or each rank its half; rank 0 writes the updated weights
and the statistics. AGGREGATION ``ppo``: PPO's update (``recipes.ppo.ppo_update``: values, GAE,
whitened rewards and advantages, clipped policy + value loss); otherwise the policy-gradient update
(``recipes.policy_gradient.policy_gradient_update``) with that loss aggregation.

    python tests/recipes/online_update_worker.py POLICY_DIR OUT AGGREGATION EPOCHS
"""

import dataclasses
import json
import sys

import torch


def main(policy_dir: str, out: str, aggregation: str, epochs: int) -> None:
    from rlhfkit.models import load_policy
    from rlhfkit.recipes.grpo import GRPOConfig
    from rlhfkit.recipes.online_driver import optimizer_and_scheduler
    from rlhfkit.recipes.online_inputs import generate, local_share, make_generator
    from rlhfkit.recipes.policy_gradient import policy_gradient_update
    from rlhfkit.rollout import rollout_logprobs
    from rlhfkit.training.config import load_config
    from rlhfkit.training.distributed import cleanup, init_distributed

    torch.set_num_threads(1)
    info = init_distributed("cpu")
    cfg = load_config(
        GRPOConfig,
        None,
        {
            "model": policy_dir,
            "batch_size": 8,
            "micro_batch_size": 4,
            "num_generations": 2,
            "max_new_tokens": 6,
            "ppo_epochs": epochs,
            "learning_rate": 1e-2,
            "kl_coef": 0.0,
        },
    )
    cfg.micro_batch_size = 3  # uneven accumulation on purpose (one process 3+3+2, each of two 3+1)
    policy, tok = load_policy(policy_dir)
    prompts = [
        "the film was",
        "a story",
        "good actor and",
        "very dull plot",
        "the scene",
        "happy and sad",
        "was it",
        "really",
    ]
    # the same rollout on every rank (rank 0's seed), then each rank keeps its rows
    ro = generate(cfg, make_generator(cfg, tok, policy), policy, tok, prompts, step=0)
    rows = local_share(list(range(len(ro))), info)
    idx = torch.tensor(rows)
    local = dataclasses.replace(
        ro,
        **{
            f.name: getattr(ro, f.name)[idx]
            for f in dataclasses.fields(ro)
            if isinstance(getattr(ro, f.name), torch.Tensor)
        },
        prompts=[ro.prompts[i] for i in rows],
        responses=[ro.responses[i] for i in rows],
    )
    if aggregation == "ppo":
        import copy

        from rlhfkit.models import make_value_model
        from rlhfkit.recipes.ppo import PPOConfig, ppo_update

        pcfg = load_config(
            PPOConfig,
            None,
            {
                "model": policy_dir,
                "batch_size": 8,
                "micro_batch_size": 4,
                "max_new_tokens": 6,
                "ppo_epochs": epochs,
                "learning_rate": 1e-2,
                "whiten_rewards": True,
                "kl_coef": 0.1,
            },
        )
        pcfg.micro_batch_size = 3
        modules = torch.nn.ModuleDict(
            {"policy": policy, "value": make_value_model(policy_dir, zero_init=True, tokenizer=tok)}
        )
        reference = copy.deepcopy(policy).eval()
        params = [p for p in modules.parameters() if p.requires_grad]
        optimizer, scheduler = optimizer_and_scheduler(params, pcfg)
        scores = torch.linspace(-1.0, 1.0, len(ro))[idx]
        ref_lp = rollout_logprobs(reference, local, pcfg.temperature, pcfg.micro_batch_size)
        stats = vars(ppo_update(pcfg, modules, local, scores, ref_lp, 0.1, optimizer, scheduler, params, 0, info).stats)
        weights = modules.state_dict()
    else:
        advantages = torch.linspace(-1.0, 1.0, len(ro))[idx]
        optimizer, scheduler = optimizer_and_scheduler(policy.parameters(), cfg)
        stats = policy_gradient_update(
            policy,
            local,
            advantages,
            local.logprobs,
            cfg,
            optimizer,
            scheduler,
            0,
            aggregation,
            params=[p for p in policy.parameters() if p.requires_grad],
            info=info,
        ).stats.metrics()
        weights = policy.state_dict()
    if info.is_main:
        torch.save(weights, f"{out}/weights.pt")
        with open(f"{out}/stats.json", "w", encoding="utf-8") as f:
            json.dump({**stats, "rows": len(local), "world_size": info.world_size}, f)
    cleanup(info)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
