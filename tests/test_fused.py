"""The fused, sync-free sparsity passes: the kernels against eager references, and inside the trainer, every
optimizer step against plain reference functions of what the passes compute (``where(G, grad * W, 0)`` or
``where(M, grad, 0)`` on the raw accumulated gradient, then torch's clipping; the weights after the step with
pruned entries at +0.0): bit-identical gradients and weights, and in ``update`` mode one AdamW step scaled by W
against a float64 reference within float32 rounding."""

import importlib.util

import pytest
import torch
from sau_testing import GradRecorder, make_trainer, qa, sparse_model
from torch.overrides import TorchFunctionMode
from transformers import TrainerCallback

from sau_trainer.core import fused  # the module itself: its kernel state (_compile_failed) is read
from sau_trainer.fused import pack_planes, scale_update_, unpack_planes, where_
from sau_trainer.masks import SparsityMasks, pack_bool, prunable_parameters, unpack_bool
from sau_trainer.sau import apply_sau_
from sau_trainer.sparsity import optimizer_keeps_zeros

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
BNB = pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes")


@pytest.fixture
def kernels(request, monkeypatch):
    monkeypatch.setenv("SAU_TRAINER_KERNELS", request.param)
    yield request.param
    assert fused._compile_failed is None  # the compiled kernels really ran (no silent fallback)


# (kernel mode, dtype): compiling each variant costs seconds, so compiled bf16 is in the slow set only
KERNEL_CASES = [("eager", torch.float32), ("eager", torch.bfloat16), ("compile", torch.float32),
                pytest.param("compile", torch.bfloat16, marks=pytest.mark.slow)]


def _bits(t):
    return t.view(torch.int16 if t.element_size() == 2 else torch.int32)


