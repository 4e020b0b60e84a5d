"""Two CPU processes (gloo): every rank holds the same G and W, and pruned weights stay zero."""

import json
from pathlib import Path

import pytest
from launch import torchrun

HERE = Path(__file__).parent


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_ranks_agree_and_zeros_stay(tmp_path):
    torchrun(HERE / "ddp_worker.py", tmp_path, timeout=600)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in reports] == [2, 2]
    assert reports[0]["state_hash"] == reports[1]["state_hash"]
    assert all(r["zeros_kept"] for r in reports)
    assert reports[0]["weights_hash"] == reports[1]["weights_hash"]  # DDP kept the replicas in sync
