"""Run by tests/test_distributed.py under torchrun (2 CPU processes, gloo): one short SAU run per rank."""

import hashlib
import json
import sys

import torch
import torch.distributed as dist
from sau_testing import ddp_worker_trainer, zeros_kept

from sau_trainer.masks import prunable_parameters


def main(out_dir: str) -> None:
    trainer, masks = ddp_worker_trainer(out_dir, weight_decay=0.1)
    model = trainer.model
    trainer.train()
    state = trainer.sau_state
    h = hashlib.sha256()
    for name in sorted(state.selected):
        h.update(state.mask(name).cpu().numpy().tobytes())
        h.update(state.weights[name].cpu().numpy().tobytes())
    rank = dist.get_rank()
    weights = torch.cat([p.detach().reshape(-1) for p in prunable_parameters(model).values()])
    report = {"rank": rank, "world": dist.get_world_size(), "state_hash": h.hexdigest(),
              "zeros_kept": zeros_kept(model, masks), "weights_hash": hashlib.sha256(weights.numpy().tobytes()).hexdigest()}
    with open(f"{out_dir}/rank{rank}.json", "w") as f:
        json.dump(report, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
