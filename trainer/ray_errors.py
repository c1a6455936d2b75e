"""A failed Ray Train run as one line: the innermost error, whatever Ray wrapped around it."""

from __future__ import annotations

from protpeft.errors import ProtpeftError
from protpeft.trainer.ray_worker import WorkerError

__all__ = ["TrainingFailed", "root_cause"]


class TrainingFailed(ProtpeftError):
    """The Ray Train run failed (after its allowed restarts); the message is the root cause on one line."""


def root_cause(err: BaseException | str) -> str:
    """One line naming the innermost error of a Ray failure (worker exceptions arrive wrapped several times; Tune
    may hand over just the error's text)."""
    if not isinstance(err, BaseException):
        lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
        return lines[-1] if lines else ""
    seen: set[int] = set()
    while id(err) not in seen:
        seen.add(id(err))
        failures = getattr(err, "worker_failures", None)  # ray.train.WorkerGroupError: {rank: exception}
        if failures:
            err = next(iter(failures.values()))
            continue
        nxt = getattr(err, "cause", None) or err.__cause__
        if isinstance(nxt, BaseException):
            err = nxt
            continue
        break
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    # our own errors are messages (keep them whole, on one line); others may carry a traceback (keep its end)
    text = " ".join(lines) if isinstance(err, ProtpeftError | WorkerError) else lines[-1] if lines else ""
    name = type(err).__name__
    if isinstance(err, WorkerError) or text.startswith(name):
        return text
    return f"{name}: {text}" if text else name
