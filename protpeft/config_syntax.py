"""The syntax layer under the typed configs: YAML read with the line of every key (so errors point at it), ``--set``
strings parsed, and the one dotted-key setter that overrides, run-many's typed values and Tune's samples all use.
Nothing here knows the config's schema (:mod:`protpeft.config` does)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from protpeft.errors import ConfigError

__all__ = ["apply_overrides", "parse_override", "read_yaml_mapping", "set_dotted"]


class _LineLoader(yaml.SafeLoader):
    """A SafeLoader that remembers the line of every mapping key, so errors can point at the YAML line."""


def _yaml_with_lines(text: str) -> tuple[Any, dict[tuple[str, ...], int]]:
    lines: dict[tuple[str, ...], int] = {}
    root = yaml.compose(text, Loader=_LineLoader)

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = (*path, str(key_node.value))
                lines[key] = key_node.start_mark.line + 1
                walk(value_node, key)

    if root is not None:
        walk(root, ())
    return yaml.load(text, Loader=_LineLoader), lines


_YAML11_BOOL_WORDS = {"on", "off", "yes", "no", "y", "n"}


def parse_override(item: str) -> tuple[list[str], Any]:
    """``'optim.lr=3e-4'`` → (``['optim', 'lr']``, 0.0003); the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    key, raw = item.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {item!r} has an empty key")
    if raw.strip().lower() in _YAML11_BOOL_WORDS:
        return keys, raw.strip()  # `name=off` is a name, not False; booleans are written true / false
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({err})") from None
    # YAML reads "1e-3" as a string; accept it as a number since config keys never hold such strings.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in "eE.") else value
        except ValueError:
            pass
    return keys, value


def set_dotted(raw: dict[str, Any], key: str | list[str], value: Any) -> None:
    """Set ``raw[a][b][c] = value`` for the dotted key ``'a.b.c'`` in place, creating intermediate mappings.

    The one dotted-key setter: ``--set`` strings (once parsed), run-many's typed values and Tune's sampled values all
    go through it.
    """
    *parents, leaf = key.split(".") if isinstance(key, str) else key
    node = raw
    for part in parents:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[leaf] = copy.deepcopy(value)


def apply_overrides(
    raw: dict[str, Any], overrides: list[str] | None, values: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A copy of ``raw`` with each user ``--set`` string, then each typed dotted value (``{"engine.workers": 2}``),
    set."""
    merged = copy.deepcopy(raw)
    for item in overrides or []:
        set_dotted(merged, *parse_override(item))
    for key, value in (values or {}).items():
        set_dotted(merged, key, value)
    return merged


def read_yaml_mapping(path: str | Path, kind: str, expected: str) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    """A YAML file holding a mapping (an empty file is ``{}``) and the line of each key.

    Raises:
        ConfigError: unreadable file, invalid YAML (with its line) or not a mapping (``expected`` says what is).
    """
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"{source}: cannot read {kind} ({err.strerror})") from None
    try:
        loaded, lines = _yaml_with_lines(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise ConfigError(f"{where}: invalid YAML: {getattr(err, 'problem', err)}") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{source}:1: {expected}, got {type(loaded).__name__}")
    return loaded, lines
