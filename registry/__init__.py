"""protpeft.registry: MLflow tracking and the model registry."""
