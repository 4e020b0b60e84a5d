"""Compatibility modes (`evaluate.compat`, ``compat=``) against short independent implementations of
open-unlearning's and MUSE's documented formulas (float64, written here from their definitions), and the
package defaults they depart from: truth ratio and forget quality, normalised probability, extraction
strength (EOS position, 1/|y| floor), MUSE VerbMem (no stemmer, reference cut to 128 tokens) and zlib."""

import json
import math
import re
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from sau_trainer.data.qa import IGNORE_INDEX, encode_qa
from sau_trainer.evaluation import evaluate_muse, evaluate_tofu
from sau_trainer.evaluation.compat import COMPAT_MODES, DEFINITIONS_VERSION, resolve
from sau_trainer.evaluation.results import attach_forget_quality, build_results
from sau_trainer.evaluation.tofu import teacher_forced_stats

EPS = 1e-10


# ----------------------------------------------------------------- the reference definitions, from their formulas
def ou_truth_ratio(nll_correct, nll_wrong):
    """open-unlearning: correct = exp(-avg loss), wrong = exp(-mean_j avg loss_j); R = wrong / (correct + 1e-10)."""
    correct = np.exp(-np.asarray(nll_correct, dtype=np.float64))
    wrong = np.exp(-np.array([np.mean(w) for w in nll_wrong], dtype=np.float64))
    return wrong / (correct + EPS)


def ou_closer_to_1(tr):
    return float(np.mean(np.minimum(tr, 1.0 / (tr + EPS))))


def ou_true_better(tr):
    return float(np.mean(np.maximum(0.0, 1.0 - tr)))


def ou_forget_quality(tr_model, tr_retain):
    return float(ks_2samp(1.0 / (tr_model + EPS), 1.0 / (tr_retain + EPS)).pvalue)


def ou_extraction_strength(preds, labels):
    """open-unlearning's loop over the labelled positions without the last (EOS): the first k whose suffix
    matches; the loop leaves k at n - 1 when none does."""
    preds, labels = preds[:-1], labels[:-1]
    n = len(labels)
    if n == 0:
        return 0.0
    for k in range(n):
        if preds[k:] == labels[k:]:
            break
    return 1.0 - k / n


