"""The "I don't know" answers of IdkDPO and IdkNLL, and the seeded choice of one answer per forget example.

The package ships its own set of 100 short answers (``idk.jsonl`` beside this module, written for this
project). open-unlearning reads ``data/idk.jsonl`` (almost certainly TOFU's ``idontknow.jsonl``, 100 lines);
for numbers comparable with published IdkDPO results, pass that file as ``SAUConfig(idk_path=...)``.
Despite the name, both files hold one plain-text answer per line (no JSON quoting); lines are stripped,
as open-unlearning does, and blank lines are skipped.
"""

from __future__ import annotations

import os
from importlib import resources

import torch

DEFAULT_IDK_FILE = "idk.jsonl"


def default_idk_path() -> str:
    """Path of the package's own answer file."""
    return str(resources.files("sau_trainer.data").joinpath(DEFAULT_IDK_FILE))


def load_idk_answers(path: str | os.PathLike | None = None) -> list[str]:
    """The answers of `path` (None: the package's own set), one per non-blank line, stripped.

    Raises a `ValueError` naming the file when it does not exist, is not UTF-8 text or has no answer.
    """
    where = os.fspath(path) if path is not None else default_idk_path()
    if not os.path.isfile(where):
        raise ValueError(
            f"idk_path={where!r} does not exist: give a file with one \"I don't know\" answer per line "
            "(e.g. open-unlearning's data/idk.jsonl), or leave idk_path unset for the package's own 100 answers."
        )
    try:
        with open(where, encoding="utf-8") as f:
            answers = [line.strip() for line in f]
    except UnicodeDecodeError as err:
        raise ValueError(f"idk_path={where!r} is not UTF-8 text ({err}).") from None
    answers = [a for a in answers if a]
    if not answers:
        raise ValueError(f"idk_path={where!r} has no answer: write one \"I don't know\" answer per line.")
    return answers


def idk_choices(num_answers: int, num_examples: int, num_epochs: int, seed: int, fixed: bool) -> torch.Tensor:
    """``[num_epochs, num_examples]`` indices into the answers: which answer each forget example gets per epoch.

    open-unlearning draws uniformly at random every time an item is fetched, so the answer changes from
    epoch to epoch; here the draw is seeded by (seed, epoch), the same on every process and after a resume,
    so the reference model's log-likelihoods of every pair can be computed before training. With `fixed`,
    epoch 0's draw is used in every epoch.
    """
    rows = []
    for epoch in range(1 if fixed else num_epochs):
        g = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * (epoch + 1))
        rows.append(torch.randint(num_answers, (num_examples,), generator=g))
    out = torch.stack(rows)
    return out.expand(num_epochs, -1).clone() if fixed else out


class IdkPairing:
    """The forget questions, the idk answers and which answer each forget example gets in each epoch.

    Built by the idk objectives from the raw forget rows (which must have ``question`` and ``answer``);
    `draw` fixes the choices once the number of epochs is known (at train start).
    """

    def __init__(self, forget_dataset, tokenizer, args, objective: str):
        from .qa import QACollator, row_kind

        rows = forget_dataset
        if hasattr(rows, "column_names"):
            columns = rows.column_names
            rows = rows.to_list() if hasattr(rows, "to_list") else list(rows)
        else:
            rows = list(rows)
            columns = list(rows[0].keys()) if rows else []
        if row_kind(columns) != "qa":
            raise ValueError(
                f"objective={objective!r} pairs each forget question with an \"I don't know\" answer: the forget "
                f"set needs `question` and `answer` columns, got {sorted(columns)}."
            )
        if tokenizer is None:
            raise ValueError(f"objective={objective!r} tokenises its idk answers: pass `processing_class=tokenizer`.")
        self.questions = [r["question"] for r in rows]
        self.answers = load_idk_answers(args.idk_path)
        self.tokenizer, self.max_length = tokenizer, args.max_length
        self.seed, self.fixed = args.seed, args.idk_pairing == "fixed"
        self.collator = QACollator(tokenizer)
        self.choices: torch.Tensor | None = None

    def draw(self, num_epochs: int) -> torch.Tensor:
        """Fix (and return) the ``[epochs, examples]`` answer choices for a run of `num_epochs` epochs."""
        self.choices = idk_choices(len(self.answers), len(self.questions), max(1, int(num_epochs)), self.seed,
                                   self.fixed)
        return self.choices

    def epoch_row(self, epoch: int) -> int:
        if self.choices is None:
            raise RuntimeError("IdkPairing.draw was not called: SAUTrainer calls it at train start.")
        return min(int(epoch), self.choices.size(0) - 1)

    def encode(self, example: int, answer: int) -> dict:
        from .qa import encode_qa

        return encode_qa(self.tokenizer, self.questions[example], self.answers[answer], self.max_length)

    def encode_pairs(self, pairs: list[tuple[int, int]]) -> list[dict]:
        return [self.encode(i, a) for i, a in pairs]

    def unique_pairs(self, choices: torch.Tensor) -> tuple[list[tuple[int, int]], torch.Tensor]:
        """The distinct (example, answer) pairs of `choices` and, per entry of `choices`, its pair's position."""
        examples = torch.arange(choices.size(1)).expand_as(choices)
        keys = examples * len(self.answers) + choices
        unique, inverse = torch.unique(keys.flatten(), return_inverse=True)
        pairs = [(int(k) // len(self.answers), int(k) % len(self.answers)) for k in unique]
        return pairs, inverse

    def batch(self, index: torch.Tensor, epoch: int, device) -> dict[str, torch.Tensor]:
        """The collated (question, idk answer) batch for forget examples `index` in `epoch`, on `device`."""
        row = self.choices[self.epoch_row(epoch)]
        feats = [self.encode(int(i), int(row[int(i)])) for i in index.tolist()]
        return {k: v.to(device) for k, v in self.collator(feats).items()}
