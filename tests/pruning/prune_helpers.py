"""Small models, tokenizers and references shared by the pruning tests (imported, not a conftest)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from sau_trainer.masks import prunable_parameters

WORDS = ("the cat dog sat ran on a mat big small red blue green fox jumps over lazy river tree house "
         "question answer who what where when is was born in city of name book wrote").split()


def tiny_config(vocab_size: int = 128, **kw) -> LlamaConfig:
    base = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    base.update(kw)
    return LlamaConfig(**base)


def tiny_model(seed: int = 0, **kw) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_config(**kw)).eval()


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `WORDS` (+ specials), BOS added to every text, pad id 0."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")


def random_texts(n: int, seed: int = 0, lo: int = 3, hi: int = 20) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(lo, hi, (1,), generator=g))
        idx = torch.randint(0, len(WORDS), (length,), generator=g)
        out.append(" ".join(WORDS[i] for i in idx))
    return out


def dense_state(model) -> dict[str, torch.Tensor]:
    """Every parameter and buffer that is not a prunable matrix, cloned."""
    prunable = set(prunable_parameters(model))
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k not in prunable}


def full_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_states_identical(model, state) -> None:
    now = model.state_dict()
    for k, v in state.items():
        assert torch.equal(now[k], v), f"{k} changed"
