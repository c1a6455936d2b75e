"""protpeft.tune: hyperparameter search with Ray Tune over Ray Train runs, and the robustness report.

``run_search("TUNE.yaml")`` runs a search (see :mod:`protpeft.tune.space` for the file's format) and returns an
:class:`~protpeft.tune.outcome.ExperimentResult`; ``write_report(experiment_dir)`` writes the report. Ray and
matplotlib are imported when these are called, so importing this package stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .space import SearchSpec, TuneSpec, load_search

if TYPE_CHECKING:
    from .outcome import ExperimentResult
    from .report import ReportFiles

__all__ = ["ExperimentResult", "ReportFiles", "SearchSpec", "TuneSpec", "load_search", "run_search", "write_report"]


def run_search(tune_file: Any, **kwargs: Any) -> ExperimentResult:
    """See :func:`protpeft.tune.experiment.run_search`."""
    from .experiment import run_search as run

    return run(tune_file, **kwargs)


def write_report(experiment: Any, out: Any = None) -> ReportFiles:
    """See :func:`protpeft.tune.report.write_report`."""
    from .report import write_report as write

    return write(experiment, out)
