"""References to registered models, in the forms users type: ``name``, ``name@alias``, ``name/3``, and the same
behind ``models:/``. One parser, used by every command and by :func:`protpeft.registry.load`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from protpeft.errors import ProtpeftError

__all__ = ["ModelRef", "RegistryError", "parse_ref"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_ALIAS = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


class RegistryError(ProtpeftError):
    """A registry request a user can fix: unknown model, alias or version, bad reference, unusable artefact."""


@dataclass(frozen=True)
class ModelRef:
    """A registered model name with at most one of ``alias`` / ``version``; neither means the latest version."""

    name: str
    alias: str | None = None
    version: int | None = None

    def __post_init__(self) -> None:
        if self.alias is not None and self.version is not None:
            raise RegistryError(f"{self.name}: give an alias or a version, not both")

    def __str__(self) -> str:
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        if self.version is not None:
            return f"{self.name}/{self.version}"
        return self.name

    @property
    def uri(self) -> str:
        """The ``models:/`` URI MLflow's own tools accept (a bare name means ``models:/name/latest``)."""
        return f"models:/{self}" if self.alias or self.version else f"models:/{self.name}/latest"


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise RegistryError(
            f"invalid model name {name!r}: use letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
    return name


def check_alias(alias: str) -> str:
    if not _ALIAS.fullmatch(alias) or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise RegistryError(
            f"invalid alias {alias!r}: use letters, digits, '_' and '-', starting with a letter; 'latest' and "
            "'v<number>' are reserved by MLflow"
        )
    return alias


def parse_ref(text: str | ModelRef) -> ModelRef:
    """``'ppi-lora'``, ``'ppi-lora@champion'``, ``'ppi-lora/3'``, ``'models:/ppi-lora@champion'`` → :class:`ModelRef`.

    ``name/latest`` is accepted as the bare name.

    Raises:
        RegistryError: the text is none of these forms; the message shows them.
    """
    if isinstance(text, ModelRef):
        return text
    raw = text.strip()
    body = raw.removeprefix("models:/")
    forms = "expected NAME, NAME@ALIAS, NAME/VERSION or models:/NAME@ALIAS"
    if not body:
        raise RegistryError(f"empty model reference; {forms}")
    if "@" in body:
        name, _, alias = body.partition("@")
        if not alias or "/" in alias or "@" in alias:
            raise RegistryError(f"invalid model reference {raw!r}; {forms}")
        return ModelRef(check_name(name), alias=check_alias(alias))
    if "/" in body:
        name, _, version = body.partition("/")
        if not name or "/" in version:  # a path such as runs/x/y or /abs/dir, not NAME/VERSION
            raise RegistryError(f"{raw!r} is not a model reference (a path?); {forms}")
        if version == "latest":
            return ModelRef(check_name(name))
        if not re.fullmatch(r"[0-9]{1,9}", version) or int(version) < 1:  # ASCII digits, an int the store holds
            raise RegistryError(f"invalid model reference {raw!r}: version must be a positive number; {forms}")
        return ModelRef(check_name(name), version=int(version))
    return ModelRef(check_name(body))
