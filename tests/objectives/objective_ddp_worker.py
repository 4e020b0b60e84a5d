"""Run by test_objectives_ddp.py under torchrun (2 CPU processes, gloo): a short RMU or PDU run per rank."""

import hashlib
import json
import sys

import torch.distributed as dist
from sau_testing import make_trainer, sparse_model

from sau_trainer.data.synthetic import generate_benchmark
from sau_trainer.data.tokenizer import train_tokenizer
from sau_trainer.masks import SparsityMasks, prunable_parameters


def _hash(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main(out_dir: str, objective: str) -> None:
    splits = generate_benchmark("tiny", 0)
    tok = train_tokenizer([r["question"] + " " + r["answer"] for r in splits["full"]], vocab_size=256)
    model = sparse_model(tok)
    masks = SparsityMasks.from_model(model)
    forget = [{"question": r["question"], "answer": r["answer"]} for r in splits["forget10"][:12]]
    retain = [{"question": r["question"], "answer": r["answer"]} for r in splits["retain90"][:24]]
    extra = dict(pdu_dual_warmup_epochs=0, pdu_epsilon=0.5, pdu_dual_lr=0.1) if objective == "pdu" else {}
    trainer = make_trainer(model, tok, forget, retain, out_dir, use_cpu=True, max_steps=3, optim="adamw_torch",
                           ddp_backend="gloo", objective=objective, **extra)
    trainer.train()
    rank = dist.get_rank()
    report = {"rank": rank, "world": dist.get_world_size(),
              "zeros_kept": all(bool((p.detach()[~masks.get(n)] == 0).all())
                                for n, p in prunable_parameters(model).items()),
              "weights_hash": _hash(p for p in prunable_parameters(model).values()),
              "tensors": {k: v.detach().cpu().double().reshape(-1).tolist()[:4]
                          for k, v in trainer.objective_ctx.tensors.items()},
              "tensors_hash": _hash(trainer.objective_ctx.tensors[k] for k in sorted(trainer.objective_ctx.tensors))}
    with open(f"{out_dir}/rank{rank}.json", "w") as f:
        json.dump(report, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
