"""Callables that import their module on first call, so the task and mode tables stay cheap to import.

``protpeft.tasks`` and ``protpeft.modes`` are read by light layers (config validation, the registry, ``--help``),
while the code a row points at (readers, metrics, peft) pulls in torch or scikit-learn. A row names that code as
``"module:function"``; :class:`LazyFunction` resolves it when it is first called, and the unit tests resolve every
row's targets so that a typo fails there, not in a user's run.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["LazyFunction"]


class LazyFunction:
    """``module:function``, imported on first call (or on :meth:`resolve`)."""

    def __init__(self, target: str) -> None:
        module, sep, name = target.partition(":")
        if not sep or not module or not name:
            raise ValueError(f"lazy function target {target!r} is not of the form 'module:function'")
        self.target = target
        self._module, self._name = module, name
        self._function: Callable[..., Any] | None = None

    def resolve(self) -> Callable[..., Any]:
        if self._function is None:
            self._function = getattr(importlib.import_module(self._module), self._name)
        return self._function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"LazyFunction({self.target!r})"
