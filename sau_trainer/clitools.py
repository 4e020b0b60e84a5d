"""What the subcommands share: the one-line error, checks on ``--model`` before anything loads, the thread count.

A user's mistake (a model path that does not exist, a Hub id that is not cached while offline, an output
path that is a file) ends in one line, ``sau-trainer COMMAND: error: ...``, and exit status 2, like
argparse's own errors; a traceback is kept for what is a bug.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

# Under this many parameters a model's matrices are small enough that a second thread costs more in
# synchronisation than it gains (measured: `sau-trainer eval` on the 2-layer demo model, 2-core CPU,
# 48 s with torch's default threads and 6.9 s with one).
SMALL_MODEL_PARAMETERS = 50_000_000


class CommandError(Exception):
    """A mistake in the command's input: printed as one line, exit status 2."""


def report_error(command: str, message: object) -> int:
    """Print ``sau-trainer COMMAND: error: MESSAGE`` (one line) on stderr; returns 2, argparse's status."""
    text = " ".join(str(message).split()) or type(message).__name__
    print(f"sau-trainer {command}: error: {text}", file=sys.stderr)
    return 2


def _looks_like_path(name: str) -> bool:
    """A Hub id is ``name`` or ``owner/name``; anything absolute, relative (./, ../, ~) or deeper is a path."""
    return (os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1
            or (os.sep != "/" and os.sep in name) or os.path.exists(name))


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return bool(constants.HF_HUB_OFFLINE) or env in ("1", "true", "yes", "on")


def model_problem(model: str, flag: str = "--model") -> str | None:
    """Why ``model`` cannot be loaded, found without loading it (None when it looks loadable).

    A local directory must hold a ``config.json``; a name that looks like a path must exist; a Hub id is looked
    up in the local Hugging Face cache first. One that is not cached must be reachable: offline
    (``HF_HUB_OFFLINE``) it is a problem at once; online the Hub is asked once, without retries (see
    `hub_problem`), so a machine without network fails in a second instead of retrying for a minute."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            return f"{flag} {model}: the directory has no config.json; give a saved model directory."
        return None
    if path.exists():
        return f"{flag} {model}: is a file; give a saved model directory or a Hub id."
    if _looks_like_path(model):
        return f"{flag} {model}: no such directory; give a saved model directory or a Hub id."
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(model, "config.json")
    except Exception:  # an id the Hub library rejects: report it the same way
        cached = None
    if isinstance(cached, str):
        return None
    if _offline():
        return (f"{flag} {model}: not a local directory, and not in the Hugging Face cache while the Hub is "
                "offline (HF_HUB_OFFLINE); download it once online or give a saved model directory.")
    return hub_problem(model, flag)


def _ask_hub(model: str) -> tuple[str, str]:
    """One request for ``model``'s ``config.json`` on the Hub, without retries: ("ok" | "gated" | "missing" |
    "other" | "unreachable", the error's first line)."""
    import inspect

    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    url = hf_hub_url(model, "config.json")
    try:
        if "retry_on_errors" in inspect.signature(get_hf_file_metadata).parameters:
            get_hf_file_metadata(url, timeout=constants.HF_HUB_ETAG_TIMEOUT, retry_on_errors=False)
        else:  # huggingface_hub < 1.0 retries a failed HEAD there (5 times, with backoff): one plain request
            from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

            response = get_session().head(url, headers=build_hf_headers(), timeout=constants.HF_HUB_ETAG_TIMEOUT,
                                          allow_redirects=False)
            hf_raise_for_status(response)
    except GatedRepoError:
        return "gated", ""
    except RepositoryNotFoundError:
        return "missing", ""
    except HfHubHTTPError as err:
        return "other", str(err)
    except Exception as err:  # no network, DNS, proxy, timeout: said once, not retried
        text = " ".join(str(err).split()) or type(err).__name__
        cause = re.search(r"\[Errno -?\d+\] [^'\")(]+", text)  # urllib3 wraps it: "MaxRetryError(...(Caused by"
        return "unreachable", (cause.group(0).strip() if cause else text)[:200]
    return "ok", ""


