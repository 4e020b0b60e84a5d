"""Run by tests/test_distributed.py under torchrun (2 CPU processes, gloo): one short SAU run per rank."""

import hashlib
import json
import sys

import torch
import torch.distributed as dist
from sau_testing import make_trainer, sparse_model

from sau_trainer.data.synthetic import generate_benchmark
from sau_trainer.data.tokenizer import train_tokenizer
from sau_trainer.masks import SparsityMasks, prunable_parameters


def main(out_dir: str) -> None:
    splits = generate_benchmark("tiny", 0)
    tok = train_tokenizer([r["question"] + " " + r["answer"] for r in splits["full"]], vocab_size=256)
    model = sparse_model(tok)
    masks = SparsityMasks.from_model(model)
    forget = [{"question": r["question"], "answer": r["answer"]} for r in splits["forget10"][:12]]
    retain = [{"question": r["question"], "answer": r["answer"]} for r in splits["retain90"][:24]]
    trainer = make_trainer(model, tok, forget, retain, out_dir, use_cpu=True, max_steps=3, optim="adamw_torch",
                           weight_decay=0.1, ddp_backend="gloo")
    trainer.train()
    state = trainer.sau_state
    h = hashlib.sha256()
    for name in sorted(state.selected):
        h.update(state.mask(name).cpu().numpy().tobytes())
        h.update(state.weights[name].cpu().numpy().tobytes())
    rank = dist.get_rank()
    zeros_kept = all(bool((p.detach()[~masks.get(n)] == 0).all()) for n, p in prunable_parameters(model).items())
    weights = torch.cat([p.detach().reshape(-1) for p in prunable_parameters(model).values()])
    report = {"rank": rank, "world": dist.get_world_size(), "state_hash": h.hexdigest(), "zeros_kept": zeros_kept,
              "weights_hash": hashlib.sha256(weights.numpy().tobytes()).hexdigest()}
    with open(f"{out_dir}/rank{rank}.json", "w") as f:
        json.dump(report, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
