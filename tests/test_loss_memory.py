"""The answer-token losses shift the labels, not the logits: equal to float64 references, and about half
the peak memory of slicing ``logits[:, :-1]`` (which copies the full-vocabulary logits)."""

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from sau_trainer.data.qa import IGNORE_INDEX
from sau_trainer.objectives.losses import ceu_loss, kl_to_reference, sequence_nll, shift_labels, token_nll


def _batch(dtype, b=3, t=17, v=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g).mul(3).to(dtype)
    ref = torch.randn(b, t, v, generator=g).mul(3).to(dtype)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[:, :6] = IGNORE_INDEX  # prompts
    labels[1, 11:] = IGNORE_INDEX  # right padding
    labels[2] = IGNORE_INDEX  # a row without any supervised token
    return logits, ref, labels


def _reference_token_nll(logits, labels):
    """float64, one position at a time: -log softmax(z_t)[y_{t+1}] where y_{t+1} is supervised, else 0."""
    b, t, _ = logits.shape
    out = torch.zeros(b, t - 1, dtype=torch.float64)
    for i in range(b):
        for j in range(t - 1):
            if labels[i, j + 1] != IGNORE_INDEX:
                out[i, j] = -torch.log_softmax(logits[i, j].double(), -1)[labels[i, j + 1]]
    return out


def test_shift_labels():
    labels = torch.tensor([[-100, 5, 6, -100], [-100, -100, 7, 8]])
    assert torch.equal(shift_labels(labels), torch.tensor([[5, 6, -100, -100], [-100, 7, 8, -100]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_values_and_gradients_equal_float64(dtype):
    logits, ref, labels = _batch(dtype)
    logits.requires_grad_(True)
    want = _reference_token_nll(logits.detach(), labels)
    nll, keep = token_nll(logits, labels)
    assert nll.dtype == torch.float32 and nll.shape == keep.shape == (3, 16)
    assert torch.equal(keep, labels[:, 1:] != IGNORE_INDEX)
    torch.testing.assert_close(nll.double(), want, rtol=1e-5, atol=1e-5)
    nll_sum, count = sequence_nll(logits, labels)
    torch.testing.assert_close(nll_sum.double(), want.sum(1), rtol=1e-5, atol=1e-5)
    assert count.tolist() == [11, 5, 0] and nll_sum[2] == 0

    (grad,) = torch.autograd.grad(nll_sum.sum(), logits)
    ref_logits = logits.detach().double().requires_grad_(True)
    shifted = ref_logits[:, :-1]
    (want_grad,) = torch.autograd.grad(sum(-torch.log_softmax(shifted[i, j], -1)[labels[i, j + 1]]
                                           for i in range(3) for j in range(16) if labels[i, j + 1] != IGNORE_INDEX),
                                       ref_logits)
    assert grad.dtype == dtype and not grad[:, -1].any()  # the last position predicts nothing
    torch.testing.assert_close(grad.double(), want_grad, rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-5)

    # KL(p_ref || p) over the supervised positions, and CE-U, against float64 loops over the same positions
    pos = [(i, j) for i in range(3) for j in range(16) if labels[i, j + 1] != IGNORE_INDEX]
    kl = sum(F.kl_div(torch.log_softmax(logits[i, j].detach().double(), -1),
                      torch.log_softmax(ref[i, j].double(), -1), log_target=True, reduction="sum") for i, j in pos)
    torch.testing.assert_close(kl_to_reference(logits, ref, labels).double(), kl / len(pos), rtol=1e-5, atol=1e-6)
    ceu = 0.0
    for i, j in pos:
        z = logits[i, j].detach().double()
        q = torch.softmax(z.scatter(0, labels[i, j + 1].view(1), float("-inf")), -1)
        ceu = ceu - (q * torch.log_softmax(z, -1)).sum()
    torch.testing.assert_close(ceu_loss(logits, labels).double(), ceu / len(pos), rtol=1e-5, atol=1e-6)


def _sliced_sequence_nll(logits, labels):
    """The former definition (slices the logits), kept here to compare memory and values."""
    shifted = logits[:, :-1].float()
    targets = labels[:, 1:]
    nll = F.cross_entropy(shifted.reshape(-1, shifted.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX,
                          reduction="none").view(targets.shape)
    return nll.sum(dim=1), (targets != IGNORE_INDEX).sum(dim=1)


def _peak_bytes(fn) -> int:
    """Peak of CPU tensor memory allocated while `fn` runs, from the profiler's allocation records
    (tracemalloc does not see torch's CPU allocations)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for _, nbytes in sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events()
                            if e.self_cpu_memory_usage):
        live += nbytes
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_peak_memory_of_forward_and_backward_halves(dtype):
    b, t, v = 4, 128, 8000  # half of the positions supervised, as in QA batches
    logits = torch.randn(b, t, v).to(dtype).requires_grad_(True)
    labels = torch.randint(0, v, (b, t))
    labels[:, : t // 2] = IGNORE_INDEX
    logits_bytes = logits.numel() * logits.element_size()
    peaks, values = {}, {}
    for name, fn in (("sliced", _sliced_sequence_nll), ("shifted", sequence_nll)):
        def step(fn=fn, name=name):
            nll_sum, count = fn(logits, labels)
            (nll_sum.sum() / count.sum()).backward()
            values[name] = (nll_sum.detach(), logits.grad)
            logits.grad = None

        peaks[name] = _peak_bytes(step)
    assert torch.equal(values["sliced"][0], values["shifted"][0])  # bit-identical values and gradients
    assert torch.equal(values["sliced"][1], values["shifted"][1])
    # sliced: a full fp32 copy of the logits on top of everything else (2x the logits in fp32, 4x in bf16)
    assert peaks["sliced"] > (1.9 if dtype == torch.float32 else 3.8) * logits_bytes
    assert peaks["shifted"] < 0.55 * peaks["sliced"], peaks


def test_inside_vmap_every_position_gives_the_same_values():
    """`torch.func.vmap` cannot batch a boolean-mask selection: there the NLL uses every position."""
    from torch.func import vmap

    logits, _, labels = _batch(torch.float32)
    direct = sequence_nll(logits, labels)[0]
    mapped = vmap(lambda z, y: sequence_nll(z[None], y[None])[0][0])(logits, labels)
    torch.testing.assert_close(mapped, direct, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(mapped.double(), _reference_token_nll(logits, labels).sum(1), rtol=1e-5, atol=1e-5)