# --------------------------------------------------------------------------- representation
@pytest.mark.parametrize("shape", [(16, 24), (3, 5), (1,), (8, 16, 4), (5, 7, 9)])
def test_bit_planes_round_trip_and_file_format(shape, tmp_path):
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(shape, generator=g) > 0.4
    planes = pack_planes(mask)
    assert planes.dtype == torch.uint8 and planes.numel() == -(-mask.numel() // 8)
    assert torch.equal(unpack_planes(planes, shape), mask)
    # entry k * m + j sits in bit k of byte j
    flat, m = mask.reshape(-1), planes.numel()
    for i in range(flat.numel()):
        assert bool((int(planes[i % m]) >> (i // m)) & 1) == bool(flat[i])
    # memory keeps planes, files keep the sequential packing
    masks = SparsityMasks.from_tensors({"w": mask})
    assert masks.nbytes() == planes.numel() and torch.equal(masks.get("w"), mask)
    from safetensors.torch import load_file

    assert torch.equal(load_file(masks.save(tmp_path))["w"], pack_bool(mask))
    assert torch.equal(SparsityMasks.load(tmp_path).get("w"), mask)
    assert torch.equal(SparsityMasks({"w": pack_bool(mask)}, {"w": shape}).get("w"), mask)


# --------------------------------------------------------------------------- the kernels
def _weights(shape):
    """Every W shape the SAU state holds for a tensor of `shape` (None, 0-d, per row, per expert, full)."""
    g = torch.Generator().manual_seed(1)
    out = [None, torch.tensor(1.123456789)]
    if len(shape) == 2:
        out.append(1 + torch.rand(shape[0], 1, generator=g))
    if len(shape) == 3:
        out += [1 + torch.rand(shape[0], 1, 1, generator=g), 1 + torch.rand(shape[0], shape[1], 1, generator=g),
                1 + torch.rand(shape[0], 1, shape[2], generator=g)]
    out.append(1 + torch.rand(shape, generator=g))
    return out


@pytest.mark.parametrize("kernels,dtype", KERNEL_CASES, indirect=["kernels"])
@pytest.mark.parametrize("shape", [(64, 48), (8, 16, 12), (6, 10), (4, 6, 6)])
def test_where_equals_eager_reference_bit_for_bit(kernels, dtype, shape):
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(shape, generator=g) > 0.5
    base = torch.randn(shape, generator=g).to(dtype)
    base.view(-1)[:4] = torch.tensor([float("nan"), float("inf"), -0.0, -3.0], dtype=dtype)
    mask.view(-1)[:4] = torch.tensor([False, False, False, False])  # NaN/inf/negatives outside the mask: +0.0
    planes = pack_planes(mask)
    for w in _weights(shape):
        ref = apply_sau_(base.clone(), mask, w)
        got = where_(base.clone(), planes, w)
        assert torch.equal(_bits(got), _bits(ref)), (shape, None if w is None else tuple(w.shape))
        assert torch.equal(_bits(got[~mask]), _bits(torch.zeros_like(got[~mask])))  # exactly +0.0


@pytest.mark.parametrize("kernels", ["eager", "compile"], indirect=True)
def test_where_many_equals_one_by_one(kernels):
    """All matrices of a pass in one compiled call: the same bits as the reference, mixed shapes and W kinds."""
    g = torch.Generator().manual_seed(3)
    items, refs = [], []
    for shape in [(64, 48), (8, 16, 12), (6, 10), (16, 8), (64, 48)]:
        for w in _weights(shape)[:3]:
            mask = torch.rand(shape, generator=g) > 0.5
            t = torch.randn(shape, generator=g)
            refs.append(apply_sau_(t.clone(), mask, w))
            items.append((t, pack_planes(mask), w))
    fused.where_many_(items)
    for (t, _, _), ref in zip(items, refs, strict=True):
        assert torch.equal(_bits(t), _bits(ref))


@pytest.mark.parametrize("kernels,dtype", KERNEL_CASES, indirect=["kernels"])
@pytest.mark.parametrize("shape", [(64, 48), (8, 16, 12)])
def test_scale_update_equals_boolean_index_reference(kernels, dtype, shape):
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(shape, generator=g) > 0.6
    old = torch.randn(shape, generator=g).to(dtype)
    new = (old.float() + 1e-2 * torch.randn(shape, generator=g)).to(dtype)
    for w in _weights(shape)[1:]:
        ref = new.clone()  # the previous implementation: a boolean-index gather and scatter
        ww = w.expand_as(ref)[mask] if w.dim() else w
        ref[mask] = (old[mask].float() + ww * (new[mask].float() - old[mask].float())).to(dtype)
        got = scale_update_(new.clone(), old, pack_planes(mask), w)
        assert torch.equal(got[~mask], new[~mask])
        # an FMA where the reference rounds twice: at most one unit in the last place of the dtype
        torch.testing.assert_close(got, ref, rtol=0, atol=float(ref.abs().max()) * torch.finfo(dtype).eps)


def test_compiled_kernels_really_compile():
    """On this machine the compiled path runs (a compiler is present) and is what `auto` picks for large tensors."""
    assert fused._can_compile(torch.device("cpu"))
    big = torch.zeros(fused.COMPILE_MIN_NUMEL)
    assert fused._use_compiled(big) and not fused._use_compiled(torch.zeros(8))


# --------------------------------------------------------------------------- zero-keeping optimizers
@pytest.mark.parametrize("make", [
    lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
    lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, foreach=False),
    lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, fused=True),
    lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, amsgrad=True, maximize=True),
    lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=0.1),
    lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True),
    lambda ps: torch.optim.SGD(ps, lr=1e-1),
    lambda ps: torch.optim.SGD(ps, lr=1e-1, momentum=0.9, nesterov=True, weight_decay=0.1),
    lambda ps: torch.optim.SGD(ps, lr=1e-1, momentum=0.9, dampening=0.5, weight_decay=0.1),
], ids=["adamw", "adamw-loop", "adamw-fused", "adamw-amsgrad-max", "adam-l2", "adam-decoupled", "sgd",
        "sgd-nesterov-wd", "sgd-dampening-wd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_zero_keeping_optimizers_leave_zero_gradient_zeros_exactly(make, dtype):
    """The reason the re-zero can be skipped: a zero weight whose gradient is always exactly zero stays +0.0."""
    g = torch.Generator().manual_seed(0)
    keep = torch.rand(32, 40, generator=g) > 0.5
    p = torch.nn.Parameter(torch.randn(32, 40, generator=g).masked_fill(~keep, 0.0).to(dtype))  # +0.0
    opt = make([p])
    assert optimizer_keeps_zeros(opt)
    for _ in range(5):
        p.grad = (torch.randn(32, 40, generator=g) * 10).to(dtype)
        where_(p.grad, pack_planes(keep))
        opt.step()
        assert torch.equal(_bits(p.detach()[~keep]), _bits(torch.zeros_like(p.detach()[~keep])))
    assert (p.detach()[keep] != 0).all()


@BNB
@pytest.mark.filterwarnings("ignore")
def test_bnb_8bit_adamw_moves_zero_gradient_entries_so_is_not_trusted():
    import bitsandbytes as bnb

    g = torch.Generator().manual_seed(0)
    keep = torch.rand(64, 128, generator=g) > 0.5
    p = torch.nn.Parameter(torch.randn(64, 128, generator=g) * keep)
    opt = bnb.optim.AdamW8bit([p], lr=1e-2, weight_decay=0.0, min_8bit_size=16)
    assert not optimizer_keeps_zeros(opt)
    for _ in range(3):
        p.grad = torch.randn(64, 128, generator=g) * keep
        opt.step()
    assert (p.detach()[~keep] != 0).any()  # why the re-zero stays for it


def test_subclasses_and_unknown_optimizers_are_not_trusted():
    p = [torch.nn.Parameter(torch.zeros(2))]

    class MyAdamW(torch.optim.AdamW):
        pass

    assert not optimizer_keeps_zeros(MyAdamW(p)) and not optimizer_keeps_zeros(torch.optim.Adagrad(p))
    from types import SimpleNamespace  # a wrapper like accelerate's AcceleratedOptimizer

    assert optimizer_keeps_zeros(SimpleNamespace(optimizer=torch.optim.SGD(p, lr=0.1)))


# --------------------------------------------------------------------------- trainer: against plain references
def reference_gradient(raw, keep, w=None):
    """The gradient pass by definition: ``where(keep, raw * W, +0.0)`` (``keep``: M, or G; W: None, or broadcast)."""
    g = raw if w is None else raw * w.to(raw.device)
    return torch.where(keep, g, torch.zeros((), dtype=g.dtype))


def reference_clip(grads, max_norm):
    """Clipping by the global 2-norm as torch does it (``max_norm / (norm + 1e-6)``, at most 1), on copies."""
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, 2.0) for g in grads]), 2.0)
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    return [g * coef for g in grads]


