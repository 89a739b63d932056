"""Task runners on slice embeddings: a trained head (classification, regression, Cox survival) and the kNN probe.

Rows are samples (a scan, or one slice for slice-level targets); ``embeddings`` ``[n, S, D]`` hold each
row's slice embeddings, padded, with ``mask`` ``[n, S]`` marking the real ones. Targets: class indices
(classification), values (regression, trained standardised), or ``[n, 2]`` (time, event) (survival).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from braindino.evaluation.knn import knn_probabilities
from braindino.evaluation.metrics import accuracy, macro_auc, mean_absolute_error, root_mean_squared_error
from braindino.evaluation.protocol import Fitted
from braindino.evaluation.survival import concordance_index, cox_negative_log_likelihood, log_rank
from braindino.features.pooling import masked_mean
from braindino.heads.models import EmbeddingHead, EmbeddingHeadConfig
from braindino.heads.training import FitSettings, fit_selected, minibatches

PRIMARY = {"classification": ("macro_auc", True), "regression": ("mae", False), "survival": ("c_index", True)}


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    return {"macro_auc": macro_auc(labels, probabilities), "accuracy": accuracy(labels, probabilities)}


@dataclass
class EmbeddingTask:
    kind: str  # classification | regression | survival
    embeddings: torch.Tensor
    mask: torch.Tensor
    targets: np.ndarray
    n_outputs: int  # classes, or 1
    hidden_dim: int = 768
    pooling: str = "mean"
    settings: FitSettings = FitSettings()
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.kind not in PRIMARY:
            raise ValueError(f"EmbeddingTask kind must be one of {list(PRIMARY)}, got {self.kind!r}")
        self.primary, self.higher_is_better = PRIMARY[self.kind]
        self.embeddings, self.mask = self.embeddings.to(self.device), self.mask.to(self.device)

    def head_config(self) -> EmbeddingHeadConfig:
        return EmbeddingHeadConfig(self.embeddings.shape[-1], self.n_outputs, self.hidden_dim, self.pooling)

    def fit(self, train_rows: np.ndarray, val_rows: np.ndarray, seed: int) -> Fitted:
        targets = self.targets
        extra = {}
        if self.kind == "regression":
            mean, std = float(targets[train_rows].mean()), float(targets[train_rows].std()) or 1.0
            extra = {"target_mean": mean, "target_std": std}
            y = torch.tensor((targets - mean) / std, dtype=torch.float32, device=self.device)
        elif self.kind == "survival":
            y = torch.tensor(targets, dtype=torch.float32, device=self.device)
        else:
            y = torch.tensor(targets, dtype=torch.long, device=self.device)
        batch_size = len(train_rows) if self.kind == "survival" else self.settings.batch_size  # Cox: whole risk sets

        def batches(rng):
            return [(torch.from_numpy(train_rows[b]).to(self.device),) for b in minibatches(len(train_rows), batch_size, rng)]

        def loss(module, batch):
            (rows,) = batch
            out = module(self.embeddings[rows], self.mask[rows])
            if self.kind == "classification":
                return F.cross_entropy(out, y[rows])
            if self.kind == "regression":
                return F.mse_loss(out[:, 0], y[rows])
            return cox_negative_log_likelihood(out[:, 0], y[rows, 0], y[rows, 1])

        @torch.no_grad()
        def score(module) -> tuple[float, float]:
            fitted = Fitted(module, extra=extra)
            metric = self.metrics(val_rows, self.predict(fitted, val_rows))[self.primary]
            return metric, float(loss(module, (torch.from_numpy(val_rows).to(self.device),)))

        module, selection = fit_selected(lambda: EmbeddingHead(self.head_config()).to(self.device), batches, loss,
                                         self.settings, seed, score if len(val_rows) else None, self.higher_is_better)
        fitted = Fitted(module, selection, extra)
        if self.kind == "survival":
            extra["train_median_risk"] = float(np.median(self.raw(fitted, train_rows)))
        return fitted

    @torch.no_grad()
    def raw(self, fitted: Fitted, rows: np.ndarray) -> np.ndarray:
        index = torch.from_numpy(rows).to(self.device)
        return fitted.model.eval()(self.embeddings[index], self.mask[index]).double().cpu().numpy()

    def predict(self, fitted: Fitted, rows: np.ndarray, keep: bool = False) -> np.ndarray:
        """Probabilities ``[r, K]``, values ``[r]``, or (risk, high-risk flag) ``[r, 2]``."""
        out = self.raw(fitted, rows)
        if self.kind == "classification":
            return torch.softmax(torch.from_numpy(out), dim=1).numpy()
        if self.kind == "regression":
            return out[:, 0] * fitted.extra["target_std"] + fitted.extra["target_mean"]
        threshold = fitted.extra.get("train_median_risk", np.inf)
        return np.stack([out[:, 0], out[:, 0] > threshold], axis=1)

    def metrics(self, rows: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
        targets = self.targets[rows]
        if self.kind == "classification":
            return classification_metrics(targets, outputs)
        if self.kind == "regression":
            return {"mae": mean_absolute_error(targets, outputs), "rmse": root_mean_squared_error(targets, outputs)}
        time, event = targets[:, 0], targets[:, 1].astype(bool)
        return {"c_index": concordance_index(time, event, outputs[:, 0]),
                "log_rank_p": log_rank(time, event, outputs[:, 1].astype(bool)).p_value}


@dataclass
class KnnProbe:
    """The kNN probe on volume embeddings (the mean of each row's slice embeddings); nothing is trained."""

    embeddings: torch.Tensor
    mask: torch.Tensor
    labels: np.ndarray
    n_classes: int
    k: int = 10
    temperature: float = 0.07
    primary: str = "macro_auc"
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        self.volumes = masked_mean(self.embeddings.float().cpu(), self.mask.cpu())

    def fit(self, train_rows: np.ndarray, val_rows: np.ndarray, seed: int) -> Fitted:
        return Fitted(train_rows)

    def predict(self, fitted: Fitted, rows: np.ndarray, keep: bool = False) -> np.ndarray:
        bank = fitted.model
        return knn_probabilities(self.volumes[bank], torch.from_numpy(self.labels[bank]), self.volumes[rows],
                                 self.n_classes, self.k, self.temperature).numpy()

    def metrics(self, rows: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
        return classification_metrics(self.labels[rows], outputs)
