"""The dry run's memory estimate (sau_trainer/pipeline/memory.py) against hand-computed numbers for the tiny shape,
the sharding rules, the precision rules, and the dry run on the recipes (no weights, offline)."""

from pathlib import Path

import pytest

from sau_trainer.cli import main as cli_main
from sau_trainer.pipeline import memory
from sau_trainer.pipeline.memory import Distributed, Precision, llama_counts, training_estimate

ROOT = Path(__file__).resolve().parents[2]
# the tiny shape with a 512-token vocabulary: per block q 128x128, k and v 128x64, o 128x128, gate/up/down 128x256
TINY = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=512)
PRUNABLE = 2 * (16384 + 8192 + 8192 + 16384 + 3 * 32768)  # 294,912
TOTAL = PRUNABLE + 2 * 2 * 128 + 2 * 512 * 128 + 128  # + norms, embeddings, untied head, final norm = 426,624


def tiny():
    return llama_counts(128, 256, 2, 4, 2, 512)


def test_counts_by_arithmetic_equal_the_model_built_on_the_meta_device():
    from transformers import LlamaConfig

    c = tiny()
    assert (c.total, c.prunable, c.largest_layer, c.outside_layers) == (426_624, 294_912, 147_712, 131_200)
    assert (TOTAL, PRUNABLE) == (c.total, c.prunable)
    meta = memory.counts_from_config(LlamaConfig(**TINY))
    assert meta == c
    eight_b = memory.counts_from_config(LlamaConfig(**__import__("sau_trainer.modeling").modeling.MODEL_SHAPES[
        "llama-3.1-8b"]))
    assert eight_b.total == 8_030_261_248 and eight_b == llama_counts(4096, 14336, 32, 32, 8, 128256)


def test_one_process_fp32_adamw_by_hand():
    prec = Precision(weight=4, grad=4, optimizer=8, compute=4)
    est = training_estimate(tiny(), prec, Distributed(), batch=2, seq=16, checkpointing=False, masks=True, sau=True)
    tokens = 32
    act = 2 * (9 * 128 + 2 * 64 + 4 * 256) * tokens * 4 + tokens * 512 * (4 + 8)  # blocks + logits = 786,432
    assert est.components == {"weights": TOTAL * 4, "gradients": TOTAL * 4, "optimizer": TOTAL * 8,
                              "masks": PRUNABLE / 8, "sau": PRUNABLE / 8, "activations": act, "reference": 0.0,
                              "overhead": 0.0}
    assert est.phases["training"] == 7_686_144 == est.peak
    # the saliency pass: weights, M, fp32 sums, one batch's activations, one block's gradients
    assert est.phases["saliency pass"] == TOTAL * 4 + PRUNABLE / 8 + PRUNABLE * 4 + act + 147_712 * 4
    ckpt = training_estimate(tiny(), prec, Distributed(), batch=2, seq=16, checkpointing=True, forwards=2)
    block = (9 * 128 + 2 * 64 + 4 * 256) * tokens * 4
    assert ckpt.components["activations"] == 2 * (2 * 128 * tokens * 4 + block + tokens * 512 * 12)


def test_what_each_distributed_setup_shards():
    prec = Precision(weight=2, grad=2, optimizer=2.03, compute=2)
    kw = dict(batch=1, seq=8, checkpointing=True, masks=True, sau=True)
    one = training_estimate(tiny(), prec, Distributed(), **kw).components
    ddp = training_estimate(tiny(), prec, Distributed(4, "ddp"), **kw).components
    assert ddp == one
    fsdp = training_estimate(tiny(), prec, Distributed(4, "fsdp"), **kw).components
    gathered = (2 * 147_712 + 131_200) * 2
    assert fsdp["weights"] == TOTAL * 2 / 4 + gathered
    assert fsdp["gradients"] == TOTAL * 2 / 4 + 147_712 * 2
    assert fsdp["optimizer"] == pytest.approx(TOTAL * 2.03 / 4)
    assert fsdp["masks"] == fsdp["sau"] == PRUNABLE / 8 / 4 and fsdp["activations"] == one["activations"]
    zero2 = training_estimate(tiny(), prec, Distributed(4, "zero", zero_stage=2), **kw).components
    assert zero2["weights"] == TOTAL * 2 and zero2["gradients"] == TOTAL * 2 / 4 + 147_712 * 2
    assert zero2["optimizer"] == pytest.approx(TOTAL * 2.03 / 4) and zero2["masks"] == PRUNABLE / 8
    zero1 = training_estimate(tiny(), prec, Distributed(4, "zero", zero_stage=1), **kw).components
    assert zero1["gradients"] == TOTAL * 2 and zero1["optimizer"] == pytest.approx(TOTAL * 2.03 / 4)
    offload = training_estimate(tiny(), prec, Distributed(4, "zero", zero_stage=3, offload_optimizer=True),
                                **kw).components
    assert offload["optimizer"] == 0 and offload["weights"] == fsdp["weights"]


