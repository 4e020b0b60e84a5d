"""Run by test_objectives_ddp.py under torchrun (2 CPU processes, gloo): a short RMU or PDU run per rank."""

import hashlib
import json
import sys

import torch.distributed as dist
from sau_testing import ddp_worker_trainer, zeros_kept

from sau_trainer.masks import prunable_parameters


def _hash(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main(out_dir: str, objective: str) -> None:
    extra = dict(pdu_dual_warmup_epochs=0, pdu_epsilon=0.5, pdu_dual_lr=0.1) if objective == "pdu" else {}
    trainer, masks = ddp_worker_trainer(out_dir, objective=objective, **extra)
    model = trainer.model
    trainer.train()
    rank = dist.get_rank()
    report = {"rank": rank, "world": dist.get_world_size(),
              "zeros_kept": zeros_kept(model, masks),
              "weights_hash": _hash(p for p in prunable_parameters(model).values()),
              "tensors": {k: v.detach().cpu().double().reshape(-1).tolist()[:4]
                          for k, v in trainer.objective_ctx.tensors.items()},
              "tensors_hash": _hash(trainer.objective_ctx.tensors[k] for k in sorted(trainer.objective_ctx.tensors))}
    with open(f"{out_dir}/rank{rank}.json", "w") as f:
        json.dump(report, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
