"""An ordinary SAU script, as a user writes it (no FSDP or DeepSpeed arguments): run by tests/test_sharded.py on
one process (`python`) and under `accelerate launch --config_file recipes/accelerate/<config>.yaml`.

    python tests/sharded_worker.py OUT [key=value ...]

Keys: steps, ga (gradient accumulation), odd (an intermediate size not divisible by 2: uneven shards), scope,
redistribution, target (sau_redistribution_target), dense (sau_dense_params), objective, bf16, gc (gradient
checkpointing), resume (a checkpoint directory to resume from), save_steps, lr, optim, skip (skip_nonfinite_steps),
retain (saliency_retain_aware), mass (sau_topk_mass), moving (sau_moving_mask).
Writes OUT/final (save_model), on the main process OUT/report.json, and on every rank OUT/diverged-RANK.json (what
`TrainingDiverged` said there, or null).
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from sau_testing import sparse_model  # noqa: E402

from sau_trainer import SAUConfig, SAUTrainer, TrainingDiverged  # noqa: E402
from sau_trainer.data.synthetic import generate_benchmark  # noqa: E402
from sau_trainer.data.tokenizer import train_tokenizer  # noqa: E402

SALIENCY_PASSES = [0]


def _count_saliency_passes() -> None:
    import sau_trainer.training.callbacks as cb

    inner = cb.compute_saliency

    def counted(*a, **k):
        SALIENCY_PASSES[0] += 1
        return inner(*a, **k)

    cb.compute_saliency = counted


def main(out: str, opts: dict[str, str]) -> None:
    _count_saliency_passes()
    splits = generate_benchmark("tiny", 0)
    tok = train_tokenizer([r["question"] + " " + r["answer"] for r in splits["full"]], vocab_size=256)
    kw = {"intermediate_size": 75} if opts.get("odd") == "1" else {}
    model = sparse_model(tok, **kw)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    forget = [{"question": r["question"], "answer": r["answer"]} for r in splits["forget10"][:16]]
    retain = [{"question": r["question"], "answer": r["answer"]} for r in splits["retain90"][:32]]
    steps, save_steps = int(opts.get("steps", 3)), int(opts.get("save_steps", 0))
    args = SAUConfig(
        output_dir=out, use_cpu=True, report_to=[], per_device_train_batch_size=2,
        learning_rate=float(opts.get("lr", 1e-3)), skip_nonfinite_steps=opts.get("skip") == "1",
        gradient_accumulation_steps=int(opts.get("ga", 1)), max_steps=steps, logging_steps=1, disable_tqdm=True,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500, seed=0,
        optim=opts.get("optim", "adamw_torch"),
        lr_scheduler_type="constant", weight_decay=0.1, max_grad_norm=1.0, objective=opts.get("objective", "graddiff"),
        sau_topk=0.3, saliency_batch_size=4, sau_topk_scope=opts.get("scope", "matrix"),
        sau_redistribution=opts.get("redistribution", "matrix"),
        sau_redistribution_target=opts.get("target", "grad"), sau_dense_params=opts.get("dense", "train"),
        bf16=opts.get("bf16") == "1", gradient_checkpointing=opts.get("gc") == "1",
        saliency_retain_aware=opts.get("retain") == "1",
        sau_topk_mass=float(opts["mass"]) if "mass" in opts else None, sau_moving_mask=opts.get("moving", "off"),
    )
    trainer = SAUTrainer(model, args, forget_dataset=forget, retain_dataset=retain, processing_class=tok)
    diverged = None
    try:
        trainer.train(resume_from_checkpoint=opts.get("resume") or None)
    except TrainingDiverged as err:  # every rank must raise it at the same step (or none)
        diverged = {"step": err.step, "what": err.what, "learning_rate": err.learning_rate,
                    "last_finite_loss": err.last_finite_loss, "global_step": trainer.state.global_step}
    with open(os.path.join(out, f"diverged-{trainer.args.process_index}.json"), "w") as f:
        json.dump(diverged, f)
    trainer.save_model(os.path.join(out, "final"))
    if trainer.args.process_index == 0:
        from safetensors.torch import load_file

        from sau_trainer.masks import prunable_parameters

        final = load_file(os.path.join(out, "final", "model.safetensors"))
        names = list(prunable_parameters(model))
        alive = sum(int((initial[n] != 0).sum()) for n in names)
        changed = sum(int(((final[n] != initial[n]) & (initial[n] != 0)).sum()) for n in names)
        report = {
            "surviving_changed": changed / alive,
            "world": trainer.args.world_size,
            "distributed_type": str(trainer.accelerator.distributed_type),
            "sharded": trainer.backend.sharded,
            "backend": trainer.backend.name,
            "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
            "mask_shapes": {n: list(trainer.sau_state.mask(n).shape) for n in trainer.sau_state.selected},
            "saliency_passes": SALIENCY_PASSES[0],
            "pruned_nonzero": sum(int(((final[n] != 0) & (initial[n] == 0)).sum()) for n in names),
            "nonfinite": sum(int((~final[n].isfinite()).sum()) for n in final),
            "skipped": trainer._divergence.skipped,
        }
        with open(os.path.join(out, "report.json"), "w") as f:
            json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1], dict(a.split("=", 1) for a in sys.argv[2:]))
