"""Membership-inference attacks against hand-computed references (METHODS.md section 2.1-2.4)."""

import math
import zlib

import pytest
import torch

from sau_trainer.evaluation import mia
from sau_trainer.evaluation.mia import (
    drop_last,
    min_k_score,
    privleak,
    roc_auc,
    sequence_scores,
    token_statistics,
    zlib_score,
)


def test_min_k_plus_plus_per_token_against_hand_computation():
    # One sequence, 3 positions, vocabulary of 3; labels at positions 1 and 2 (position 0 is the prompt).
    logits = torch.tensor([[[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [2.0, 2.0, 2.0]]])
    labels = torch.tensor([[-100, 1, 2]])
    st = token_statistics(logits, labels)
    for t, (row, target) in enumerate([([1.0, 2.0, 0.5], 1), ([0.0, -1.0, 3.0], 2)]):
        lse = math.log(sum(math.exp(v) for v in row))
        logp = [v - lse for v in row]
        p = [math.exp(v) for v in logp]
        mu = sum(pi * li for pi, li in zip(p, logp, strict=True))
        var = sum(pi * li * li for pi, li in zip(p, logp, strict=True)) - mu * mu
        z = (logp[target] - mu) / math.sqrt(var)
        assert st["logp"][0, t].item() == pytest.approx(logp[target], abs=1e-6)
        assert st["z"][0, t].item() == pytest.approx(z, abs=1e-5)
    assert st["mask"].tolist() == [[True, True]]
    assert st["mask_trunc"].tolist() == [[True, False]]  # the last supervised position is dropped
    assert st["correct"].tolist() == [[True, True]]  # argmax 1 then 2
    # a uniform distribution has variance 0: it is clamped to 1e-6, so z stays finite (= 0 here)
    flat = token_statistics(torch.zeros(1, 2, 4), torch.tensor([[-100, 3]]))
    assert flat["z"][0, 0].item() == pytest.approx(0.0, abs=1e-3)


def test_min_k_takes_the_floor_of_k_n_smallest_and_at_least_one():
    values = torch.tensor([-1.0, -5.0, -3.0, -2.0, -4.0])
    assert min_k_score(values, 0.4) == pytest.approx(4.5)  # floor(0.4 * 5) = 2: -5 and -4
    assert min_k_score(values, 0.1) == pytest.approx(5.0)  # floor(0.5) = 0 -> at least 1
    assert min_k_score(values, 1.0) == pytest.approx(3.0)
    assert min_k_score(torch.tensor([]), 0.4) == 0.0


def test_zlib_ratio():
    text = "Blue Harbor Prize, Blue Harbor Prize"
    compressed = len(zlib.compress(text.encode("utf-8")))
    assert compressed < len(text)  # the repeat compresses
    assert zlib_score(2.5, text) == pytest.approx(2.5 / compressed)


def test_auc_orientation_and_ties():
    # holdout (non-members) scoring higher than forget (members) -> AUC near 1
    assert roc_auc([0.1, 0.2], [0.9, 0.8]) == 1.0
    assert roc_auc([0.9, 0.8], [0.1, 0.2]) == 0.0
    # pairs (1,3) (1,2) (2,3) win, (2,2) is a tie counted 1/2: 3.5 / 4
    assert roc_auc([1.0, 2.0], [3.0, 2.0]) == pytest.approx(0.875)
    assert roc_auc([1.0, 1.0], [1.0]) == 0.5
    with pytest.raises(ValueError, match="at least one"):
        roc_auc([], [1.0])


def test_privleak_formula():
    assert privleak(1.0, 0.5) == pytest.approx(-100.0)  # target: AUC 1 against a retain model at chance
    assert privleak(0.5, 0.5) == 0.0
    assert privleak(0.3, 0.6) == pytest.approx(((1 - 0.3) - (1 - 0.6)) / ((1 - 0.6) + 1e-10) * 100)
    assert privleak(0.3, 0.6) == pytest.approx(75.0)
    assert privleak(0.7) == pytest.approx(-40.0)  # the default retain AUC is open-unlearning's 0.5


def test_drop_last():
    mask = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert drop_last(mask).int().tolist() == [[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


class NextTokenModel(torch.nn.Module):
    """Logits that put `margin` on the true next token, except at the given (row, position) pairs."""

    def __init__(self, vocab: int, wrong: set[tuple[int, int]] = frozenset(), margin: float = 4.0):
        super().__init__()
        self.vocab, self.wrong, self.margin = vocab, set(wrong), margin
        self.bias = torch.nn.Parameter(torch.zeros(vocab))
        self.rows: list[list[int]] = []

    def forward(self, input_ids, attention_mask=None):
        b, t = input_ids.shape
        logits = self.bias.expand(b, t, self.vocab).clone()
        for i in range(b):
            key = tuple(input_ids[i].tolist())
            r = next(k for k, row in enumerate(self.rows) if tuple(row) == key[: len(row)])
            for pos in range(t - 1):
                nxt = int(input_ids[i, pos + 1])
                target = (nxt + 1) % self.vocab if (r, pos) in self.wrong else nxt
                logits[i, pos, target] += self.margin
        return type("Out", (), {"logits": logits})()


class CharTokenizer:
    pad_token_id, eos_token_id, bos_token_id = 0, 1, 2

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(ord("a") + i - 3) for i in ids if not (skip_special_tokens and i < 3))


def test_sequence_scores_em_es_and_zlib_text():
    rows = [{"input_ids": [2, 5, 6, 7, 8, 1], "labels": [-100, -100, 6, 7, 8, 1]},
            {"input_ids": [2, 4, 4, 4], "labels": [-100, 4, 4, 4]}]
    # row 0: positions 1..4 predict 6 7 8 1; the last (EOS) is dropped for EM/ES/min-k; position 2 (-> 7) wrong
    model = NextTokenModel(10, wrong={(0, 2)})
    model.rows = [r["input_ids"] for r in rows]
    out = sequence_scores(model, CharTokenizer(), rows, batch_size=2, gradnorm=True)
    assert out["exact_memorization"] == pytest.approx([2 / 3, 1.0])
    # row 0 scored positions predict 6, 7, 8: correct, wrong, correct -> the correct suffix starts at 2: 1 - 2/3
    assert out["extraction_strength"] == pytest.approx([1 / 3, 1.0])
    # the loss attack averages over every supervised token (EOS included); zlib divides by the decoded answer
    v = 10
    lp_hit = 4.0 - math.log(math.exp(4.0) + v - 1)
    lp_miss = -math.log(math.exp(4.0) + v - 1)
    assert out["loss"][0] == pytest.approx(-(3 * lp_hit + lp_miss) / 4, abs=1e-5)
    assert out["zlib"][0] == pytest.approx(out["loss"][0] / len(zlib.compress(b"def")), abs=1e-6)
    assert out["min_k"][0] == pytest.approx(-lp_miss, abs=1e-5)  # floor(0.4 * 3) = 1: the worst token
    assert len(out["gradnorm"]) == 2 and all(g > 0 for g in out["gradnorm"])


def test_gradnorm_is_the_mean_of_per_tensor_norms_and_leaves_the_model_as_it_was():
    from sau_trainer.modeling import build_llama

    torch.manual_seed(0)
    model = build_llama({"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                         "num_key_value_heads": 1, "vocab_size": 20, "max_position_embeddings": 32})
    model.eval()
    model.lm_head.weight.requires_grad_(False)
    row = {"input_ids": [1, 5, 7, 9, 3], "labels": [-100, -100, 7, 9, 3]}
    [score] = mia.gradnorm_scores(model, [row])
    # reference: the mean NLL of the supervised tokens except the last (positions predicting 7 and 9)
    ref = build_llama({"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "num_key_value_heads": 1, "vocab_size": 20, "max_position_embeddings": 32})
    ref.load_state_dict(model.state_dict())
    ref.double()
    logits = ref(input_ids=torch.tensor([row["input_ids"]])).logits[0]
    logp = torch.log_softmax(logits, -1)
    loss = -(logp[1, 7] + logp[2, 9]) / 2
    loss.backward()
    norms = [p.grad.norm() for p in ref.parameters() if p.grad is not None]
    assert score == pytest.approx(float(torch.stack(norms).mean()), rel=1e-4)
    assert all(p.grad is None for p in model.parameters())
    assert not model.training and not model.lm_head.weight.requires_grad
