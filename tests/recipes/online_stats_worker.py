"""Run by ``test_online_parallel.py`` under torchrun: whitening and explained variance over two
ranks' halves of fixed tensors; rank 0 writes the gathered results.

    python -m torch.distributed.run --nproc_per_node 2 tests/recipes/online_stats_worker.py OUT
"""

import sys

import torch


def main(out: str) -> None:
    from rlhfkit.recipes.online_inputs import local_share
    from rlhfkit.training.stats import explained_variance, global_masked_whiten
    from rlhfkit.training.distributed import all_gather_rows, cleanup, init_distributed

    info = init_distributed("cpu")
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    mask = torch.rand(8, 5, generator=g) > 0.3
    rows = torch.tensor(local_share(list(range(8)), info))
    res = {
        f"whiten_{shift}": all_gather_rows(global_masked_whiten(x[rows], mask[rows], info, shift_mean=shift), info)
        for shift in (True, False)
    }
    res["explained_variance"] = explained_variance(v[rows], x[rows], mask[rows], info)
    if info.is_main:
        torch.save({"x": x, "v": v, "mask": mask, **res}, f"{out}/stats.pt")
    cleanup(info)


if __name__ == "__main__":
    main(sys.argv[1])
