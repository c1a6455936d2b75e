"""protpeft.registry: MLflow tracking, the model registry and pulling models by name.

``register_run(run_dir, "ppi-lora", alias="champion")`` stores a run directory as a new version;
``load("ppi-lora@champion")`` returns a :class:`~protpeft.predict.Predictor`. MLflow is imported only inside
functions, so importing this package stays cheap (``protpeft --help``).
"""

from .load import load
from .models import pull, register_run, set_alias
from .refs import ModelRef, RegistryError, parse_ref
from .store import ensure_store, tracking_uri
from .versions import (
    ModelVersionInfo,
    RegisteredModelInfo,
    compare_versions,
    get_version,
    list_models,
    list_versions,
)

__all__ = [
    "ModelRef",
    "ModelVersionInfo",
    "RegisteredModelInfo",
    "RegistryError",
    "compare_versions",
    "ensure_store",
    "get_version",
    "list_models",
    "list_versions",
    "load",
    "parse_ref",
    "pull",
    "register_run",
    "set_alias",
    "tracking_uri",
]
