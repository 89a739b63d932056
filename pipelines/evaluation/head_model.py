"""MLflow "models from code" for a registered head: MLflow runs this file to build the pyfunc, so nothing is
pickled; the model's artifact ``head`` is the head export folder (safetensors + JSON) it loads.

``predict`` takes encoder features as one array: slice embeddings ``[B, S, D]`` for a per-volume head (or
``[S, D]`` for a per-slice head), or multi-block patch tokens ``[B, n_blocks, h*w, D]`` (a square token grid)
for a segmentation head. It returns class probabilities ``[B, K]``, values ``[B]`` (in the target's
unit), risk scores ``[B]``, or label maps ``[B, H, W]``.
"""

from __future__ import annotations

import math

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class HeadModel(PythonModel):
    def load_context(self, context) -> None:
        from braindino.heads import load_head

        self.head = load_head(context.artifacts["head"])

    def predict(self, context, model_input, params=None):
        import torch

        spec, module = self.head.spec, self.head.module
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            if spec.kind == "segmentation":
                side = math.isqrt(x.shape[2])
                return module(x, (side, side)).argmax(1).numpy()
            out = module(x if spec.unit == "volume" else x[:, None]).double()
        if spec.kind == "classification":
            return torch.softmax(out, dim=1).numpy()
        if spec.kind == "regression":
            return (out[:, 0] * spec.output["target_std"] + spec.output["target_mean"]).numpy()
        return out[:, 0].numpy()


mlflow.models.set_model(HeadModel())
