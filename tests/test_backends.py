"""The one SAU state build (`sau.build_sau_state`) with the FSDP2 backend on 2 gloo processes against one process:
retain-aware saliency, ``sau_topk_mass`` and the moving mask's candidates give the same G (exactly, ties included)
and W, with uneven row shards, a 1-D dense vector and a fused expert tensor (SPEC section 8)."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sau_trainer.core.prunable import Layout
from sau_trainer.parallel.backend import Backend, ShardedBackend
from sau_trainer.parallel.search import threshold_select
from sau_trainer.parallel.shards import RowShard
from sau_trainer.sau import build_sau_state, select_topk, select_topk_global

SHAPES = {"a.weight": (7, 5), "b.weight": (4, 6), "norm.weight": (9,), "experts.gate_up_proj": (3, 4, 5)}
LAYOUTS = {"experts.gate_up_proj": Layout(experts=True)}
POOL = ["a.weight", "b.weight", "experts.gate_up_proj"]
# (scope, redistribution, option)
CASES = [("matrix", "matrix", "retain"), ("row", "param", "retain"), ("global", "matrix", "retain"),
         ("matrix", "matrix", "mass"), ("row", "row", "mass"), ("matrix", "param", "mass"),
         ("matrix", "matrix", "moving"), ("row", "param", "moving")]


def _tensors():
    g = torch.Generator().manual_seed(1)
    # few distinct values: many ties at every threshold and at the mass boundary
    sal = {n: torch.randint(0, 4, s, generator=g).float() * 0.25 for n, s in SHAPES.items()}
    retain = {n: torch.randint(0, 3, s, generator=g).float() * 0.5 for n, s in SHAPES.items()}
    alive = {n: torch.rand(s, generator=g) > 0.4 for n, s in SHAPES.items()}
    return sal, retain, alive


def _options(option, retain, rows):
    if option == "retain":
        return {"retain": {n: rows(n, retain[n]) for n in SHAPES}, "retain_eps": 0.05}
    if option == "mass":
        return {"mass": 0.6}
    return {"candidates": {n: rows(n, torch.ones(SHAPES[n], dtype=torch.bool)) for n in SHAPES}}


def _worker(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        sal, retain, alive = _tensors()
        shards = {}
        for n, s in SHAPES.items():
            c = -(-s[0] // 2)
            shards[n] = RowShard(s, min(rank * c, s[0]), min(rank * c + c, s[0]), 2, rank, None)
        backend = ShardedBackend(shards)
        results = {}
        for scope, redistribution, option in CASES:
            state = build_sau_state(
                {n: shards[n].local(sal[n]) for n in SHAPES}, {n: shards[n].local(alive[n]) for n in SHAPES}, 0.3,
                0.1, scope, redistribution, global_names=POOL, layouts=LAYOUTS, backend=backend,
                **_options(option, retain, lambda n, t: shards[n].local(t)))
            results[(scope, redistribution, option)] = ({n: state.mask(n) for n in SHAPES}, dict(state.weights),
                                                        state.stats)
        out[rank] = results
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
def test_sharded_options_equal_one_process():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(port, out), nprocs=2, join=True)
    sal, retain, alive = _tensors()
    for scope, redistribution, option in CASES:
        ref = build_sau_state(sal, alive, 0.3, 0.1, scope, redistribution, global_names=POOL, layouts=LAYOUTS,
                              **_options(option, retain, lambda n, t: t))
        key = (scope, redistribution, option)
        for rank in (0, 1):
            masks, weights, stats = out[rank][key]
            for n in SHAPES:
                assert torch.equal(masks[n], ref.mask(n)), (key, n, rank)
                assert stats[n]["selected"] == ref.stats[n]["selected"]
                assert stats[n]["surviving"] == ref.stats[n]["surviving"]
                assert stats[n]["pruned_over_selected"] == pytest.approx(ref.stats[n]["pruned_over_selected"],
                                                                         rel=1e-12)
            assert set(weights) == set(ref.weights)
            for n, w in ref.weights.items():
                assert weights[n].shape == w.shape, (key, n)
                torch.testing.assert_close(weights[n], w, rtol=1e-6, atol=0)
        if option == "moving":  # candidates: every entry, as many per unit as the unit's surviving count
            assert any(bool((ref.mask(n) & ~alive[n]).any()) for n in SHAPES)


def test_threshold_search_on_one_process_is_the_sort():
    # the same search with the one-process backend's identity reductions: select_topk's and select_topk_global's G
    g = torch.Generator().manual_seed(2)
    sal = {n: torch.randint(0, 5, s, generator=g).float() for n, s in (("a", (6, 7)), ("b", (3, 4)))}
    alive = {n: torch.rand(s.shape, generator=g) > 0.3 for n, s in sal.items()}
    one = Backend()
    for n in sal:
        (got,), = threshold_select([[(sal[n], alive[n])]], 0.37, one)
        assert torch.equal(got, select_topk(sal[n], alive[n], 0.37))
    got = threshold_select([[(sal[n], alive[n]) for n in sal]], 0.37, one)[0]
    want = select_topk_global(sal, alive, 0.37)
    assert all(torch.equal(a, want[n]) for a, n in zip(got, sal, strict=True))
    # a budget: select among every entry, as many as the surviving count gives
    everything = torch.ones_like(alive["a"])
    (got,), = threshold_select([[(sal["a"], everything, alive["a"])]], 0.37, one)
    assert torch.equal(got, select_topk(sal["a"], everything, 0.37, budget=alive["a"]))
