"""Progress bars: one switch for all of them, transformers' own.

`transformers.utils.logging.disable_progress_bar()` (or ``HF_HUB_DISABLE_PROGRESS_BARS=1``) silences the
bars of transformers (weight loading, shard writing) and of the Hub library; this package's bars
(evaluation, pruning, saliency) follow the same switch, so one call quiets a run whose output goes to a
log file, where every bar update would be a line of noise.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

METRICS_LOGGER = "sau_trainer.metrics"
_said: set = set()


def log_once(logger: logging.Logger, level: int, msg: str, *args, key: object = None) -> bool:
    """``logger.log(level, msg, *args)`` the first time in this process only; later calls with the same `key`
    (default: the message with its arguments) say nothing. For what holds for every run of a process alike (a
    recipe's grid trains dozens of models in one process: a line per run said the same thing dozens of times).
    Returns whether it logged."""
    key = (logger.name, msg % args if args else msg) if key is None else (logger.name, key)
    if key in _said:
        return False
    _said.add(key)
    logger.log(level, msg, *args)
    return True


def _value(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def log_metrics(logs: dict, step: int | None = None) -> None:
    """One log line (logger ``sau_trainer.metrics``, INFO) for a `Trainer.log` call: ``step 10: loss 2.31,
    learning_rate 0.001, epoch 0.5``. Instead of transformers' `PrinterCallback`, which prints the raw dict on
    stdout whenever progress bars are off (``disable_tqdm``); ``logging.getLogger("sau_trainer.metrics")
    .setLevel(logging.WARNING)`` silences them, the numbers stay in ``trainer.state.log_history``."""
    items = ", ".join(f"{k} {_value(v)}" for k, v in logs.items() if k != "total_flos")
    if items:
        logging.getLogger(METRICS_LOGGER).info("%s%s", "" if step is None else f"step {step}: ", items)


def bars_enabled() -> bool:
    """Whether progress bars are on (transformers' switch)."""
    from transformers.utils import logging as hf_logging

    return hf_logging.is_progress_bar_enabled()


def show_progress(requested: bool) -> bool:
    """A bar is shown when the caller asks for one and bars are on."""
    return bool(requested) and bars_enabled()


def disable_bars() -> None:
    """Silence every progress bar (transformers', the Hub's and this package's)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def quiet_unless_terminal(stream=None) -> bool:
    """Silence the bars when `stream` (default stderr) is not a terminal, e.g. redirected to a log file, where
    tqdm's carriage returns turn each update into a line (628 in one demo log). Returns whether it silenced."""
    stream = sys.stderr if stream is None else stream
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):
        terminal = False
    if not terminal:
        disable_bars()
    return not terminal


@contextmanager
def bars_off(off: bool = True) -> Iterator[None]:
    """Within: no progress bars when `off` (e.g. a Trainer's ``disable_tqdm``, which transformers' own shard-writing
    bar does not read); the switch is as it was afterwards."""
    from transformers.utils import logging as hf_logging

    turn_off = off and hf_logging.is_progress_bar_enabled()
    if turn_off:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if turn_off:
            hf_logging.enable_progress_bar()
