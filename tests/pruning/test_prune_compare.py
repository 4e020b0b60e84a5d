"""SparseGPT against Magnitude (Wanda beside) on the shared model trained until it memorised its QA set.

Prints a table of layer-output reconstruction error and perplexity; asserts SparseGPT wins with a margin
at 50% unstructured and at 2:4.
"""

import pytest
import torch

from sau_trainer.pruning import perplexity, prune_model
from sau_trainer.pruning.calibration import make_batches

METHODS = ("magnitude", "wanda", "sparsegpt")


@torch.no_grad()
def layer_output_error(dense, pruned, samples) -> float:
    """Mean over decoder layers of ``||h_pruned - h_dense||^2 / ||h_dense||^2`` on real tokens."""
    num, den = None, None
    for ids, mask in make_batches(samples, 16):
        hd = dense(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[1:]
        hp = pruned(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[1:]
        keep = mask.bool()
        n = torch.stack([(p - d)[keep].pow(2).sum() for p, d in zip(hp, hd, strict=True)])
        m = torch.stack([d[keep].pow(2).sum() for d in hd])
        num, den = (n, m) if num is None else (num + n, den + m)
    return float((num / den).mean())


@pytest.mark.slow
def test_sparsegpt_beats_magnitude_on_a_trained_model(memorized):
    from sau_trainer.data.qa import encode_qa

    tok, texts = memorized.tokenizer, memorized.texts
    calibration = texts[::3]  # a third of the training texts; every answer is evaluated
    rows = [encode_qa(tok, r["question"], r["answer"]) for r in memorized.rows]  # the training format
    samples = [torch.tensor(r["input_ids"]) for r in rows]
    dense = memorized.load_model().eval()
    dense_ppl = perplexity(dense, rows)  # answer (+ EOS) tokens only, as trained
    results = {}
    for structure in ("unstructured", "2:4"):
        for method in METHODS:
            model = memorized.load_model().eval()
            prune_model(model, method, None if structure == "2:4" else 0.5, structure, calibration=calibration,
                        tokenizer=tok, num_samples=len(calibration), seq_len=256, progress=False)
            results[structure, method] = (layer_output_error(dense, model, samples), perplexity(model, rows))
    print(f"\ndense answer perplexity {dense_ppl:.4f} on {len(rows)} memorised QA pairs ({len(calibration)} used for calibration)")
    print(f"{'structure':<13}{'method':<11}{'layer-out rel err':>18}{'perplexity':>12}")
    for (structure, method), (err, ppl) in results.items():
        print(f"{structure:<13}{method:<11}{err:>18.4f}{ppl:>12.4f}")
    for structure in ("unstructured", "2:4"):
        mag_err, mag_ppl = results[structure, "magnitude"]
        sgpt_err, sgpt_ppl = results[structure, "sparsegpt"]
        assert sgpt_err < 0.75 * mag_err, structure
        assert sgpt_ppl - dense_ppl < 0.75 * (mag_ppl - dense_ppl), structure  # margin on the damage done