def test_prune_offload_holds_one_block_and_device_map_splits_the_evaluated_weights():
    whole = memory.prune_estimate(tiny(), "float32", "wanda", num_samples=8, seq_len=16)
    off = memory.prune_estimate(tiny(), "float32", "wanda", num_samples=8, seq_len=16, offload=True)
    act = 2 * 8 * 16 * 128 * 4 + 128 * 256 * 4  # calibration inputs/outputs of a block (fp32) + a working matrix
    assert whole.components == {"weights": TOTAL * 4, "activations": act, "overhead": 0.0}
    assert off.components == {"weights": 147_712 * 4, "activations": act, "overhead": 0.0}
    assert off.peak == 590_848 + 262_144 and "prune.offload" in off.notes[0]
    one = memory.evaluate_estimate(tiny(), "bfloat16", batch=2, seq=16, new_tokens=4)
    four = memory.evaluate_estimate(tiny(), "bfloat16", batch=2, seq=16, new_tokens=4, devices=4)
    logits = 2 * 16 * 512 * (2 + 4)  # 98,304, more than the KV cache's 2 * 2 * 64 * 2 * 20 * 2 = 20,480
    assert one.components == {"weights": TOTAL * 2, "activations": logits, "overhead": 0.0} and not one.notes
    assert four.components == {"weights": 213_312, "activations": logits, "overhead": 0.0}


def test_precision_rules_follow_sau_trainer_precision():
    tp = memory.training_precision
    assert tp("bfloat16", "adamw_torch", True) == Precision(4, 4, 8, 2)  # upcast: fp32 master weights, bf16 compute
    assert tp("bfloat16", "adamw_torch", True, "sr_adamw8bit", "error") == Precision(2, 2, 2.03, 2)
    assert tp("bfloat16", "paged_adamw_32bit", True) == Precision(4, 4, 8, 2)
    assert tp("bfloat16", "adamw_bnb_8bit", True) == Precision(4, 4, 2.05, 2)
    assert tp("bfloat16", "adamw_torch", True, "none", "keep") == Precision(2, 2, 4, 2)
    assert tp("float32", "adamw_torch", False) == Precision(4, 4, 8, 4)


def test_the_distributed_setup_from_an_accelerate_config_and_the_environment(tmp_path):
    fsdp = memory.distributed_from_accelerate_config(ROOT / "recipes/accelerate/fsdp2.yaml")
    assert (fsdp.num_processes, fsdp.kind, fsdp.fsdp_version, fsdp.reshard_after_forward) == (8, "fsdp", 2, True)
    ds = tmp_path / "ds.yaml"
    ds.write_text("distributed_type: DEEPSPEED\nnum_processes: 2\ndeepspeed_config:\n  zero_stage: 3\n"
                  "  offload_optimizer_device: cpu\n  offload_param_device: none\n")
    zero = memory.distributed_from_accelerate_config(ds, num_processes=4)
    assert (zero.num_processes, zero.kind, zero.zero_stage, zero.offload_optimizer, zero.offload_params) == \
        (4, "zero", 3, True, False)
    env = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "false",
           "WORLD_SIZE": "2"}
    got = memory.distributed_from_env(env)
    assert (got.num_processes, got.kind, got.reshard_after_forward) == (2, "fsdp", False)
    assert memory.distributed_from_env({"WORLD_SIZE": "3"}).kind == "ddp"
    assert memory.distributed_from_env({}) is None


def _dry_run(capsys, recipe, *extra):
    assert cli_main(["run", str(ROOT / recipe), "--dry-run", "--output-dir", "/nonexistent/out", *extra]) == 0
    return capsys.readouterr().out


def test_the_dry_run_prints_the_estimate_and_warns_when_it_does_not_fit(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = _dry_run(capsys, "recipes/llama-3.1-8b/tofu/sau_forget10.yaml", "--device-memory", "80")
    assert "8.03e9 parameters" in out and "1 process, no sharding" in out and "WARNING" not in out
    unlearn = [line for line in out.splitlines() if line.strip().startswith("unlearn")]
    assert unlearn and "saliency pass" in " ".join(unlearn)
    out = _dry_run(capsys, "recipes/llama-3.1-8b/tofu/sau_forget10.yaml", "--device-memory", "40")
    assert "WARNING: unlearn" in out and "more than the 40.0 GiB" in out and "WARNING: train" in out
    assert "WARNING: evaluate" not in out  # 16 GB of bf16 weights and one batch's logits fit


def test_the_70b_recipe_validates_offline_and_fits_8_gpus_under_fsdp2(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = "recipes/llama-3.3-70b/tofu/sau_forget10.yaml"
    out = _dry_run(capsys, recipe, "--accelerate-config", str(ROOT / "recipes/accelerate/fsdp2.yaml"),
                   "--device-memory", "80")
    assert "70.55e9 parameters" in out and "8 processes, FSDP2 full shard" in out
    warned = {line.split()[1] for line in out.splitlines() if line.startswith("WARNING")}
    assert not warned  # training sharded over 8 devices, pruning from the CPU, evaluation split over 8 GPUs
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("  ")}
    assert rows["prune"][2] == "1.6" and rows["prune"][-2] == "7.5"  # one decoder block (prune.offload)
    assert rows["evaluate"][2] == "16.4" and rows["evaluate"][-2] == "20.4"  # 131.4 / 8 (evaluate.device_map)
    out = _dry_run(capsys, recipe, "--device-memory", "80")  # no sharding: nothing trains on one 80 GiB device
    assert "WARNING: unlearn" in out and "WARNING: prune" not in out
    assert "WARNING: evaluate" in out  # device_map over the one device of a single process: the whole model
