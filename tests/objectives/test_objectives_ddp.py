"""Two CPU processes (gloo): RMU trains under DDP (the blocks above the hooked one get no gradient) with the
same control vector on both ranks; PDU's dual variable moves identically on both ranks (the retain loss of
the dual step is averaged over processes); the replicas stay in sync and pruned weights stay zero."""

import json
from pathlib import Path

import pytest
from launch import torchrun, worker_env

HERE = Path(__file__).parent


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("objective", ["rmu", "pdu"])
def test_two_process_ranks_agree(tmp_path, objective):
    torchrun(HERE / "objective_ddp_worker.py", tmp_path, objective, env=worker_env(HERE), timeout=600)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    print(objective, [r["tensors"] for r in reports])
    assert [r["world"] for r in reports] == [2, 2]
    assert all(r["zeros_kept"] for r in reports)
    assert reports[0]["weights_hash"] == reports[1]["weights_hash"]
    assert reports[0]["tensors_hash"] == reports[1]["tensors_hash"]
    if objective == "pdu":
        assert reports[0]["tensors"]["pdu_dual"][0] > 1.0  # lambda moved (retain NLL > epsilon = 0.5)