def reference_first_adamw_step(param, grad, lr, eps, w=None):
    """float64: the first AdamW step without weight decay (bias-corrected: ``lr * g / (|g| + eps)``), its size
    scaled by W (``update`` mode) where W is given."""
    step = lr * grad.double() / (grad.double().abs() + eps)
    return param.double() - (step if w is None else step * w.double())


class PassProbe(TrainerCallback):
    """Records, for every optimizer step, what the passes are checked on: the raw (accumulated) gradients before
    the gradient pass, the gradients the optimizer gets, the weights right after the optimizer's step and after
    the weight pass. Added before the trainer's own callback, so it sees the weights before the re-zero."""

    def __init__(self, model):
        self.params = dict(model.named_parameters())
        self.raw, self.steps = {}, []
        for name, p in self.params.items():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(lambda p, name=name: self.raw.__setitem__(name, p.grad.clone()))

    def _copy(self, attr):
        return {n: (p.grad if attr == "grad" else p).detach().clone() for n, p in self.params.items()
                if attr != "grad" or p.grad is not None}

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.steps.append({"raw": dict(self.raw), "grad": self._copy("grad"), "before": self._copy("data")})

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.steps[-1]["stepped"] = self._copy("data")

    def on_step_end(self, args, state, control, **kwargs):
        self.steps[-1]["after"] = self._copy("data")
        self.raw = {}


