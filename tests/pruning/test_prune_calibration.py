"""The layer-by-layer driver: padding stays out of the statistics; each layer sees pruned inputs."""

import pytest
import torch
from prune_helpers import random_texts, tiny_model, word_tokenizer

from sau_trainer.masks import prunable_modules
from sau_trainer.pruning import PRUNERS, magnitude_mask, prune_model
from sau_trainer.pruning.calibration import make_batches, prepare_calibration


class Recorder:
    """A registry entry that records the statistic it is handed and prunes by magnitude."""

    name = "record"

    def __init__(self, statistic):
        self.statistic = statistic
        self.stats = []

    def prune(self, weight, stat, sparsity, structure, **options):
        self.stats.append(stat.clone())
        keep = magnitude_mask(weight, sparsity, structure.n, structure.m)
        return weight * keep, keep, {}


def record(monkeypatch, statistic, model, **kw):
    rec = Recorder(statistic)
    monkeypatch.setitem(PRUNERS, "record", rec)
    prune_model(model, "record", progress=False, **kw)
    return dict(zip(prunable_modules(model), rec.stats, strict=True))


def manual_hessians(model, ids_list, names):
    """X^T X / tokens of the inputs of `names`, running `model` on one unpadded sequence at a time."""
    mods = prunable_modules(model)
    acc = {n: [torch.zeros(mods[n].in_features, mods[n].in_features), 0] for n in names}
    hooks = []
    for n in names:
        def hook(module, args, out, n=n):
            x = args[0].reshape(-1, args[0].shape[-1]).float()
            acc[n][0] += x.T @ x
            acc[n][1] += x.shape[0]
        hooks.append(mods[n].register_forward_hook(hook))
    with torch.no_grad():
        for ids in ids_list:
            model(input_ids=ids.unsqueeze(0))
    for h in hooks:
        h.remove()
    return {n: h / t for n, (h, t) in acc.items()}


@pytest.mark.parametrize("statistic", ["act_norm_sq", "hessian"])
def test_padding_never_enters_statistics(monkeypatch, statistic):
    tok = word_tokenizer()
    texts = random_texts(9, seed=3, lo=2, hi=25)  # very different lengths: lots of padding at batch size 5
    lengths = {len(tok(t)["input_ids"]) for t in texts}
    assert len(lengths) > 4
    common = dict(calibration=texts, tokenizer=tok, sparsity=0.5)
    unpadded = record(monkeypatch, statistic, tiny_model(vocab_size=len(tok)), batch_size=1, **common)
    padded = record(monkeypatch, statistic, tiny_model(vocab_size=len(tok)), batch_size=5, **common)
    for name in unpadded:
        torch.testing.assert_close(padded[name], unpadded[name], rtol=1e-4, atol=1e-5, msg=name)


def test_each_layer_is_fed_the_outputs_of_the_pruned_layers_before_it(monkeypatch):
    calib = torch.randint(0, 128, (6, 20), generator=torch.Generator().manual_seed(0))
    dense = tiny_model()
    pruned = tiny_model()
    recorded = record(monkeypatch, "hessian", pruned, calibration=calib, sparsity=0.6, batch_size=4)
    # q_proj sees the (normed) layer input, which only earlier layers decide
    names = [n for n in recorded if n.endswith("q_proj")]
    assert len(names) == 2
    truth = manual_hessians(pruned, list(calib), names)
    dense_truth = manual_hessians(dense, list(calib), names)
    for n in names:
        torch.testing.assert_close(recorded[n], truth[n], rtol=1e-4, atol=1e-5)
    # layer 0's input does not depend on pruning; layer 1's does, visibly
    torch.testing.assert_close(dense_truth[names[0]], truth[names[0]])
    diff = (dense_truth[names[1]] - truth[names[1]]).norm() / truth[names[1]].norm()
    assert diff > 0.05


def test_make_batches_pads_right_and_masks():
    samples = [torch.tensor([5, 6]), torch.tensor([7, 8, 9]), torch.tensor([4])]
    (ids, mask), (ids2, mask2) = make_batches(samples, 2, pad_id=0)
    assert ids.tolist() == [[7, 8, 9], [5, 6, 0]] and mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert ids2.tolist() == [[4]] and mask2.tolist() == [[1]]


def test_prepare_calibration_caps_and_truncates():
    calib = prepare_calibration(torch.arange(40).reshape(4, 10), num_samples=3, seq_len=7)
    assert [s.tolist() for s in calib.samples] == [list(range(7)), list(range(10, 17)), list(range(20, 27))]
    d = calib.describe()
    assert d["num_samples"] == 3 and d["num_tokens"] == 21 and d["kind"] == "token_ids"
    assert d["token_ids_sha256"] != prepare_calibration(torch.arange(40).reshape(4, 10) + 1, num_samples=3,
                                                        seq_len=7).describe()["token_ids_sha256"]


def test_progress_bar_per_layer(capsys):
    prune_model(tiny_model(), "wanda", calibration=torch.randint(0, 128, (2, 8)), progress=True)
    err = capsys.readouterr().err
    assert "2/2" in err and "layer" in err


def test_mixed_layer_types_get_their_own_attention_mask(monkeypatch):
    """A sliding-window layer and a full-attention layer each see their own mask during calibration."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from sau_trainer.masks import prunable_modules
    from sau_trainer.pruning import PRUNERS, magnitude_mask, prune_model

    class RecordingPruner:  # records each matrix's Hessian, prunes nothing
        name, statistic = "record", "hessian"

        def __init__(self):
            self.stats = []

        def prune(self, weight, stat, sparsity, structure, **kw):
            self.stats.append(stat.clone())
            keep = magnitude_mask(weight, sparsity, structure.n, structure.m)
            return weight * keep, keep, {}

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                      use_sliding_window=True, sliding_window=4, max_window_layers=1,
                      layer_types=["sliding_attention", "full_attention"])
    model = Qwen3ForCausalLM(cfg).eval()
    calib = torch.randint(0, 128, (4, 24), generator=torch.Generator().manual_seed(0))
    modules = prunable_modules(model)
    o_proj = [n for n in modules if n.endswith("o_proj")]
    truth, handles = {}, []
    for n in o_proj:
        def hook(m, args, out, n=n):
            x = args[0].reshape(-1, args[0].shape[-1]).float()
            truth[n] = x.T @ x / x.shape[0]
        handles.append(modules[n].register_forward_hook(hook))
    with torch.no_grad():
        model(input_ids=calib)
    for h in handles:
        h.remove()
    rec = RecordingPruner()
    monkeypatch.setitem(PRUNERS, "record", rec)
    prune_model(model, "record", 0.0, calibration=calib, progress=False)
    got = dict(zip(modules, rec.stats, strict=True))
    for n in o_proj:  # layer 1 (full attention) was fed the sliding mask before the fix: 0.87 relative error
        torch.testing.assert_close(got[n], truth[n], rtol=1e-4, atol=1e-6)