def hub_problem(model: str, flag: str = "--model") -> str | None:
    """Why an uncached Hub id cannot be downloaded, asked once (`_ask_hub`): a Hub that cannot be reached or a
    repository it does not have (None otherwise; a gated repo and other errors are left to ``from_pretrained``)."""
    from huggingface_hub import constants

    kind, text = _ask_hub(model)
    if kind == "missing":
        return (f"{flag} {model}: not a local directory, not in the Hugging Face cache, and not a model on the "
                f"Hub ({constants.ENDPOINT}; or a private one: log in with `hf auth login`); give a saved model "
                "directory or a Hub id.")
    if kind == "unreachable":
        return (f"{flag} {model}: not a local directory, not in the Hugging Face cache, and the Hub "
                f"({constants.ENDPOINT}) cannot be reached ({text}); connect, set HF_HUB_OFFLINE=1 to use "
                "only the cache, or give a saved model directory.")
    return None


def cached_snapshot(model: str) -> str | None:
    """The local folder of a Hub id's cached snapshot, to load from instead of the id when the Hub is offline or
    cannot be reached (asked once); None otherwise (a local path, an uncached id, a reachable Hub). Loading the
    id there retries every file ``from_pretrained`` looks for that the cache lacks (``adapter_config.json``: 5
    retries each, minutes of warnings; transformers' adapter lookup ignores ``local_files_only``)."""
    if Path(model).expanduser().exists() or _looks_like_path(model):
        return None
    from huggingface_hub import snapshot_download, try_to_load_from_cache

    try:
        if not isinstance(try_to_load_from_cache(model, "config.json"), str):
            return None
    except Exception:
        return None
    if not _offline():
        kind, text = _ask_hub(model)
        if kind != "unreachable":
            return None
        logger.info("%s: the Hugging Face Hub cannot be reached (%s); loading the cached copy.", model, text)
    try:
        return snapshot_download(model, local_files_only=True)
    except Exception:  # an incomplete snapshot: from_pretrained says what is missing
        return None


def load_problem(model: str, err: BaseException, flag: str = "--model") -> str:
    """One line for an error of ``from_pretrained`` (no connection, gated repo, unknown id): its first line."""
    text = " ".join(str(err).split()) or type(err).__name__
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{flag} {model}: cannot load it ({text}); give a saved model directory or a Hub id you can reach."


def output_dir_problem(path: str | os.PathLike, flag: str = "--output-dir") -> str | None:
    """An output path that exists and is not a directory (or lies under a file) cannot be written into."""
    p = Path(path)
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                where = "" if q == p else f" ({q} is a file)"
                return f"{flag} {path}: not a directory{where}; give a directory path."
            return None
    return None


def device_problem(device: str | None, flag: str = "--device") -> str | None:
    """A device this machine does not have (``cuda`` without a GPU, a bad name), found before any work."""
    if device is None:
        return None
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as err:
        return f"{flag} {device}: not a device name ({err}); e.g. cpu, cuda, cuda:1."
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return f"{flag} {device}: no CUDA device on this machine; leave --device out to use the CPU."
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            return f"{flag} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)."
    return None


def estimate_parameters(model_dir: str | os.PathLike) -> int | None:
    """Parameters of a decoder-only model, from its ``config.json`` (no weights read); None if unknown."""
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    cfg = cfg.get("text_config", cfg)
    try:
        d, layers, vocab = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"]), int(cfg["vocab_size"])
    except (KeyError, TypeError, ValueError):
        return None
    ffn = int(cfg.get("intermediate_size") or 4 * d)
    return layers * (4 * d * d + 3 * d * ffn) + 2 * vocab * d


def set_threads(threads: int | None, model_dir: str | os.PathLike | None) -> int:
    """``torch.set_num_threads``: ``threads`` when given, else 1 for a small model (see SMALL_MODEL_PARAMETERS),
    else torch's default. Returns the count in use."""
    import torch

    if threads is None and model_dir is not None:
        n = estimate_parameters(model_dir)
        if n is not None and n < SMALL_MODEL_PARAMETERS:
            threads = 1
            logger.info("Using 1 CPU thread: the model is small (~%.1fM parameters); --threads N to change.",
                        n / 1e6)
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def finite_float(text: str) -> float:
    """argparse type: a finite number (``nan``, ``inf`` and ``1e999`` are refused: no setting takes them)."""
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    import argparse

    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value