def _run(tokenizer, tiny_splits, tmp_path, base, **kw):
    model = sparse_model(tokenizer, state_dict=base)
    probe = PassProbe(model)
    trainer = make_trainer(model, tokenizer, qa(tiny_splits, "forget10", 8), qa(tiny_splits, "retain90", 16),
                           tmp_path, callbacks=[probe], **kw)
    trainer.train()
    return trainer, probe.steps


def _keep_and_w(trainer, name, use_w):
    """The mask and W the gradient pass applies to a prunable parameter (G and W under SAU, else M)."""
    state = trainer.sau_state
    if state is not None and name in state.selected:
        return state.mask(name, "cpu"), state.weight(name) if use_w else None
    return trainer.sparsity_masks.get(name, "cpu"), None


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(_bits(a[k]), _bits(b[k])) if a[k].is_floating_point() else torch.equal(a[k], b[k]), k


def _check_grad_mode_steps(trainer, steps, max_norm):
    """Every step: the optimizer got reference_clip(reference_gradient(raw)) and the weights after the step are the
    optimizer's with pruned entries +0.0, bit for bit."""
    prunable = prunable_parameters(trainer.model)
    for step in steps:
        masked = {}
        for name, raw in step["raw"].items():
            if name in prunable:
                keep, w = _keep_and_w(trainer, name, use_w=True)
                masked[name] = reference_gradient(raw, keep, w)
            else:
                masked[name] = raw
        names = [n for n in step["grad"]]  # the model's parameter order, as the Trainer clips them
        assert set(names) == set(masked)
        want = dict(zip(names, reference_clip([masked[n] for n in names], max_norm), strict=True))
        _assert_same(step["grad"], want)
        want_after = {n: torch.where(trainer.sparsity_masks.get(n, "cpu"), p, torch.zeros((), dtype=p.dtype))
                      if n in prunable else p for n, p in step["stepped"].items()}
        _assert_same(step["after"], want_after)


def _cases():
    """Every optimizer and precision of the invariant tests, plain and SAU; a few in the fast subset."""
    fast = {("adamw_torch", False, True), ("adamw_torch", True, True), ("sgd", False, False),
            ("adamw_bnb_8bit", True, False)}
    for optim in ["adamw_torch", "adamw_torch_fused", "sgd", "adamw_bnb_8bit", "paged_adamw_8bit"]:
        for bf16 in (False, True):
            for sau in (False, True):
                marks = ([BNB] if "8bit" in optim else []) + ([] if (optim, bf16, sau) in fast else [pytest.mark.slow])
                yield pytest.param(optim, bf16, sau, marks=marks, id=f"{optim}-{'bf16' if bf16 else 'fp32'}-"
                                   f"{'sau' if sau else 'plain'}")


@pytest.mark.parametrize("optim,bf16,sau", list(_cases()))
def test_fused_passes_give_the_reference_gradients_and_weights_bit_for_bit(tokenizer, tiny_splits, tmp_path, optim,
                                                                           bf16, sau):
    base = sparse_model(tokenizer).state_dict()
    kw = dict(optim=optim, bf16=bf16, sau=sau, sau_alpha=1.0, sau_redistribution="row" if bf16 else "matrix",
              weight_decay=0.1, learning_rate=5e-3, gradient_accumulation_steps=2, per_device_train_batch_size=2,
              max_steps=2)
    trainer, steps = _run(tokenizer, tiny_splits, tmp_path, base, **kw)
    assert len(steps) == 2
    _check_grad_mode_steps(trainer, steps, trainer.args.max_grad_norm)


