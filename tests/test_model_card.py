"""The model card names the benchmark a model was evaluated on, with that benchmark's own metrics."""

import yaml

from sau_trainer.hub import model_card

SPARSITY = {"method": "wanda", "structure": "unstructured", "measured_sparsity_weights": 0.5,
            "unlearning": {"objective": "npo", "sau": True}}


def card_for(benchmark: str, summary: dict, **data) -> tuple[dict, str]:
    recipe = {"model": {"name_or_path": "meta-llama/Llama-3.2-1B"}, "data": {"benchmark": benchmark, **data}}
    card = model_card(SPARSITY, {"summary": summary}, recipe, "me/model")
    return yaml.safe_load(card.split("---\n")[1]), card


def test_muse_card_shows_muse_metrics_and_dataset():
    meta, card = card_for("muse", {"forget_verbmem_rouge": 0.12, "retain_knowmem_rouge": 0.4, "privleak": -3.5,
                                   "forget_quality": 0.9}, subset="books")
    assert meta["datasets"] == ["muse-bench/MUSE-Books"] and "muse" in meta["tags"]
    assert meta["metrics"] == ["forget_verbmem_rouge", "retain_knowmem_rouge", "privleak"]  # not TOFU's
    result = meta["model-index"][0]["results"][0]
    assert result["dataset"]["type"] == "muse-bench/MUSE-Books" and result["dataset"]["config"] == "books"
    assert "TOFU" not in card and "| Forget VerbMem ROUGE | 0.12 |" in card and "| Privleak | -3.5 |" in card


def test_wmdp_card_shows_accuracies():
    meta, card = card_for("wmdp", {"wmdp_acc": 0.27, "mmlu_acc": 0.55})
    assert meta["datasets"] == ["cais/wmdp", "hails/mmlu_no_train"]
    assert meta["metrics"] == ["wmdp_acc", "mmlu_acc"] and "TOFU" not in card
    assert "WMDP (with MMLU) (cyber)" in card and "| MMLU acc. | 0.55 |" in card


def test_built_in_muse_style_benchmark_is_not_called_tofu_style():
    meta, card = card_for("synthetic-muse", {"forget_knowmem_rouge": 0.2})
    assert "datasets" not in meta and "TOFU" not in card
    assert "built-in synthetic MUSE-style benchmark" in card
    assert meta["model-index"][0]["results"][0]["dataset"]["type"] == "sau-trainer/synthetic-muse"


def test_tofu_card_keeps_its_metrics():
    meta, card = card_for("tofu", {"forget_quality": 0.5, "model_utility": 0.6}, forget_split="forget01")
    assert meta["datasets"] == ["locuslab/TOFU"] and meta["metrics"] == ["forget_quality", "model_utility"]
    assert meta["model-index"][0]["results"][0]["dataset"]["split"] == "forget01"
    assert "on TOFU (forget01)" in card
