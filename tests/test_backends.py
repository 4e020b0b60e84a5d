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


W_SHAPES = {"q.weight": (7, 8), "up.weight": (5, 8), "experts.down_proj": (3, 4, 8)}
W_LAYOUTS = {"experts.down_proj": Layout(experts=True)}


def _weights_and_masks(nm: bool):
    g = torch.Generator().manual_seed(3)
    # few distinct magnitudes: ties at every unit's cut
    weights = {n: (torch.randint(-3, 4, s, generator=g).float() * 0.5) for n, s in W_SHAPES.items()}
    if nm:  # 2:4 in every group of 4 inputs
        masks = {n: (torch.rand((*s[:-1], s[-1] // 4, 4), generator=g).argsort(-1) < 2).reshape(s)
                 for n, s in W_SHAPES.items()}
    else:
        masks = {n: torch.rand(s, generator=g) > 0.5 for n, s in W_SHAPES.items()}
    return weights, masks


def _project_worker(rank: int, port: int, out: dict) -> None:
    from sau_trainer.masks import SparsityMasks
    from sau_trainer.moving_mask import MovingMask
    from sau_trainer.parallel.weights import project_sharded_

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        shards = {}
        for n, s in W_SHAPES.items():
            c = -(-s[0] // 2)
            shards[n] = RowShard(s, min(rank * c, s[0]), min(rank * c + c, s[0]), 2, rank, None)
        results = {}
        for unit, nm in (("matrix", False), ("row", False), ("matrix", True)):
            weights, masks = _weights_and_masks(nm)
            sm = SparsityMasks.from_tensors(masks)
            moving = MovingMask(sm, W_LAYOUTS, unit)
            trained = {n: shards[n].local(w + 0.25) for n, w in weights.items()}  # every entry moved
            planes = project_sharded_(moving, trained, sm, ShardedBackend(shards))
            results[(unit, nm)] = ({n: shards[n].gather(t) for n, t in trained.items()},
                                   {n: sm.get(n) for n in W_SHAPES}, sorted(planes), sm.source)
        out[rank] = results
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
def test_moving_mask_projection_on_shards_equals_one_process():
    from sau_trainer.masks import SparsityMasks
    from sau_trainer.moving_mask import MovingMask

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_project_worker, args=(port, out), nprocs=2, join=True)
    for unit, nm in (("matrix", False), ("row", False), ("matrix", True)):
        weights, masks = _weights_and_masks(nm)
        sm = SparsityMasks.from_tensors(masks)
        moving = MovingMask(sm, W_LAYOUTS, unit)
        trained = {n: w + 0.25 for n, w in weights.items()}
        moving.project_(trained, sm)
        for rank in (0, 1):
            got_w, got_m, planes, source = out[rank][(unit, nm)]
            assert planes == sorted(W_SHAPES) and source.startswith("moved")
            for n in W_SHAPES:
                assert torch.equal(got_m[n], sm.get(n)), (unit, nm, n, rank)
                assert torch.equal(got_w[n], trained[n]), (unit, nm, n, rank)
                assert not bool(got_w[n][~got_m[n]].any())
