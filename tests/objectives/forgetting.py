"""Helpers of the forgetting contract (tests/objectives/test_forgetting.py), one run each.

One run: the shared memorised model (dense, or a 50% magnitude-pruned copy), unlearned for `steps` optimizer
steps at `LR` with the objective at its defaults, plain or SAU; measured before and after in eval mode: the
answer NLL (token mean) of the forget set and of 40 retain rows. The control is GradDiff with
``forget_weight=0`` (the retain term alone) under the same settings, run once per (model, plain/SAU) and
shared by every objective of the session.
"""

from __future__ import annotations

import math

import torch
from sau_testing import make_trainer, qa

from sau_trainer.data.qa import QACollator, tokenize_rows
from sau_trainer.objectives import forward_nll

LR, STEPS, BATCH = 3e-3, 16, 4
_CONTROLS: dict[tuple, dict] = {}


@torch.no_grad()
def answer_nll(model, tok, rows) -> float:
    """Token-mean answer NLL of `rows` (eval mode)."""
    model.eval()
    batch = QACollator(tok)(tokenize_rows(rows, tok))
    nll_sum, count, _ = forward_nll(model, batch)
    return float(nll_sum.sum() / count.sum())


def forget_rows(benchmark, objective: str) -> list[dict]:
    """The forget rows the objective trains on: forget10, with TOFU's perturbed answers as AltPO's alternates."""
    rows = qa(benchmark, "forget10")
    if objective == "altpo":
        from sau_trainer.data.alternates import attach_perturbed

        rows = attach_perturbed(rows, benchmark["forget10_perturbed"])
    return rows


def run(memorized, out, objective: str, sparse: bool, sau: bool, steps: int = STEPS, **kw) -> dict:
    """Unlearn with `objective`; returns the NLLs before/after, the logs, the pruned-entry check and the trainer."""
    from sau_trainer.masks import prunable_parameters
    from sau_trainer.pruning import prune_model

    tok = memorized.tokenizer
    forget, retain = qa(memorized.benchmark, "forget10"), qa(memorized.benchmark, "retain90")
    model = memorized.load_model()
    if sparse:
        prune_model(model, "magnitude", sparsity=0.5)
    pruned = {n: p.detach() == 0 for n, p in prunable_parameters(model).items()}
    before = {"forget": answer_nll(model, tok, forget), "retain": answer_nll(model, tok, retain[:40])}
    trainer = make_trainer(model, tok, forget_rows(memorized.benchmark, objective), retain, out, objective=objective,
                           sau=sau, learning_rate=LR, max_steps=steps, per_device_train_batch_size=BATCH, **kw)
    trainer.train()
    after = {"forget": answer_nll(model, tok, forget), "retain": answer_nll(model, tok, retain[:40])}
    params = prunable_parameters(model)
    zeros_kept = all(bool((params[n].detach()[m] == 0).all()) for n, m in pruned.items())
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {"before": before, "after": after, "logs": logs, "zeros_kept": zeros_kept, "trainer": trainer,
            "finite": all(math.isfinite(h["loss"]) for h in logs), "sparsity": sum(int(m.sum()) for m in pruned.values())}


def control(memorized, tmp_path_factory, sparse: bool, sau: bool) -> dict:
    """GradDiff with forget_weight=0 (retain term alone) under the same settings; cached for the session."""
    key = (sparse, sau)
    if key not in _CONTROLS:
        out = tmp_path_factory.mktemp(f"control-{'sparse' if sparse else 'dense'}-{'sau' if sau else 'plain'}")
        _CONTROLS[key] = run(memorized, out, "graddiff", sparse, sau, forget_weight=0.0)
    return _CONTROLS[key]
