"""Progress bars: one switch for all of them, transformers' own.

`transformers.utils.logging.disable_progress_bar()` (or ``HF_HUB_DISABLE_PROGRESS_BARS=1``) silences the
bars of transformers (weight loading, shard writing) and of the Hub library; this package's bars
(evaluation, pruning, saliency) follow the same switch, so one call quiets a run whose output goes to a
log file, where every bar update would be a line of noise.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


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
