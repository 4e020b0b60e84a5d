"""The losses of idkdpo, undial and ceu against float64 references computed by hand, position by position."""

import math

import torch

from sau_trainer.objectives.losses import (
    ceu_loss,
    ceu_targets,
    dpo_loss,
    ignore_first_answer_tokens,
    undial_loss,
    undial_targets,
)

V = 120  # > 100, so that UNDIAL's wrapped index V - 100 = 20 is a real token


def _batch(seed=0, b=2, t=6):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, V, generator=g, dtype=torch.float64) * 2
    ref = torch.randn(b, t, V, generator=g, dtype=torch.float64) * 2
    labels = torch.tensor([[-100, -100, 5, 7, 9, 2], [-100, 3, 4, 1, -100, -100]])  # row 1 right-padded
    return logits, ref, labels


def test_dpo_log_ratio_form():
    win, win_ref = torch.tensor([3.0, 9.5, 0.2]), torch.tensor([4.0, 8.0, 0.2])
    lose, lose_ref = torch.tensor([7.0, 1.0, 12.0]), torch.tensor([2.0, 1.5, 12.0])
    beta = 0.1
    want = 0.0
    for i in range(3):  # log-ratios rho = log p - log p_ref = -NLL + NLL_ref
        rho_w = -float(win[i]) + float(win_ref[i])
        rho_l = -float(lose[i]) + float(lose_ref[i])
        want += -math.log(1.0 / (1.0 + math.exp(-beta * (rho_w - rho_l))))
    want *= (2 / beta) / 3
    got = dpo_loss(win.double(), win_ref.double(), lose.double(), lose_ref.double(), beta)
    assert abs(float(got) - want) < 1e-12
    # at the start (model = reference) every log-ratio is 0: the loss is (2/beta) log 2
    z = torch.zeros(4, dtype=torch.float64)
    assert abs(float(dpo_loss(z + 5, z + 5, z + 3, z + 3, beta)) - 20 * math.log(2)) < 1e-12


def test_undial_adjusted_teacher_distribution_with_open_unlearning_index_wrap():
    logits, ref, labels = _batch()
    beta = 10.0
    got = undial_targets(ref, labels, beta).double()
    for i in range(2):
        for t in range(5):
            z = ref[i, t].clone()
            y = int(labels[i, t + 1])
            z[y if y >= 0 else V + y] -= beta  # -100 lands on V - 100, as torch indexing does in OU
            want = torch.exp(z - torch.logsumexp(z, 0))
            torch.testing.assert_close(got[i, t], want, rtol=1e-5, atol=1e-7)
    assert float(got[0, 0, V - 100]) < float(torch.softmax(ref[0, 0], 0)[V - 100])  # the quirk is there


def test_undial_loss_means_over_all_positions_or_supervised_ones():
    logits, ref, labels = _batch(1)
    beta = 3.0
    q = undial_targets(ref, labels, beta).double()
    terms = [-(q[i, t] * torch.log_softmax(logits[i, t], 0)).sum() for i in range(2) for t in range(5)]
    want_all = sum(terms) / 10  # OU: prompt and padding positions included
    sup = [k for k, (i, t) in enumerate((i, t) for i in range(2) for t in range(5)) if labels[i, t + 1] != -100]
    want_sup = sum(terms[k] for k in sup) / len(sup)
    assert abs(float(undial_loss(logits, ref, labels, beta)) - float(want_all)) < 1e-5
    assert abs(float(undial_loss(logits, ref, labels, beta, label_mask=True)) - float(want_sup)) < 1e-5
    # beta = 0 is plain self-distillation: with the model equal to the teacher the gradient vanishes
    same = logits.clone().requires_grad_(True)
    undial_loss(same, logits, labels, 0.0).backward()
    assert float(same.grad.abs().max()) < 1e-6


def test_ceu_ignores_the_first_answer_tokens():
    labels = torch.tensor([[-100, -100, 5, 7, 9, 2], [-100, 3, 4, 1, -100, -100]])
    assert ignore_first_answer_tokens(labels, 1).tolist() == [[-100, -100, -100, 7, 9, 2], [-100, -100, 4, 1, -100, -100]]
    assert ignore_first_answer_tokens(labels, 2).tolist() == [[-100, -100, -100, -100, 9, 2], [-100, -100, -100, 1, -100, -100]]
    assert ignore_first_answer_tokens(labels, 0).tolist() == labels.tolist()
    assert ignore_first_answer_tokens(labels, 5).eq(-100).all()


def test_ceu_target_distribution_and_loss():
    logits, _, labels = _batch(2)
    labels = ignore_first_answer_tokens(labels, 1)
    q, keep = ceu_targets(logits, labels)
    positions = [(i, t) for i in range(2) for t in range(5) if labels[i, t + 1] != -100]
    assert keep.sum() == len(positions) == 5
    want_loss = 0.0
    for k, (i, t) in enumerate(positions):
        y = int(labels[i, t + 1])
        z = logits[i, t]
        others = [v for v in range(V) if v != y]
        denom = sum(math.exp(float(z[v])) for v in others)
        want = torch.tensor([0.0 if v == y else math.exp(float(z[v])) / denom for v in range(V)], dtype=torch.float64)
        torch.testing.assert_close(q[k].double(), want, rtol=1e-5, atol=1e-8)
        want_loss += -float((want * torch.log_softmax(z, 0)).sum())
    want_loss /= len(positions)
    x = logits.clone().requires_grad_(True)
    loss = ceu_loss(x, labels)
    assert abs(float(loss.detach()) - want_loss) < 1e-5
    loss.backward()  # gradient w.r.t. the logits: (softmax(z) - q) / n at the kept positions, 0 elsewhere
    i, t = positions[0]
    torch.testing.assert_close(x.grad[i, t].double(), (torch.softmax(logits[i, t], 0) - q[0].double()) / 5,
                               rtol=1e-4, atol=1e-7)
    assert float(x.grad[0, 0].abs().max()) == 0.0  # a prompt position


def test_ceu_batch_without_supervised_positions_is_zero_not_nan():
    logits, _, labels = _batch(3)
    out = ceu_loss(logits.requires_grad_(True), torch.full_like(labels, -100))
    assert float(out.detach()) == 0.0


def test_undial_targets_leave_the_reference_logits_untouched():
    _, ref, labels = _batch(4)
    for dtype in (torch.float32, torch.bfloat16):
        r = ref.to(dtype)
        before = r.clone()
        undial_targets(r, labels, 10.0)
        assert torch.equal(r, before)