@pytest.mark.slow
@pytest.mark.parametrize("redistribution", ["matrix", "param"])
def test_fused_passes_compiled_in_the_trainer_bit_for_bit(tokenizer, tiny_splits, tmp_path, monkeypatch,
                                                          redistribution):
    """The same with the compiled kernels forced on the tiny model (`auto` compiles only large matrices)."""
    monkeypatch.setenv("SAU_TRAINER_KERNELS", "compile")
    base = sparse_model(tokenizer).state_dict()
    kw = dict(sau_alpha=1.0, sau_redistribution=redistribution, weight_decay=0.1, gradient_accumulation_steps=2,
              per_device_train_batch_size=2, max_steps=2)
    trainer, steps = _run(tokenizer, tiny_splits, tmp_path, base, **kw)
    assert len(steps) == 2
    _check_grad_mode_steps(trainer, steps, trainer.args.max_grad_norm)


@pytest.mark.parametrize("redistribution", ["matrix", "row", "param"])
@pytest.mark.parametrize("bf16", [False, True])
def test_update_mode_gives_the_reference_weights_within_rounding(tokenizer, tiny_splits, tmp_path, redistribution,
                                                                 bf16):
    """One AdamW step in ``update`` mode: the gradient is G's (no W), and the step of each selected entry is W times
    AdamW's (float64 reference); pruned entries stay +0.0."""
    base = sparse_model(tokenizer).state_dict()
    kw = dict(sau_redistribution_target="update", sau_redistribution=redistribution, sau_alpha=1.0, bf16=bf16,
              weight_decay=0.0, learning_rate=5e-3, max_steps=1)
    trainer, (step,) = _run(tokenizer, tiny_splits, tmp_path, base, **kw)
    prunable = prunable_parameters(trainer.model)
    masked = {n: reference_gradient(raw, *_keep_and_w(trainer, n, use_w=False)) if n in prunable else raw
              for n, raw in step["raw"].items()}
    names = list(step["grad"])
    want_grad = dict(zip(names, reference_clip([masked[n] for n in names], trainer.args.max_grad_norm), strict=True))
    _assert_same(step["grad"], want_grad)
    moved = 0
    for name in prunable:
        keep, w = _keep_and_w(trainer, name, use_w=True)
        if w is not None:  # W only on G's entries
            w = torch.where(keep, w.to(torch.float64).expand(keep.shape), torch.ones((), dtype=torch.float64))
        want = reference_first_adamw_step(step["before"][name], step["grad"][name], trainer.args.learning_rate,
                                          trainer.args.adam_epsilon, w)
        want = torch.where(trainer.sparsity_masks.get(name, "cpu"), want, torch.zeros((), dtype=want.dtype))
        # per-matrix W scales the learning rate, other W the float32 step after it (new - old, rounded to the
        # weight's float32 spacing, then times W): float32 roundings from the reference, the latter scaled by W
        err = (step["after"][name].double() - want).abs()
        spacing = 2.0 ** -23 * step["before"][name].double().abs() * (1.0 if w is None else w)
        allowed = 2e-6 * want.abs() + 1e-8 + 2 * spacing
        assert bool((err <= allowed).all()), (name, float((err - allowed).max()))
        assert bool((step["after"][name][~trainer.sparsity_masks.get(name, "cpu")] == 0).all())
        moved += int((step["after"][name] != base[name]).sum())
    assert moved > 0


