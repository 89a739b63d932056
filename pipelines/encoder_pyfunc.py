"""The registered encoder as an MLflow pyfunc, logged as "models from code".

MLflow copies this file into the model and runs it on load (``set_model`` below names the model), so
loading a registered encoder executes reviewed code and unpickles nothing; the weights are the export
folder's safetensors. ``predict(slices [B, 1, H, W] float32) -> CLS embeddings [B, D] float32``.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import torch

from braindino.features import Encoder
from pipelines.registry import EXPORT_ARTIFACT, WEIGHTS_FILE


class EncoderModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.encoder = Encoder.from_checkpoint(Path(context.artifacts[EXPORT_ARTIFACT]) / WEIGHTS_FILE)

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        slices = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        return self.encoder.encode_slices(slices).numpy()


mlflow.models.set_model(EncoderModel())