def rouge_tokens(text):
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def lcs_f1(prediction, reference):
    """ROUGE-L F1 without stemming: LCS of the lower-cased alphanumeric tokens, F = 2PR / (P + R)."""
    a, b = rouge_tokens(reference), rouge_tokens(prediction)
    if not a or not b:
        return 0.0
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    lcs = table[-1][-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(b), lcs / len(a)
    return 2 * p * r / (p + r)


# ----------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def bench():
    from sau_trainer.data.synthetic import generate_benchmark

    return generate_benchmark("tiny", 0)


@pytest.fixture(scope="module")
def small(bench):
    from sau_trainer.data.tofu import evaluation_splits

    return {s: bench[s][:5] for s in evaluation_splits("forget10")}


@pytest.fixture(scope="module")
def tok(bench):
    from sau_trainer.data.tokenizer import train_tokenizer

    texts = [t for rows in bench.values() for r in rows for t in (r["question"], r["answer"])]
    return train_tokenizer(texts, vocab_size=400)


def _llama(tok, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=128, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).eval()


# ----------------------------------------------------------------- names
def test_unknown_compat_names_the_valid_ones(tok, small):
    with pytest.raises(ValueError, match="'open-unlearning', 'muse'"):
        resolve("openunlearning")
    with pytest.raises(ValueError, match="Unknown compat 'ou'.*'open-unlearning'"):
        evaluate_tofu(_llama(tok), tok, small, compat="ou", show_progress=False)
    with pytest.raises(ValueError, match="compat 'muse' defines MUSE metrics only.*'open-unlearning'"):
        evaluate_tofu(_llama(tok), tok, small, compat="muse", show_progress=False)
    assert set(COMPAT_MODES) == {"open-unlearning", "muse"}


def test_recipe_compat_is_checked_before_any_work():
    from sau_trainer.pipeline import RecipeError, validate

    with pytest.raises(RecipeError, match="evaluate.compat: Unknown compat 'ou': valid values are 'open-unl"):
        validate({"model": {"shape": "tiny"}, "evaluate": {"compat": "ou"}})
    with pytest.raises(RecipeError, match="evaluate.compat: compat 'muse' defines MUSE metrics only"):
        validate({"model": {"shape": "tiny"}, "evaluate": {"compat": "muse"}})  # the built-in TOFU benchmark
    with pytest.raises(RecipeError, match="evaluate.question_key: 'paraphrased_question' is for the TOFU"):
        validate({"model": {"shape": "tiny"}, "data": {"benchmark": "synthetic-muse"},
                  "evaluate": {"question_key": "paraphrased_question"}})
    assert validate({"model": {"shape": "tiny"}, "data": {"benchmark": "synthetic-muse"},
                     "evaluate": {"compat": "muse"}}).evaluate.compat == "muse"
    assert validate({"model": {"shape": "tiny"}, "evaluate": {"compat": "open-unlearning"}}).evaluate.compat


def test_definitions_enter_the_evaluation_hash_and_the_report():
    """A definitions change recomputes the evaluations and nothing else; report.md names the definitions."""
    from sau_trainer.pipeline import plan, validate
    from sau_trainer.pipeline.report import render_markdown
    from sau_trainer.pipeline.runner import hash_tasks

    base = {"model": {"shape": "tiny"}, "prune": {"method": ["magnitude"]}, "unlearn": {"objective": ["npo"]}}
    default = plan(validate(base))
    ou = plan(validate({**base, "evaluate": {"compat": "open-unlearning"}}))
    hash_tasks(default)
    hash_tasks(ou)
    for a, b in zip(default, ou, strict=True):
        assert (a.hash != b.hash) == (a.kind in ("evaluate", "report")), a.name
        if a.kind == "evaluate":
            assert a.settings["definitions"] == DEFINITIONS_VERSION
            assert (a.settings["evaluate"]["compat"], b.settings["evaluate"]["compat"]) == (None, "open-unlearning")
    md = render_markdown([], validate({**base, "evaluate": {"compat": "open-unlearning"}}))
    assert "- definitions: open-unlearning" in md
    assert "- definitions: package defaults" in render_markdown([], validate(base))


# ----------------------------------------------------------------- truth ratio and forget quality
def _forget_doc(nll_ref, nll_pert, compat=None):
    from sau_trainer.evaluation.metrics import log_truth_ratio

    return {"summary": {}, "compat": compat, "per_example": {"forget": {
        "question": [f"q{i}" for i in range(len(nll_ref))], "nll_reference": list(nll_ref),
        "nll_perturbed": [list(p) for p in nll_pert], "log_truth_ratio": log_truth_ratio(nll_ref, nll_pert).tolist()}}}


def test_forget_quality_once_losses_are_large():
    """An unlearned model at ~25 nats per token: open-unlearning's + 1e-10 dominates its ratio (compat), the
    package's log-space ratio does not (default)."""
    rng = np.random.default_rng(0)
    n = 40
    ref_retain = rng.uniform(0.8, 1.6, n)
    pert_retain = rng.uniform(1.2, 2.4, (n, 5))
    ref_model = rng.uniform(24.0, 26.0, n)  # the same spread of log R as the retain model's, 24 nats lower
    pert_model = ref_model[:, None] + rng.uniform(1.2, 2.4, (n, 5)) - rng.uniform(0.8, 1.6, (n, 1))
    retain = _forget_doc(ref_retain, pert_retain)
    expected_ou = ou_forget_quality(ou_truth_ratio(ref_model, pert_model), ou_truth_ratio(ref_retain, pert_retain))
    log_r_model = ref_model - pert_model.mean(1)
    log_r_retain = ref_retain - pert_retain.mean(1)
    expected_log = float(ks_2samp(np.exp(log_r_model), np.exp(log_r_retain)).pvalue)  # the raw R of TOFU
    ou = attach_forget_quality(_forget_doc(ref_model, pert_model, "open-unlearning"), retain)
    default = attach_forget_quality(_forget_doc(ref_model, pert_model), retain)
    assert ou["summary"]["forget_quality"] == pytest.approx(expected_ou, rel=1e-12)
    assert default["summary"]["forget_quality"] == pytest.approx(expected_log, rel=1e-12)
    assert expected_ou < 1e-6 < 0.05 < expected_log  # the two definitions disagree here, as the issue measured


def test_tofu_compat_open_unlearning_against_its_formulas(tok, small):
    model = _llama(tok)
    ou = evaluate_tofu(model, tok, small, batch_size=4, max_new_tokens=2, show_progress=False,
                       compat="open-unlearning")
    default = evaluate_tofu(model, tok, small, batch_size=4, max_new_tokens=2, show_progress=False)
    assert ou["compat"] == "open-unlearning" and default["compat"] is None
    s, per = ou["summary"], ou["per_example"]
    for name in ("forget", "retain", "real_authors", "world_facts"):
        ex = per[name]
        assert ex["nll_answer"] == default["per_example"][name]["nll_answer"]  # the same model pass
        tr = ou_truth_ratio(ex["nll_reference"], ex["nll_perturbed"])
        agg = ou_closer_to_1(tr) if name == "forget" else ou_true_better(tr)
        assert s[f"{name}_truth_ratio"] == pytest.approx(agg, rel=1e-12), name
        correct = np.exp(-np.asarray(ex["nll_reference"]))
        wrong = np.exp(-np.array([np.mean(w) for w in ex["nll_perturbed"]]))
        assert s[f"{name}_truth_ratio_prob_mean"] == pytest.approx(
            float(np.mean(correct / (correct + wrong + EPS))), rel=1e-12)
    for name in ("real_authors", "world_facts"):  # normalised probability with open-unlearning's + 1e-10
        ex = per[name]
        p = np.exp(-np.asarray(ex["nll_answer"]))
        others = np.array([np.sum(np.exp(-np.asarray(w))) for w in ex["nll_perturbed"]])
        assert s[f"{name}_probability"] == pytest.approx(float(np.mean(p / (p + others + EPS))), rel=1e-12)
    # forget quality against another model's results, from both models' NLLs
    other = evaluate_tofu(_llama(tok, seed=3), tok, small, batch_size=4, max_new_tokens=1, show_progress=False)
    fq = attach_forget_quality(ou, other)["summary"]["forget_quality"]
    f, g = per["forget"], other["per_example"]["forget"]
    assert fq == pytest.approx(ou_forget_quality(ou_truth_ratio(f["nll_reference"], f["nll_perturbed"]),
                                                 ou_truth_ratio(g["nll_reference"], g["nll_perturbed"])), rel=1e-12)
    # results.json says which definitions were used
    doc = build_results(ou, {"name": "m"}, {})
    assert (doc["compat"], doc["definitions"], doc["definitions_version"]) == (
        "open-unlearning", "open-unlearning", DEFINITIONS_VERSION)
    assert build_results(default, {"name": "m"}, {})["definitions"] == "package defaults"


# ----------------------------------------------------------------- extraction strength
class Oracle(torch.nn.Module):
    """A stand-in LM whose argmax is the true next token of its input, except where `wrong(next_id)` holds."""

    def __init__(self, vocab_size, wrong):
        super().__init__()
        self.vocab_size, self.wrong = vocab_size, wrong
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # for the device lookup

    def forward(self, input_ids, attention_mask=None):
        nxt = torch.roll(input_ids, -1, dims=1)
        nxt = torch.where(self.wrong(nxt), (nxt + 1) % self.vocab_size, nxt)
        return SimpleNamespace(logits=torch.nn.functional.one_hot(nxt, self.vocab_size).float() * 10 + self.anchor)


@pytest.mark.parametrize("case", ["eos_wrong", "all_wrong", "some_wrong"])
def test_extraction_strength_drops_the_eos_and_compat_keeps_the_floor(tok, small, case):
    eos = tok.eos_token_id
    wrong = {"eos_wrong": lambda t: t == eos, "all_wrong": lambda t: torch.ones_like(t, dtype=torch.bool),
             "some_wrong": lambda t: (t == eos) | (t % 3 == 0)}[case]
    model = Oracle(len(tok), wrong)
    rows = small["forget10_perturbed"]
    pairs = [(r["question"], r["answer"]) for r in rows]
    expected_ou, expected_default = [], []
    for q, a in pairs:  # the reference: preds and labels over the answer tokens and the EOS, then the loop
        enc = encode_qa(tok, q, a)
        ids = torch.tensor([enc["input_ids"]])
        preds = model(ids).logits[0, :-1].argmax(-1).tolist()
        labelled = [t - 1 for t, lab in enumerate(enc["labels"]) if lab != IGNORE_INDEX]
        p, lab = [preds[t] for t in labelled], [enc["labels"][t + 1] for t in labelled]
        assert lab[-1] == eos
        expected_ou.append(ou_extraction_strength(p, lab))
        n = len(lab) - 1  # without the EOS; the package's default ends at k = n when no suffix matches
        k = next((k for k in range(n + 1) if p[k:n] == lab[k:n]), n)
        expected_default.append(1.0 - k / n)
    default = teacher_forced_stats(model, tok, pairs, batch_size=3, show_progress=False)["extraction_strength"]
    ou = teacher_forced_stats(model, tok, pairs, batch_size=2, show_progress=False,
                              extraction_quirk=resolve("open-unlearning").extraction_strength_quirk)
    assert ou["extraction_strength"] == pytest.approx(expected_ou, abs=1e-12)
    assert default == pytest.approx(expected_default, abs=1e-12)
    if case == "eos_wrong":  # every answer token is predicted: 1 (with the EOS scored, 0)
        assert default == [1.0] * len(pairs)
    if case == "all_wrong":  # no suffix: 0 by SPEC section 5, 1/|y| in open-unlearning's loop
        assert default == [0.0] * len(pairs) and all(0 < v < 0.5 for v in ou["extraction_strength"])


# ----------------------------------------------------------------- MUSE
def test_rouge_l_f1_without_stemming_matches_the_lcs_definition():
    from sau_trainer.evaluation.metrics import rouge_l_f1

    cases = [("the cats were running home", "The cat was running to home."), ("running cats", "run cat"),
             ("a b c d", "d c b a"), ("", "x")]
    got = rouge_l_f1([p for p, _ in cases], [r for _, r in cases], stemmer=False)
    assert got == pytest.approx([lcs_f1(p, r) for p, r in cases], abs=1e-12)
    assert got[1] == 0.0 and rouge_l_f1(["running cats"], ["run cat"])[0] == 1.0  # stemmed by default


@pytest.fixture(scope="module")
def muse_small():
    from sau_trainer.data import get_benchmark, load_benchmark
    from sau_trainer.data.tokenizer import train_tokenizer

    splits = load_benchmark("synthetic-muse")
    tok = train_tokenizer(get_benchmark("synthetic-muse").tokenizer_texts(splits), vocab_size=300)
    return {k: v[:3] for k, v in splits.items()}, tok


def test_muse_compat_verbmem_and_zlib_against_muse_formulas(muse_small, monkeypatch):
    from tokenizers.processors import TemplateProcessing

    from sau_trainer.benchmarks.muse import evaluation as muse_module  # where evaluate_muse reads it
    from sau_trainer.evaluation import generation
    from sau_trainer.modeling import build_llama

    splits, tok = muse_small
    splits = {**splits, "verbmem/forget": [{**r, "gt": f"{r['gt']} {r['gt']}"} for r in splits["verbmem/forget"]]}
    tok._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    gts = [r["gt"] for r in splits["verbmem/forget"]]
    real = generation.generate_from_ids

    def fake(model, tokenizer, prompts, *args, desc="", **kwargs):  # verbmem "generates" its whole ground truth
        return list(gts) if desc == "MUSE verbmem" else real(model, tokenizer, prompts, *args, desc=desc, **kwargs)

    monkeypatch.setattr(generation, "generate_from_ids", fake)
    monkeypatch.setattr(muse_module, "PRIVLEAK_MAX_TOKENS", 48)  # News-length texts, in miniature: cut
    model = build_llama({"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                         "num_key_value_heads": 1, "max_position_embeddings": 512}, tok, seed=0)
    kw = dict(batch_size=3, show_progress=False, knowmem_max_new_tokens=2, verbmem_max_new_tokens=8, gradnorm=False)
    muse = evaluate_muse(model, tok, splits, compat="muse", **kw)
    default = evaluate_muse(model, tok, splits, **kw)
    for gt, got in zip(gts, muse["per_example"]["verbmem_forget"]["rouge_l_f1"], strict=True):
        content = tok(gt, add_special_tokens=False)["input_ids"]
        assert len(content) > 127  # the cut matters
        reference = tok.decode(content[:127])  # 128 tokens with the BOS
        assert got == pytest.approx(lcs_f1(gt, reference), abs=1e-12) and got < 0.99
    assert default["per_example"]["verbmem_forget"]["rouge_l_f1"] == pytest.approx([1.0] * len(gts))
    for part in ("forget", "holdout"):  # texts cut to 48 tokens; MUSE compresses the full text
        texts = [r["text"] for r in splits[f"privleak/{part}"]]
        ex, ex_default = muse["per_example"]["mia"][part], default["per_example"]["mia"][part]
        assert ex["loss"] == ex_default["loss"]
        assert ex["zlib"] == pytest.approx(
            [loss / len(zlib.compress(t.encode("utf-8"))) for loss, t in zip(ex["loss"], texts, strict=True)],
            rel=1e-12)
        assert all(a != pytest.approx(b, rel=1e-6) for a, b in zip(ex["zlib"], ex_default["zlib"], strict=True))
    assert muse["compat"] == "muse" and build_results(muse, {}, {})["definitions"] == "muse"
    assert muse["summary"]["forget_knowmem_rouge"] == default["summary"]["forget_knowmem_rouge"]
    assert not math.isclose(muse["summary"]["forget_verbmem_rouge"], default["summary"]["forget_verbmem_rouge"])


def test_eval_command_never_reuses_results_of_older_definitions(tok, tmp_path, monkeypatch, caplog):
    """`sau-trainer eval` reuses a results.json computed with the same settings, but not with other metric
    definitions (the extraction strength of version 1 counted the EOS position)."""
    import logging

    from sau_trainer.cli import main as cli_main
    from sau_trainer.evaluation import compat

    model_dir = tmp_path / "model"
    _llama(tok).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    out = tmp_path / "eval"
    args = ["eval", "--model", str(model_dir), "--benchmark", "synthetic", "--output-dir", str(out),
            "--max-new-tokens", "1", "--batch-size", "64", "--no-progress"]
    caplog.set_level(logging.INFO)
    assert cli_main(args) == 0
    first = json.loads((out / "results.json").read_text())
    assert first["definitions"] == "package defaults" and first["definitions_version"] == DEFINITIONS_VERSION
    caplog.clear()
    assert cli_main(args) == 0 and "Reusing" in caplog.text
    monkeypatch.setattr(compat, "DEFINITIONS_VERSION", DEFINITIONS_VERSION + 1)
    caplog.clear()
    assert cli_main(args) == 0 and "Reusing" not in caplog.text
    again = json.loads((out / "results.json").read_text())
    assert again["definitions_version"] == DEFINITIONS_VERSION + 1 and again["settings_hash"] != first["settings_hash"]