# --------------------------------------------------------------------------- sparsity semantics
def test_a_surviving_weight_at_exactly_zero_keeps_training(tokenizer, tiny_splits, tmp_path):
    """The masks, not the zeros, are the truth: a survivor that is (or becomes) exactly 0.0 keeps its gradient
    and moves (masks derived from ``weight != 0`` each step would freeze it as if pruned)."""
    model = sparse_model(tokenizer)
    masks = SparsityMasks.from_model(model)
    name = "model.layers.0.mlp.up_proj.weight"
    p = prunable_parameters(model)[name]
    idx = int(masks.get(name).reshape(-1).nonzero()[0])
    with torch.no_grad():
        p.view(-1)[idx] = 0.0
    rec = GradRecorder(model)
    from sau_trainer import SAUConfig, SAUTrainer

    args = SAUConfig(output_dir=str(tmp_path), report_to=[], per_device_train_batch_size=4, max_steps=2, sau=False,
                     optim="sgd", learning_rate=1e-2, objective="ga", save_strategy="no", disable_tqdm=True, seed=0)
    trainer = SAUTrainer(model, args, forget_dataset=qa(tiny_splits, "forget10", 8), processing_class=tokenizer,
                         sparsity_masks=masks, callbacks=[rec])
    trainer.train()
    assert float(rec.grads[0][name].reshape(-1)[idx]) != 0.0
    assert float(p.detach().reshape(-1)[idx]) != 0.0
    assert bool((p.detach()[~masks.get(name)] == 0).all())


# --------------------------------------------------------------------------- no host synchronisation
class SyncCounter(TorchFunctionMode):
    """Counts the calls that read a device value back to the host (or select by a bool tensor, which does)."""

    SYNCING = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__,
               torch.Tensor.__float__, torch.Tensor.nonzero, torch.nonzero, torch.Tensor.cpu, torch.Tensor.numpy,
               torch.masked_select, torch.Tensor.masked_select, torch.Tensor.any, torch.Tensor.all}

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        index = args[1] if func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__) and len(args) > 1 else None
        if func in self.SYNCING or (isinstance(index, torch.Tensor) and index.dtype == torch.bool):
            self.calls.append(getattr(func, "__name__", str(func)))
        return func(*args, **kwargs)


@pytest.mark.parametrize("setting", [dict(sau=False), dict(sau=True), dict(sau=True, sau_redistribution="row"),
                                     dict(sau=True, sau_redistribution_target="update"),
                                     dict(sau=True, sau_redistribution_target="update", sau_redistribution="param"),
                                     dict(sau=True, optim="adamw_bnb_8bit")],
                         ids=["plain", "sau", "sau-row", "update", "update-param", "rezero"])
def test_no_host_sync_in_the_sparsity_passes(tokenizer, tiny_splits, tmp_path, monkeypatch, setting):
    if "bnb" in setting.get("optim", "") and not HAS_BNB:
        pytest.skip("bitsandbytes")
    model = sparse_model(tokenizer)
    trainer = make_trainer(model, tokenizer, qa(tiny_splits, "forget10", 8), qa(tiny_splits, "retain90", 8), tmp_path,
                           max_steps=3, sau_alpha=1.0, **setting)
    counter, entered = SyncCounter(), []

    def counted(method):
        inner = getattr(trainer, method)

        def run(*a, **k):
            if trainer.state.global_step >= 1:  # after the one-time checks of the first step
                entered.append(method)
                with counter:
                    return inner(*a, **k)
            return inner(*a, **k)
        return run

    for method in ("_mask_gradients", "_snapshot_for_update_mode", "_after_optimizer_step"):
        monkeypatch.setattr(trainer, method, counted(method))  # on the instance: the passes, counted
    trainer.train()
    assert len(entered) == 6 and counter.calls == []
    if "update" in str(setting):  # the counter does see a boolean-index snapshot (the old way)
        with SyncCounter() as c:
            p = next(iter(prunable_parameters(model).values()))
            p.detach()[trainer.sau_state.mask(next(iter(prunable_parameters(model))))]
        assert c.calls


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA")
def test_no_cuda_sync_in_the_passes():
    from sau_trainer.fused import where_ as w_

    g = torch.Generator().manual_seed(0)
    mask = torch.rand(256, 512, generator=g) > 0.5
    t = torch.randn(256, 512, device="cuda")
    planes = pack_planes(mask).cuda()
    w = torch.rand(256, 1, device="cuda")
    for mode in ("eager", "compile"):
        import os

        os.environ["SAU_TRAINER_KERNELS"] = mode
        ref = apply_sau_(t.clone(), mask.cuda(), w)
        w_(t.clone(), planes, w)  # compile outside the checked region
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = w_(t.clone(), planes, w)
            scale_update_(t.clone(), t, planes, w)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        assert torch.equal(out, ref)
    os.environ.pop("SAU_TRAINER_KERNELS", None)


