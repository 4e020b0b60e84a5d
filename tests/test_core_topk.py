"""`sau_trainer.core.topk`: one owner for SAU's top-k by threshold, on one process and over row shards.

The global selection (`select_topk_global`) and the sharded search (FSDP2's units that span ranks) are the same
function; here it is checked against a plain sort with the documented tie order, and on row blocks of 2 and 3
simulated ranks (threads that all-reduce and all-gather through shared memory) against one process.
"""

from __future__ import annotations

import threading

import pytest
import torch

import sau_trainer.core.selection as selection
from sau_trainer.core import topk
from sau_trainer.core.selection import select_topk, select_topk_global
from sau_trainer.core.topk import threshold_select, topk_count


def test_one_owner_of_the_search():
    from sau_trainer.parallel import search
    from sau_trainer.shards import threshold_select as old_path

    assert search.threshold_select is topk.threshold_select is old_path
    assert selection.topk_count is topk_count


def test_global_selection_runs_the_search(monkeypatch):
    calls = []

    def spy(groups, k, reductions=None, quotas=None):
        calls.append(len(groups[0]))
        return threshold_select(groups, k, reductions, quotas)

    monkeypatch.setattr(selection, "threshold_select", spy)
    sal = {"a": torch.rand(3, 4), "b": torch.rand(2, 5)}
    select_topk_global(sal, {n: torch.ones_like(s, dtype=torch.bool) for n, s in sal.items()}, 0.5)
    assert calls == [2]  # one group: every matrix together


def _sorted_reference(sal: dict, alive: dict, k: float) -> dict:
    """Top ceil(k |S|) by a stable sort on (-s, matrix order, flat index) of every surviving entry."""
    names = list(sal)
    values = torch.cat([torch.where(alive[n], sal[n], torch.full_like(sal[n], -1.0)).reshape(-1) for n in names])
    order = torch.sort(-values, stable=True).indices
    quota = topk_count(int(sum(int(alive[n].sum()) for n in names)), k)
    flat = torch.zeros(values.numel(), dtype=torch.bool)
    flat[order[:quota]] = True
    out, start = {}, 0
    for n in names:
        out[n] = flat[start:start + sal[n].numel()].reshape(sal[n].shape)
        start += sal[n].numel()
    return out


@pytest.mark.parametrize("seed", range(6))
def test_global_selection_is_the_sort_with_ties_in_matrix_then_index_order(seed):
    g = torch.Generator().manual_seed(seed)
    sal = {f"m{i}": torch.randint(0, 4, (int(torch.randint(1, 7, (1,), generator=g)), 5), generator=g).float() / 3
           for i in range(3)}  # few distinct values: many ties at the threshold
    alive = {n: torch.rand(s.shape, generator=g) > 0.3 for n, s in sal.items()}
    got = select_topk_global(sal, alive, 0.41)
    want = _sorted_reference(sal, alive, 0.41)
    assert all(torch.equal(got[n], want[n]) for n in sal)
    assert sum(int(v.sum()) for v in got.values()) == topk_count(sum(int(a.sum()) for a in alive.values()), 0.41)


def test_global_selection_looks_masks_up_one_at_a_time():
    # a lazy mapping of masks (`LazyMasks` unpacks one per lookup): every lookup goes through __getitem__
    sal = {"a": torch.tensor([[3.0, 1.0], [2.0, 2.0]]), "b": torch.tensor([2.0, 0.5, 4.0])}
    full = {"a": torch.tensor([[True, True], [False, True]]), "b": torch.tensor([True, True, True])}

    class Lazy:
        looked_up = 0

        def __getitem__(self, name):
            Lazy.looked_up += 1
            return full[name].clone()

    got = select_topk_global(sal, Lazy(), 0.5)  # 6 surviving: the top 3 are 4.0, 3.0 and the first 2.0 (in "a")
    assert got["a"].tolist() == [[True, False], [False, True]] and got["b"].tolist() == [False, False, True]
    assert Lazy.looked_up > 2


class _Ranks:
    """`world` threads that sum and gather int64 vectors through shared memory, as `Backend` does over ranks."""

    def __init__(self, world: int):
        self.world, self.barrier, self.slots = world, threading.Barrier(world), [None] * world

    def backend(self, rank: int):
        ranks = self

        class One:
            world = ranks.world

            def __init__(self):
                self.rank = rank

            def _exchange(self, t):
                ranks.slots[self.rank] = t.clone()
                ranks.barrier.wait()
                got = list(ranks.slots)
                ranks.barrier.wait()  # every rank has read before the next exchange writes
                return got

            def all_reduce_sum(self, t):
                return t.copy_(torch.stack(self._exchange(t)).sum(0))

            def all_gather(self, t):
                return torch.stack(self._exchange(t))

        return One()


def _on_ranks(world: int, fn):
    ranks, results, errors = _Ranks(world), [None] * world, []

    def run(r):
        try:
            results[r] = fn(r, ranks.backend(r))
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)
            ranks.barrier.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    return results


def _blocks(t: torch.Tensor, world: int, rank: int) -> torch.Tensor:
    """This rank's contiguous block of rows (FSDP2's Shard(0); the last ranks may hold fewer or none)."""
    per = -(-t.shape[0] // world)
    return t[rank * per:(rank + 1) * per]


@pytest.mark.parametrize("world", [2, 3])
def test_row_shards_select_what_one_process_selects(world):
    g = torch.Generator().manual_seed(world)
    sal = {"a": torch.randint(0, 3, (5, 4), generator=g).float(), "b": torch.randint(0, 3, (4, 6), generator=g).float()}
    alive = {n: torch.rand(s.shape, generator=g) > 0.25 for n, s in sal.items()}
    everything = {n: torch.ones_like(a) for n, a in alive.items()}

    def pieces(r):
        return {n: (_blocks(sal[n], world, r), _blocks(alive[n], world, r), _blocks(everything[n], world, r))
                for n in sal}

    def search(r, backend):
        p = pieces(r)
        return (threshold_select([[p["a"][:2], p["b"][:2]]], 0.37, backend),  # the global pool
                threshold_select([[p["a"][:2]], [p["b"][:2]]], 0.37, backend),  # two units at once
                threshold_select([[(p["a"][0], p["a"][2], p["a"][1])]], 0.37, backend),  # a budget (moving mask)
                threshold_select([[p["b"][:2]]], None, backend, quotas=[7]))  # a given count

    results = _on_ranks(world, search)

    def joined(i, group, item):
        return torch.cat([res[i][group][item] for res in results])

    want = select_topk_global(sal, alive, 0.37)
    assert torch.equal(joined(0, 0, 0), want["a"]) and torch.equal(joined(0, 0, 1), want["b"])
    for group, n in enumerate(("a", "b")):
        assert torch.equal(joined(1, group, 0), select_topk(sal[n], alive[n], 0.37))
    assert torch.equal(joined(2, 0, 0), select_topk(sal["a"], everything["a"], 0.37, budget=alive["a"]))
    (one,), = threshold_select([[(sal["b"], alive["b"])]], None, quotas=[7])
    assert torch.equal(joined(3, 0, 0), one) and int(one.sum()) == 7
