"""`sau_trainer.shards` on 2 gloo processes against `sau.build_sau_state` on the full tensors: the same G (exactly,
ties included) and W for every scope and redistribution, with uneven row shards, a 1-D dense vector and a fused
expert tensor; the masks' local rows are what FSDP2's Shard(0) holds."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from launch import free_port

from sau_trainer.masks import Layout
from sau_trainer.sau import build_sau_state
from sau_trainer.shards import RowShard, build_sharded_sau_state

SHAPES = {"a.weight": (7, 5), "b.weight": (4, 6), "norm.weight": (9,), "experts.gate_up_proj": (3, 4, 5)}
LAYOUTS = {"experts.gate_up_proj": Layout(experts=True)}
CASES = [("matrix", "matrix"), ("row", "row"), ("global", "param"), ("matrix", "param"), ("row", "matrix"),
         ("global", "none")]


def _tensors():
    g = torch.Generator().manual_seed(0)
    # few distinct values: many ties at every threshold
    sal = {n: torch.randint(0, 4, s, generator=g).float() * 0.25 for n, s in SHAPES.items()}
    alive = {n: torch.rand(s, generator=g) > 0.4 for n, s in SHAPES.items()}
    return sal, alive


def _worker(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        sal, alive = _tensors()
        results = {}
        for scope, redistribution in CASES:
            shards = {}
            for n, s in SHAPES.items():
                c = -(-s[0] // 2)
                start, stop = min(rank * c, s[0]), min(rank * c + c, s[0])
                shards[n] = RowShard(s, start, stop, 2, rank, None)
            state = build_sharded_sau_state(
                {n: shards[n].local(sal[n]) for n in SHAPES}, {n: shards[n].local(alive[n]) for n in SHAPES}, shards,
                0.3, 0.1, scope, redistribution, global_names=["a.weight", "b.weight", "experts.gate_up_proj"],
                layouts=LAYOUTS)
            results[(scope, redistribution)] = ({n: state.mask(n) for n in SHAPES}, dict(state.weights), state.stats)
        out[rank] = results
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_sharded_selection_and_w_equal_one_process():
    port = free_port()
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(port, out), nprocs=2, join=True)
    sal, alive = _tensors()
    for scope, redistribution in CASES:
        ref = build_sau_state(sal, alive, 0.3, 0.1, scope, redistribution,
                              global_names=["a.weight", "b.weight", "experts.gate_up_proj"], layouts=LAYOUTS)
        for rank in (0, 1):
            masks, weights, stats = out[rank][(scope, redistribution)]
            for n in SHAPES:
                assert torch.equal(masks[n], ref.mask(n)), (scope, redistribution, n, rank)
                assert stats[n]["selected"] == ref.stats[n]["selected"]
                assert stats[n]["pruned_over_selected"] == pytest.approx(ref.stats[n]["pruned_over_selected"],
                                                                         rel=1e-12)
            assert set(weights) == set(ref.weights)
            for n, w in ref.weights.items():
                assert weights[n].shape == w.shape, (scope, redistribution, n)
                torch.testing.assert_close(weights[n], w, rtol=1e-6, atol=0)