def test_saliency_fold_is_one_fused_op_with_the_old_values_for_low_precision():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(64, 64, generator=g)
    for dtype in (torch.bfloat16, torch.float16):
        grad = torch.randn(64, 64, generator=g).to(dtype)
        assert torch.equal(s.clone().addcmul_(grad, grad), s + grad.float().square())
    grad = torch.randn(64, 64, generator=g)
    torch.testing.assert_close(s.clone().addcmul_(grad, grad), s + grad.square(), rtol=2 * 2**-24, atol=0)
    # unpacking bit planes and the old sequential bits agree
    mask = torch.rand(40, 24, generator=g) > 0.5
    assert torch.equal(unpack_planes(pack_planes(mask), mask.shape), unpack_bool(pack_bool(mask), mask.shape))


def test_per_matrix_update_w_scales_the_learning_rate_and_weight_decay(tokenizer, tiny_splits, tmp_path):
    """``update`` mode with one W per matrix: the matrix steps with lr * W in a group of its own during the step (no
    snapshot), the optimizer's groups are as built after it, and decoupled weight decay is scaled too: a surviving
    entry outside G (no gradient) ends at ``w * (1 - lr * W * wd)``."""
    model = sparse_model(tokenizer)
    before = {n: p.detach().clone() for n, p in prunable_parameters(model).items()}
    seen = []

    from transformers import TrainerCallback

    class Groups(TrainerCallback):
        def on_optimizer_step(self, args, state, control, optimizer=None, **kw):
            seen.append((len(trainer.optimizer.param_groups), dict(trainer._snapshots)))

    lr, wd = 5e-3, 0.1
    trainer = make_trainer(model, tokenizer, qa(tiny_splits, "forget10", 8), qa(tiny_splits, "retain90", 8), tmp_path,
                           sau_redistribution_target="update", sau_alpha=1.0, weight_decay=wd, learning_rate=lr,
                           max_steps=1, callbacks=[Groups()])
    trainer.train()
    n_groups = len(trainer.optimizer.param_groups)
    assert seen == [(n_groups + len(trainer.sau_state.weights), {})]  # split during the step, no dense snapshot
    for name, p in prunable_parameters(model).items():
        w = float(trainer.sau_state.weight(name))
        outside = trainer.sparsity_masks.get(name) & ~trainer.sau_state.mask(name)
        expected = before[name][outside] * (1 - lr * w * wd)
        torch.testing.assert_close(p.detach()[outside], expected, rtol=1e-6, atol=0)
        assert not torch.equal(p.detach()[outside], before[name][outside] * (1 - lr * wd))


@pytest.mark.parametrize("optim,rezero", [("adamw_torch", False), ("adamw_torch_fused", False), ("sgd", False),
                                          pytest.param("adamw_bnb_8bit", True, marks=BNB),
                                          pytest.param("paged_adamw_8bit", True, marks=BNB), ("adafactor", True)])
def test_rezero_is_skipped_only_for_zero_keeping_optimizers(tokenizer, tiny_splits, tmp_path, optim, rezero):
    trainer = make_trainer(sparse_model(tokenizer), tokenizer, qa(tiny_splits, "forget10", 8), None, tmp_path,
                           optim=optim, objective="ga")
    trainer.create_optimizer()
    assert trainer._rezero_needed() is rezero
