"""The MLflow pyfunc flavour of a protpeft version, logged as models-from-code (this file is the model's code).

MLflow executes this file when it loads the model (``mlflow.pyfunc.load_model``, ``mlflow models serve``), so it
is not imported by protpeft itself and may import mlflow at the top. The artefact is reached through
``context.artifacts["run"]`` and checked against its manifest before loading, exactly like
``protpeft.registry.load``. Input: a dataframe with the task's ``input_columns`` (``seq_a``, ``seq_b`` for PPI,
``sequence`` for symmetry). Output: a dataframe with ``probability`` (PPI) or one probability column per class.
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
        from protpeft.tasks import TASKS

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        predictor = self.predictor
        spec = TASKS[predictor.task]
        missing = [c for c in spec.input_columns if c not in frame.columns]
        if missing:
            needed = ", ".join(spec.input_columns)
            raise ValueError(f"a {spec.title} model needs the column(s) {needed}; missing {missing}")
        examples = list(zip(*(frame[c].astype(str) for c in spec.input_columns), strict=True))
        columns = spec.output_columns(predictor.label_names)
        probs = predictor.predict_examples(examples).astype(float).reshape(len(examples), len(columns))
        return pd.DataFrame(probs, columns=columns)


mlflow.models.set_model(ProtpeftModel())
