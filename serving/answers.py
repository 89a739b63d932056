"""What the API answers, built from what the deployments return: every answer names the models that made it."""

from __future__ import annotations

import gzip
from typing import Any

import nibabel as nib
import numpy as np
import torch

from braindino.features import VolumeInput
from braindino.heads import LabelVolume
from serving.encoder import EncodedSlices
from serving.scans import DecodedScan

HEAD_CARD_KEYS = ("task", "kind", "reference", "name", "version", "weights_sha256")


def encoder_card(description: dict[str, Any]) -> dict[str, Any]:
    """The encoder that produced an answer: its reference, registry name and version, weights digest."""
    return {key: description[key] for key in ("reference", "name", "version", "weights_sha256")}


def head_card(card: dict[str, Any]) -> dict[str, Any]:
    return {key: card[key] for key in HEAD_CARD_KEYS}


def input_summary(decoded: DecodedScan, slices: int | None = None) -> dict[str, Any]:
    summary = {"format": decoded.format, "canonical_shape": list(decoded.volume.shape)}
    return summary if slices is None else {**summary, "slices": slices}


def embedding_answer(decoded: DecodedScan, inputs: VolumeInput, output: EncodedSlices, description: dict[str, Any],
                     tokens: str, per_slice: bool) -> dict[str, Any]:
    """The volume embedding (mean over the slices, as the offline ``Encoder.encode_volume``), optionally per slice."""
    slices = torch.from_numpy(output.cls if tokens == "cls" else np.concatenate([output.cls, output.patch_mean], axis=1))
    answer = {
        "encoder": encoder_card(description),
        "input": input_summary(decoded, len(inputs.z)),
        "tokens": tokens,
        "dim": int(slices.shape[1]),
        "embedding": slices.mean(dim=0).tolist(),
    }
    if per_slice:
        answer["per_slice"] = [{"z": int(z), "embedding": row} for z, row in zip(inputs.z, slices.tolist())]
    return answer


def prediction_answer(decoded: DecodedScan, card: dict[str, Any], prediction: dict[str, Any],
                      description: dict[str, Any]) -> dict[str, Any]:
    return {"task": card["task"], "head": head_card(card), "encoder": encoder_card(description),
            "input": input_summary(decoded), "prediction": prediction}


def nifti_gz(labels: LabelVolume) -> bytes:
    """The label volume as .nii.gz bytes, int16, its affine as both qform and sform."""
    image = nib.Nifti1Image(labels.labels.astype(np.int16, copy=False), labels.affine)
    image.set_qform(labels.affine, code=1)
    image.set_sform(labels.affine, code=1)
    return gzip.compress(image.to_bytes(), compresslevel=6)
