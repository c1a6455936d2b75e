"""The MLflow pyfunc flavour of a protpeft version, logged as models-from-code (this file is the model's code).

MLflow executes this file when it loads the model (``mlflow.pyfunc.load_model``, ``mlflow models serve``), so it
is not imported by protpeft itself and may import mlflow at the top. The artefact is reached through
``context.artifacts["run"]`` and checked against its manifest before loading, exactly like
``protpeft.registry.load``. Input: a dataframe with columns ``seq_a``, ``seq_b`` (PPI) or ``sequence`` (symmetry).
Output: a dataframe with ``probability`` (PPI) or one probability column per class (symmetry).
"""

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class ProtpeftModel(PythonModel):
    def load_context(self, context) -> None:
        from protpeft.registry.load import load_run_dir

        self.predictor = load_run_dir(context.artifacts["run"])

    # A DataFrame hint tells MLflow not to infer a schema from hints: the explicit signature logged with the model
    # (seq_a/seq_b or sequence) is what it enforces.
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        predictor = self.predictor
        if predictor.task == "ppi":
            missing = [c for c in ("seq_a", "seq_b") if c not in frame.columns]
            if missing:
                raise ValueError(f"a PPI model needs columns seq_a and seq_b; missing {missing}")
            pairs = list(zip(frame["seq_a"].astype(str), frame["seq_b"].astype(str), strict=True))
            return pd.DataFrame({"probability": predictor.predict(pairs=pairs).astype(float)})
        if "sequence" not in frame.columns:
            raise ValueError("a symmetry model needs a column 'sequence'")
        probs = predictor.predict(sequences=list(frame["sequence"].astype(str)))
        return pd.DataFrame(probs.astype(float), columns=list(predictor.label_names))


mlflow.models.set_model(ProtpeftModel())
