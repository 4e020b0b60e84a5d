"""Saliency against float64 references (SPEC invariant 4), and the pass leaves everything as it found it."""

import copy

import pytest
import torch
from sau_testing import qa, sparse_model

from sau_trainer.data.qa import QACollator, tokenize_rows
from sau_trainer.masks import prunable_parameters
from sau_trainer.objectives import forward_nll
from sau_trainer.objectives.losses import mean_token_nll, sequence_nll
from sau_trainer.saliency import compute_saliency


def _loss(model, batch):
    return mean_token_nll(*forward_nll(model, batch)[:2])


@pytest.fixture
def setup(tokenizer, tiny_splits):
    model = sparse_model(tokenizer, attn_implementation="eager")
    rows = tokenize_rows(qa(tiny_splits, "forget10", 10), tokenizer)
    collate = QACollator(tokenizer)
    batches = [collate(rows[i : i + 4]) for i in range(0, len(rows), 4)]  # 4, 4, 2: a ragged last batch
    return model, rows, batches


def test_batch_granularity_matches_float64_loop(setup):
    model, _, batches = setup
    params = prunable_parameters(model)
    got = compute_saliency(model, batches, _loss, params, granularity="batch", show_progress=False)
    ref_model = copy.deepcopy(model).double()
    ref_params = prunable_parameters(ref_model)
    ref = {n: torch.zeros_like(p) for n, p in ref_params.items()}
    for batch in batches:
        grads = torch.autograd.grad(_loss(ref_model, batch), list(ref_params.values()))
        for n, g in zip(ref_params, grads, strict=True):
            ref[n] += g.square()
    for n in ref:
        ref[n] /= len(batches)
        assert got[n].dtype == torch.float32
        torch.testing.assert_close(got[n].double(), ref[n], rtol=2e-3, atol=1e-3 * float(ref[n].max()))
        assert (got[n][model.get_parameter(n) == 0] > 0).any()  # pruned entries get saliency too


def test_example_granularity_matches_torch_func_float64(setup):
    from torch.func import functional_call, grad, vmap

    model, rows, batches = setup
    params = prunable_parameters(model)
    got = compute_saliency(model, batches, _loss, params, granularity="example", show_progress=False)
    ref_model = copy.deepcopy(model).double()
    fixed = {k: v.detach() for k, v in ref_model.named_parameters() if k not in params}
    target = {k: v.detach() for k, v in ref_model.named_parameters() if k in params}
    full = QACollator(pad_token_id=0)(rows)  # right padding: causal attention keeps it out of the answer

    def loss_one(p, ids, mask, labels):
        out = functional_call(ref_model, {**fixed, **p}, (ids[None],), {"attention_mask": mask[None]})
        nll_sum, count = sequence_nll(out.logits, labels[None])
        return nll_sum.sum() / count.sum()

    per_example = vmap(grad(loss_one), in_dims=(None, 0, 0, 0))(
        target, full["input_ids"], full["attention_mask"], full["labels"]
    )
    for n in params:
        ref = per_example[n].square().mean(0)
        torch.testing.assert_close(got[n].double(), ref, rtol=2e-3, atol=1e-3 * float(ref.max()))


def test_granularities_differ_and_batch_depends_on_batch_size(setup, tokenizer):
    model, rows, batches = setup
    params = prunable_parameters(model)
    name = next(iter(params))
    per_batch = compute_saliency(model, batches, _loss, params, show_progress=False)[name]
    per_example = compute_saliency(model, batches, _loss, params, granularity="example", show_progress=False)[name]
    assert float(per_example.sum()) > float(per_batch.sum())  # averaging inside a batch cancels gradient noise
    pairs = [QACollator(tokenizer)(rows[i : i + 2]) for i in range(0, len(rows), 2)]
    per_pair = compute_saliency(model, pairs, _loss, params, show_progress=False)[name]
    assert float(per_batch.sum()) < float(per_pair.sum()) < float(per_example.sum())  # s depends on the batch size
    one_each = compute_saliency(model, [QACollator(tokenizer)([r]) for r in rows], _loss, params, show_progress=False)
    torch.testing.assert_close(one_each[name], per_example, rtol=1e-4, atol=1e-12)  # batch size 1 == per example


def test_pass_leaves_model_and_rng_as_found(setup):
    model, _, batches = setup
    model.train()
    model.model.layers[0].eval()  # a mixed train/eval state must come back as it was
    params = prunable_parameters(model)
    frozen = model.model.embed_tokens.weight
    frozen.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    marker = torch.ones_like(model.lm_head.weight)
    model.lm_head.weight.grad = marker
    rng = torch.get_rng_state()
    compute_saliency(model, batches, _loss, params, max_examples=6, show_progress=False)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and not model.model.layers[0].training and model.model.layers[1].training
    assert model.lm_head.weight.grad is marker and not frozen.requires_grad
    assert all(p.grad is None for p in params.values())


def test_max_examples_limits_the_pass(setup):
    model, _, batches = setup
    params = prunable_parameters(model)
    name = next(iter(params))
    first_batch_only = compute_saliency(model, batches[:1], _loss, params, show_progress=False)[name]
    limited = compute_saliency(model, batches, _loss, params, max_examples=4, show_progress=False)[name]
    assert torch.equal(first_batch_only, limited)


def test_gradient_checkpointing_stays_on_in_the_pass(setup):
    """The pass runs in train mode: checkpointed layers recompute their forward in backward."""
    model, _, batches = setup
    model.gradient_checkpointing_enable()
    model.eval()
    calls = []
    handle = model.model.layers[0].self_attn.register_forward_hook(lambda *a: calls.append(1))
    compute_saliency(model, batches[:1], _loss, prunable_parameters(model), show_progress=False)
    handle.remove()
    assert len(calls) == 2  # forward + recomputation
    assert not model.training  # and the mode is restored


@pytest.mark.parametrize("reentrant", [True, False])
def test_saliency_through_gradient_checkpointing_equals_the_plain_pass(setup, reentrant):
    """transformers 4.57 checkpoints reentrantly by default and adds no input-grad hook; the pass freezes the
    embeddings, so without its own temporary hook the backward fails ("element 0 of tensors does not require
    grad"). Both kinds of checkpointing give the plain pass's saliency, and no hook is left behind."""
    model, _, batches = setup
    params = prunable_parameters(model)
    plain = compute_saliency(model, batches, _loss, params, show_progress=False)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    if hasattr(model, "_require_grads_hook"):  # transformers 5.x adds one: remove it, as 4.57 has none
        model.disable_input_require_grads()
    embeddings = model.get_input_embeddings()
    hooks_before = dict(embeddings._forward_hooks)
    recomputed = []
    handle = model.model.layers[1].mlp.register_forward_pre_hook(lambda *a: recomputed.append(1))
    got = compute_saliency(model, batches, _loss, params, show_progress=False)
    handle.remove()
    assert len(recomputed) == 2 * len(batches)  # checkpointing was on: every forward ran again in backward
    assert dict(embeddings._forward_hooks) == hooks_before
    assert all(p.requires_grad for p in model.parameters())
    for n in params:
        assert float(plain[n].max()) > 0
        torch.testing.assert_close(got[n], plain[n], rtol=1e-5, atol=1e-6 * float(plain[n].max()))
