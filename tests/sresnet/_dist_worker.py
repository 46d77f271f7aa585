"""Worker of the multi-process tests: runs one task on one rank of a gloo group and saves what it got."""

import os

import torch
import torch.distributed as dist


def run(rank: int, world: int, init_file: str, task: str, out_dir: str, kwargs: dict) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        import _dist_tasks

        result = getattr(_dist_tasks, task)(**kwargs)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def launch(world: int, task: str, tmp_path, **kwargs) -> list:
    """Run ``_dist_tasks.<task>(**kwargs)`` on ``world`` processes; returns each rank's result."""
    import torch.multiprocessing as mp

    init_file = str(tmp_path / "init")
    mp.spawn(run, args=(world, init_file, task, str(tmp_path), kwargs), nprocs=world, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]
