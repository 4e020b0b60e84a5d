"""Split names of the form ``"<config>/<split>"`` (MUSE's and WMDP's: one Hub dataset config and split per name)."""

from __future__ import annotations

from collections.abc import Container


def parse_config_split(name: str, configs: Container[str] | dict, protocol: str, examples: str) -> tuple[str, str]:
    """``"<config>/<split>"`` -> ``(config, split)``; a ValueError naming the protocol, its split-name form
    (`examples`: a few valid names, quoted) and its configs for anything else."""
    config, sep, split = name.partition("/")
    if not sep or not split or "/" in split:
        raise ValueError(f"{protocol} split names are '<config>/<split>' (e.g. {examples}); got {name!r}.")
    if config not in configs:
        raise ValueError(f"Unknown {protocol} config {config!r} in {name!r}; the configs are {sorted(configs)}.")
    return config, split


def check_rows(rows: list, name: str, source: str, columns, label: str = "split") -> None:
    """`rows` is non-empty and each row is an object with every one of `columns` (a ValueError naming `source`,
    the split and the row otherwise); extra columns are allowed. The columns' types are each protocol's to check."""
    if not rows:
        raise ValueError(f"{source}: the {label} {name!r} is empty.")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{source}: row {i} of {name!r} is a {type(row).__name__}, not an object.")
        for col in columns:
            if col not in row:
                raise ValueError(f"{source}: split {name!r} has no column {col!r} (row {i}; it has {sorted(row)}).")
