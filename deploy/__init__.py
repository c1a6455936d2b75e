"""protpeft.deploy: registered models over HTTP with Ray Serve (one base model in memory, many adapters on it),
and offline batch prediction as Ray tasks.

``serve_models(["ppi-lora@champion"])`` serves until interrupted (``protpeft serve``);
``predict_files_on_ray("ppi-lora@champion", out, pairs=..., sequences=...)`` predicts a file across a cluster
(``protpeft predict --ray``). The Serve application itself is :mod:`protpeft.deploy.app`, the HTTP schemas
:mod:`protpeft.deploy.schemas`. Ray, torch and MLflow are imported inside functions, so importing this package is
cheap.
"""

from .batch import predict_files_on_ray
from .serve import ServerInfo, serve_models

__all__ = ["ServerInfo", "predict_files_on_ray", "serve_models"]
