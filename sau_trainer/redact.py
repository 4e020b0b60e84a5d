"""What must never leave the machine: access tokens, and local absolute paths in what is prepared for upload.

One owner for two rules. An access token is recognised by its key (``hub_token``, ``push_to_hub_token``,
``token``, ``*_token``, ``api_key``, ``password``, ``secret``; not tokenizer names such as ``pad_token``) or by
its value (a Hugging Face token, ``hf_`` and 30 or more letters and digits). The recipe refuses both
(`sau_trainer.pipeline.recipe_guards`); `redact` drops or masks them in anything written for the Hub, for a
folder made from files written before that rule. A local absolute path (``/home/me/models/llama``,
``~/data``) becomes its last part (``llama``): the model card and the JSON files of an upload keep what a
reader can use (the model's or the run's name) and not where it lay on one machine. A value counts as a path by
its key (``path``, ``data_dir``, ``name_or_path``, ...) or by where it points (home, the working or temporary
directory, the run's folder), so generated text and tokenizer data that begin with ``/`` stay as they are.
"""

from __future__ import annotations

import os
import re
from typing import Any

# `*_token` names that are tokenizer settings, not credentials
_TOKENIZER_TOKENS = ("bos", "eos", "pad", "unk", "sep", "cls", "mask", "additional_special", "special", "chat")
_SECRET_KEY = re.compile(r"(?:^|_)(?:token|api_?key|password|passwd|secret|credentials?)$", re.IGNORECASE)
TOKEN_VALUE = re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")
REDACTED = "<redacted>"

TOKEN_ADVICE = ("an access token is never read from a recipe or an override (it would be written to the output "
                "directory and the model card); set the HF_TOKEN environment variable or run "
                "`huggingface-cli login` (`hf auth login`) instead")


def is_secret_key(key: Any) -> bool:
    """Whether a setting named `key` holds a credential (``hub_token``, ``push_to_hub_token``, ``api_key``, ...)."""
    if not isinstance(key, str):
        return False
    name = key.strip().lower()
    if any(name == f"{t}_token" for t in _TOKENIZER_TOKENS):
        return False
    return bool(_SECRET_KEY.search(name))


def looks_like_token(value: Any) -> bool:
    """Whether a string holds a Hugging Face access token (``hf_...``)."""
    return isinstance(value, str) and TOKEN_VALUE.search(value) is not None


def secret_problems(data: Any, path: str = "") -> list[str]:
    """The key paths (``unlearn.args.hub_token``) of every credential in a recipe mapping, by key or by value.

    The messages never repeat the value."""
    found: list[str] = []
    stack: list[tuple[Any, str]] = [(data, path)]
    seen: set[int] = set()
    while stack:
        node, where = stack.pop()
        if isinstance(node, dict | list):
            if id(node) in seen:  # shared (YAML aliases) or cyclic: each container once
                continue
            seen.add(id(node))
        if isinstance(node, dict):
            for key, value in node.items():
                here = f"{where}.{key}" if where else str(key)
                if is_secret_key(key) and value not in (None, False, ""):
                    found.append(here)
                else:
                    stack.append((value, here))
        elif isinstance(node, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(node))
        elif looks_like_token(node):
            found.append(where or "value")
    return [f"{where}: {TOKEN_ADVICE}" for where in sorted(set(found))]


def is_local_absolute_path(value: Any) -> bool:
    """A string that is one absolute local path (``/x/y``, ``~/x``, ``C:\\x``): no URL, no line break."""
    if not isinstance(value, str) or not value or "\n" in value or "://" in value:
        return False
    return os.path.isabs(value) or value.startswith("~") or re.match(r"^[A-Za-z]:[\\/]", value) is not None


# keys whose values are paths (``path``, ``data_dir``, ``calibration_path``, ``name_or_path``, ``model``, ...)
_PATH_KEY = re.compile(r"(?:^|_)(?:path|paths|dir|dirs|directory|file|files|model|models|source|name_or_path|"
                       r"tokenizer|results|reference)$", re.IGNORECASE)


def local_roots(*extra: str | os.PathLike) -> tuple[str, ...]:
    """Folders whose paths are local whatever key holds them: home, the working and temporary directories,
    and `extra` (e.g. a run's output directory); never ``/`` itself."""
    import tempfile

    roots = {os.path.expanduser("~"), os.getcwd(), tempfile.gettempdir(), "/tmp", *map(os.fspath, extra)}
    out = set()
    for root in roots:
        for form in (root, os.path.realpath(root)):
            form = form.rstrip("/\\")
            if form and os.path.dirname(form) != form:  # not "/" (nor "C:\\")
                out.add(form)
    return tuple(sorted(out, key=len, reverse=True))


def local_name(value: str) -> str:
    """The last part of a local path (``/home/me/models/llama/`` -> ``llama``)."""
    parts = [p for p in re.split(r"[\\/]+", value) if p and p != "~"]
    return parts[-1] if parts else "."


def redact(doc: Any, roots: tuple[str, ...] | None = None) -> Any:
    """A copy of a JSON/YAML-like document fit for upload: credentials dropped (by key) or masked (by value),
    each local absolute path replaced by its last part.

    A string is taken for a local path when it is one absolute path and either its key names a path (``path``,
    ``data_dir``, ``model``, ``name_or_path``, ``calibration_path``, ...) or it lies under one of `roots`
    (`local_roots()` by default): a generated answer or a tokenizer's merge that happens to begin with ``/`` is
    left as it is. Shared sub-objects are copied once (a recipe's aliases stay the size they were)."""
    roots = local_roots() if roots is None else roots
    memo: dict[tuple[int, bool], Any] = {}

    def under_root(value: str) -> bool:
        expanded = os.path.expanduser(value)
        return value.startswith("~") or any(expanded == r or expanded.startswith((r + "/", r + "\\")) for r in roots)

    def walk(node: Any, pathy: bool) -> Any:
        key = (id(node), pathy)
        if isinstance(node, dict | list | tuple) and key in memo:
            return memo[key]
        if isinstance(node, dict):
            out: dict = {}
            memo[key] = out
            for k, value in node.items():
                if not is_secret_key(k):
                    out[k] = walk(value, isinstance(k, str) and _PATH_KEY.search(k) is not None)
            return out
        if isinstance(node, list | tuple):
            items: list = []
            memo[key] = items
            items.extend(walk(v, pathy) for v in node)
            return items
        if looks_like_token(node):
            return TOKEN_VALUE.sub(REDACTED, node)
        if is_local_absolute_path(node) and (pathy or under_root(node)):
            return local_name(node)
        return node

    return walk(doc, False)
