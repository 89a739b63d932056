"""Stage-1/2 objective: a student and an EMA teacher with identical structure, and the combined loss.

``SelfDistillation.forward(batch, teacher_temp)`` returns ``(total_loss, metrics)`` with
``total = dino_weight * dino + ibot_weight * ibot + koleo_weight * koleo [+ gram.weight * gram]``, where
``koleo`` is the sum of the KoLeo term of each global crop's student CLS tokens (0.1 per global crop,
as in DINOv2/v3). The optimisation step is ``braindino.ssl.training_step``; FSDP lives in ``pipelines/``.
``student`` and ``teacher`` are separate modules of the same structure so they can be sharded identically.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from braindino.models.heads import HeadConfig, ProjectionHead
from braindino.models.vit import ViTConfig, VisionTransformer
from braindino.ssl.dino_loss import dino_loss
from braindino.ssl.gram import GramConfig, gram_loss
from braindino.ssl.health import health_metrics
from braindino.ssl.ibot_loss import ibot_loss
from braindino.ssl.koleo import koleo_loss
from braindino.ssl.sinkhorn_knopp import SinkhornKnopp
from braindino.ssl.teacher import ema_update


@dataclass
class SelfDistillationConfig:
    """Architecture of student/teacher and the loss weights (DINOv3 defaults unless the paper says)."""

    vit: ViTConfig = field(default_factory=ViTConfig)
    dino_head: HeadConfig = field(default_factory=HeadConfig)
    ibot_head: HeadConfig = field(default_factory=HeadConfig)
    student_temp: float = 0.1
    sinkhorn_iterations: int = 3
    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1


class DistillationNetwork(nn.Module):
    """Backbone plus DINO (CLS) and iBOT (patch) heads; the student and the teacher are each one of these."""

    def __init__(self, config: SelfDistillationConfig) -> None:
        super().__init__()
        self.backbone = VisionTransformer(config.vit)
        self.dino_head = ProjectionHead(self.backbone.embed_dim, config.dino_head)
        self.ibot_head = ProjectionHead(self.backbone.embed_dim, config.ibot_head)


def _frozen(module: nn.Module) -> nn.Module:
    module.requires_grad_(False)
    return module.eval()


class SelfDistillation(nn.Module):
    """Student, EMA teacher and optional frozen Gram teacher; ``forward`` computes the training loss."""

    def __init__(self, config: SelfDistillationConfig) -> None:
        super().__init__()
        self.config = config
        self.student = DistillationNetwork(config)
        self.teacher = _frozen(copy.deepcopy(self.student))
        self.gram_teacher: VisionTransformer | None = None
        self.gram: GramConfig | None = None  # set with the Gram teacher
        self.sinkhorn = SinkhornKnopp(config.sinkhorn_iterations)

    def set_gram_teacher(self, backbone: VisionTransformer, gram: GramConfig) -> None:
        """Stage 2: anchor the student's patch Gram matrices to this frozen backbone (e.g. a stage-1 teacher copy)."""
        self.gram_teacher, self.gram = _frozen(backbone), gram

    def train(self, mode: bool = True) -> "SelfDistillation":
        """Only the student changes mode; the teachers always run in eval (no drop path)."""
        self.training = mode
        self.student.train(mode)
        return self

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        ema_update(self.teacher, self.student, momentum)

    @torch.no_grad()
    def _teacher_targets(self, global_crops: Tensor, masks: Tensor, teacher_temp: float) -> tuple[Tensor, Tensor]:
        out = self.teacher.backbone(global_crops)
        dino = self.sinkhorn(self.teacher.dino_head(out.cls), teacher_temp)
        ibot = self.sinkhorn(self.teacher.ibot_head(out.patches[masks]), teacher_temp)
        return dino, ibot

    @torch.no_grad()
    def _gram_targets(self, global_crops: Tensor) -> tuple[Tensor, tuple[int, int]]:
        crops = global_crops
        if self.gram.input_scale != 1.0:
            patch = self.gram_teacher.config.patch_size
            size = [round(s * self.gram.input_scale / patch) * patch for s in global_crops.shape[-2:]]
            crops = F.interpolate(global_crops, size=size, mode="bilinear", align_corners=False)
        out = self.gram_teacher(crops)
        return out.patches, out.grid

    def forward(self, batch, teacher_temp: float) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss on one ``braindino.augment.MultiCropBatch``; metrics are detached 0-dim tensors."""
        n_global, n_local = batch.n_global, batch.n_local
        batch_size = batch.global_crops.shape[0] // n_global
        teacher_dino, teacher_ibot = self._teacher_targets(batch.global_crops, batch.masks, teacher_temp)

        global_out = self.student.backbone(batch.global_crops, masks=batch.masks)
        cls_tokens = [global_out.cls]
        if n_local > 0:
            cls_tokens.append(self.student.backbone(batch.local_crops).cls)
        student_dino = self.student.dino_head(torch.cat(cls_tokens))
        student_ibot = self.student.ibot_head(global_out.patches[batch.masks])

        temp = self.config.student_temp
        k = teacher_dino.shape[-1]
        losses = {
            "dino": dino_loss(
                student_dino.reshape(n_global + n_local, batch_size, k),
                teacher_dino.reshape(n_global, batch_size, k),
                temp,
            ),
            "ibot": ibot_loss(student_ibot, teacher_ibot, batch.masks, temp),
            "koleo": torch.stack([koleo_loss(view) for view in global_out.cls.chunk(n_global)]).sum(),
        }
        weights = {"dino": self.config.dino_weight, "ibot": self.config.ibot_weight, "koleo": self.config.koleo_weight}
        if self.gram_teacher is not None:
            gram_patches, gram_grid = self._gram_targets(batch.global_crops)
            losses["gram"] = gram_loss(global_out.patches, gram_patches, global_out.grid, gram_grid)
            weights["gram"] = self.gram.weight
        total = sum(weights[name] * value for name, value in losses.items())

        metrics = {f"loss_{name}": value.detach() for name, value in losses.items()}
        metrics["loss_total"] = total.detach()
        metrics.update(health_metrics(teacher_dino, global_out.cls.detach()))
        return total, metrics
