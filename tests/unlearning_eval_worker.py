"""Run by tests/test_unlearning_eval_callback.py on 2 CPU processes (DDP under torchrun, or FSDP2 under `accelerate
launch --config_file recipes/accelerate/fsdp2_cpu.yaml`): a short SAU run with `UnlearningEvaluationCallback`.

    python tests/unlearning_eval_worker.py OUT

The evaluation runs real forward passes (sharded ones under FSDP2) and returns each rank's own number in
``rank_marker``; utility and forget quality are scripted by step so that the best evaluation under the floor is
step 2. Every rank writes OUT/rank<r>.json: its trajectory, best, whether its final (local) weights equal the ones it
held at step 2, and a hash of them; rank 0 also checks the pruned entries of the saved full model.
"""

import hashlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from sau_testing import sparse_model  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from sau_trainer import SAUConfig, SAUTrainer, UnlearningEvaluationCallback  # noqa: E402
from sau_trainer.data.qa import QACollator, tokenize_rows  # noqa: E402
from sau_trainer.data.synthetic import generate_benchmark  # noqa: E402
from sau_trainer.data.tokenizer import train_tokenizer  # noqa: E402
from sau_trainer.shards import local  # noqa: E402

UTILITY = {0: 1.0, 1: 0.95, 2: 0.92, 3: 0.5, 4: 0.4}


class LocalWeights(TrainerCallback):
    def __init__(self):
        self.at = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.at[state.global_step] = {n: local(p.detach()).clone() for n, p in model.named_parameters()}


def main(out: str) -> None:
    splits = generate_benchmark("tiny", 0)
    tok = train_tokenizer([r["question"] + " " + r["answer"] for r in splits["full"]], vocab_size=256)
    model = sparse_model(tok)
    forget = [{"question": r["question"], "answer": r["answer"]} for r in splits["forget10"][:16]]
    retain = [{"question": r["question"], "answer": r["answer"]} for r in splits["retain90"][:32]]
    batch = QACollator(tok)(tokenize_rows(forget[:8], tok, 64, name="eval rows"))
    args = SAUConfig(output_dir=out, use_cpu=True, report_to=[], per_device_train_batch_size=2,
                     gradient_accumulation_steps=2, learning_rate=1e-3, max_steps=4, logging_steps=1,
                     disable_tqdm=True, save_strategy="no", seed=0, optim="adamw_torch", lr_scheduler_type="constant",
                     weight_decay=0.1, objective="graddiff", saliency_batch_size=4, ddp_backend="gloo")
    recorder = LocalWeights()
    ref = [None]

    def evaluate(m):
        loss = float(m(**{k: v.to(args.device) for k, v in batch.items()}).loss)
        step = ref[0].state.global_step
        return {"forget_nll": loss, "rank_marker": float(dist.get_rank()), "model_utility": UTILITY[step],
                "forget_quality": float(step)}

    cb = UnlearningEvaluationCallback(evaluate, eval_steps=1, best="forget_quality", utility_fraction=0.9)
    trainer = ref[0] = SAUTrainer(model, args, forget_dataset=forget, retain_dataset=retain, processing_class=tok,
                                  callbacks=[recorder, cb])
    trainer.train()
    final = {n: local(p.detach()) for n, p in trainer.model.named_parameters()}
    best = recorder.at[cb.best["step"]]
    h = hashlib.sha256()
    for n in sorted(final):
        h.update(final[n].contiguous().numpy().tobytes())
    trainer.save_model(os.path.join(out, "final"))  # every rank takes part (FSDP2 gathers the full weights)
    rank = dist.get_rank()
    report = {"rank": rank, "world": dist.get_world_size(), "trajectory": cb.trajectory, "best": cb.best,
              "best_loaded": all(torch.equal(final[n], best[n]) for n in final),
              "final_differs_from_last": any(not torch.equal(final[n], recorder.at[4][n]) for n in final),
              "sharded": any(hasattr(p, "to_local") for p in trainer.model.parameters()),
              "weights_hash": h.hexdigest(), "distributed_type": str(trainer.accelerator.distributed_type)}
    if rank == 0:
        from safetensors.torch import load_file

        from sau_trainer.masks import SparsityMasks

        saved = load_file(os.path.join(out, "final", "model.safetensors"))
        masks = SparsityMasks.load(os.path.join(out, "final"))
        report["pruned_nonzero"] = sum(int(saved[n][~masks.get(n)].count_nonzero()) for n in masks.names)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1])
