"""Several processes (gloo on CPU): the same network and the same numbers as one process."""

import pytest
import torch

from sresnet.convert.lowlat import kth_largest

import sresnet.distributed as sdist
from sresnet.distributed import Shard, numba_threads_per_process, shard_range

import _dist_tasks
from _sresnet_nets import assert_same_tree
from _dist_worker import launch


@pytest.mark.parametrize("n", [10, 11, 1])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shard_range_covers_every_index_once(n, world):
    got = [i for r in range(world) for i in shard_range(n, Shard(r, world))]
    assert got == list(range(n))
    sizes = [len(shard_range(n, Shard(r, world))) for r in range(world)]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("env,cpus,expected", [
    ({"LOCAL_WORLD_SIZE": "2"}, 2, 1),
    ({"LOCAL_WORLD_SIZE": "2"}, 16, 8),
    ({"LOCAL_WORLD_SIZE": "4"}, 2, 1),
    ({"LOCAL_WORLD_SIZE": "3"}, 8, 2),
    ({"LOCAL_WORLD_SIZE": "1"}, 2, None),
    ({}, 2, None),
    ({"LOCAL_WORLD_SIZE": "2", "NUMBA_NUM_THREADS": "2"}, 2, None),
])
def test_numba_threads_divide_the_cores_among_local_processes(env, cpus, expected):
    """torchrun's processes on one machine share its cores: Numba's default (every core in
    every process) would oversubscribe them; a user's NUMBA_NUM_THREADS stands."""
    assert numba_threads_per_process(env, cpus) == expected


_INIT = torch.distributed.init_process_group


def _one_process_group(tmp_path, name="group"):
    """A real gloo group of world size 1 (no peers needed)."""
    _INIT("gloo", init_method=f"file://{tmp_path / name}", rank=0, world_size=1)


def test_shutdown_destroys_only_the_group_init_from_env_started(tmp_path, monkeypatch):
    """A torchrun process that exits with its gloo group alive can abort in the group's threads
    (seen as SIGABRT, "terminate called without an active exception", in CI): the CLI calls
    shutdown(), which destroys the group init_from_env started and leaves a user's alone."""
    dist = torch.distributed
    assert not dist.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("NUMBA_NUM_THREADS", "1")  # the user's choice: init_from_env leaves Numba's threads
    monkeypatch.setattr(dist, "init_process_group", lambda backend: _one_process_group(tmp_path))
    try:
        shard = sdist.init_from_env()
        assert dist.is_initialized() and (shard.rank, shard.world) == (0, 1)
        sdist.shutdown()
        assert not dist.is_initialized()
        sdist.shutdown()  # twice: nothing to do
        monkeypatch.undo()
        _one_process_group(tmp_path, "users")  # the caller's own group
        monkeypatch.setenv("WORLD_SIZE", "2")
        sdist.init_from_env()  # finds it initialized: uses it
        sdist.shutdown()
        assert dist.is_initialized(), "shutdown destroyed a group it did not start"
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.parametrize("percentile,per_channel", [(99.0, False), (99.9, True), ("max", True)],
                         ids=["p99", "p99.9-per-channel", "max-per-channel"])
def test_scales_bit_identical_on_two_processes(tmp_path, percentile, per_channel):
    # 37 images in batches of 8: 5 batches, uneven between the ranks; max_values small enough
    # that every batch is subsampled (the generator skip is exercised)
    kw = dict(kind="tiny_B_module", n=37, percentile=percentile, per_channel=per_channel, batch_size=8,
              max_values=4096)
    single = _dist_tasks.scales(**kw)
    ranks = launch(2, "scales", tmp_path, **kw)
    for r in ranks:
        assert_same_tree(single, r)


@pytest.mark.parametrize("form", ["tensor", "loader", "batches"])
def test_evaluation_numbers_identical_on_two_processes(tmp_path, form):
    # 13 test images: not divisible by the world size; the cost maps are summed exactly too
    kw = dict(kind="tiny_A_functional", n_calib=16, n_test=13, form=form, timesteps=[2, 5])
    single = _dist_tasks.evaluation(**kw)
    assert single["world_size"] == 1 and single["num_images"] == 13
    for r in launch(2, "evaluation", tmp_path, **kw):
        assert r.pop("world_size") == 2
        assert_same_tree({k: v for k, v in single.items() if k != "world_size"}, r)


def _sorted_kth(u, k):
    return torch.sort(u, dim=1, descending=True).values.gather(1, (k - 1).view(-1, 1)).squeeze(1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kth_largest_one_process_equals_a_sort(seed):
    u, k = _dist_tasks.kth_case(6, 1001, seed)
    assert torch.equal(kth_largest(u, k, Shard()), _sorted_kth(u, k))


def test_kth_largest_over_three_processes_equals_a_sort_of_the_union(tmp_path):
    kw = dict(rows=5, n=301, seed=3)  # 101 / 100 / 100 values per rank
    u, k = _dist_tasks.kth_case(**kw)
    for r in launch(3, "kth", tmp_path, **kw):
        assert torch.equal(r["kth"], _sorted_kth(u, k))


@pytest.mark.parametrize("method,subset,wcal", [("lowlat", 8, False), ("lowlat", 7, False), ("s-resnet", 7, False),
                                                ("lowlat", 7, True)])
def test_conversion_bit_identical_on_two_processes(tmp_path, method, subset, wcal):
    # 21 calibration images in batches of 4 (6 batches, the last partial); every site subsampled;
    # the layer-by-layer calibration shares `subset` images (7: uneven shares); wcal: with the
    # layer-wise weight refit (its Gram sums are exact integers over the ranks)
    kw = dict(kind="tiny_B_module", n=21, method=method, batch_size=4, max_values=2048, horizon=8,
              calib_timesteps=8, calib_subset=subset, **(dict(weight_calibration=True) if wcal else {}))
    single = _dist_tasks.network(**kw)
    for r in launch(2, "network", tmp_path, **kw):
        assert_same_tree(single, r)


@pytest.mark.parametrize("method", ["lowlat", "s-resnet"])
def test_more_processes_than_calibration_images_is_refused(method):
    import sresnet
    from sresnet.convert import compensate, lowlat

    snn = sresnet.convert(_dist_tasks.make("tiny_A_functional").eval(), _dist_tasks._calib(8), method=method,
                          compensation=None, calib_timesteps=4)
    five = Shard(rank=0, world=5)  # checked before any collective runs
    with pytest.raises(ValueError, match=r"5 processes share 4 calibration images \(calib_subset\)"):
        if method == "lowlat":
            lowlat.calibrate_schedule(snn, None, snn.scales, _dist_tasks._calib(4), 4, shard=five)
        else:
            compensate.compensate(snn, None, snn.scales, _dist_tasks._calib(4), "bias", None, timesteps=4,
                                  subset=4, batch_size=4, shard=five)


def test_cli_shuts_the_group_down_on_success_and_on_error(monkeypatch, tmp_path):
    from sresnet.cli import main

    calls = []
    monkeypatch.setattr(sdist, "shutdown", lambda: calls.append(1))
    assert main(["eval", "--model", "resnet20", "--data", str(tmp_path / "missing.npz")]) == 2
    assert calls == [1]
