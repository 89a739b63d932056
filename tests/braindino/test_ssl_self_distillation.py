"""SelfDistillation: student/teacher composition and the combined loss on one multi-crop batch."""

import copy

import pytest
import torch

from braindino.augment import MultiCropBatch
from braindino.config import load_config
from braindino.models import HeadConfig, ViTConfig
from braindino.ssl import GramConfig, SelfDistillation, SelfDistillationConfig
from tests.braindino.references import cross_entropy64, cross_entropy_rows, gram64, koleo64, reference_sinkhorn


def tiny_config(**overrides) -> SelfDistillationConfig:
    head = HeadConfig(n_prototypes=32, hidden_dim=32, bottleneck_dim=16)
    return SelfDistillationConfig(vit=ViTConfig(size="micro", drop_path_rate=0.1), dino_head=head, ibot_head=head, **overrides)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return SelfDistillation(tiny_config()).train()


def known_batch() -> MultiCropBatch:
    """B=3 slices, 2 global crops of 48 px (9 patches) and 2 local crops; masks on three of the six global crops."""
    generator = torch.Generator().manual_seed(7)
    masks = torch.zeros(6, 9, dtype=torch.bool)
    masks[0, [0, 1, 2, 4]] = True  # crop 0 of slice 0: 4 tokens
    masks[2, [8]] = True  # crop 0 of slice 2: 1 token
    masks[4, 3:9] = True  # crop 1 of slice 1: 6 tokens
    return MultiCropBatch(torch.randn(6, 1, 48, 48, generator=generator), torch.randn(6, 1, 32, 32, generator=generator),
                          masks, n_global=2, n_local=2)


def test_total_loss_equals_a_float64_sum_of_each_weighted_term():
    """DINO over cross-view pairs, iBOT over every global crop, KoLeo summed over global crops, Gram: all
    recomputed in float64 from the networks' outputs, with weights that differ from each other."""
    torch.manual_seed(0)
    config = tiny_config(dino_weight=0.7, ibot_weight=1.3, koleo_weight=0.1)
    config.vit.drop_path_rate = 0.0
    model = SelfDistillation(config).train()
    model.set_gram_teacher(copy.deepcopy(model.teacher.backbone), GramConfig(weight=0.5))
    with torch.no_grad():
        for p in model.student.parameters():  # a student that is not its teacher
            p.add_(0.02 * torch.randn_like(p))
    batch, temp, teacher_temp = known_batch(), config.student_temp, 0.05
    total, metrics = model(batch, teacher_temp=teacher_temp)

    with torch.no_grad():
        teacher = model.teacher.backbone(batch.global_crops)
        teacher_cls = reference_sinkhorn(model.teacher.dino_head(teacher.cls), teacher_temp)  # [6, K]
        teacher_patch = reference_sinkhorn(model.teacher.ibot_head(teacher.patches[batch.masks]), teacher_temp)
        student = model.student.backbone(batch.global_crops, masks=batch.masks)
        local = model.student.backbone(batch.local_crops)
        student_cls = model.student.dino_head(torch.cat([student.cls, local.cls]))  # [12, K]: 2 global, 2 local views
        student_patch = model.student.ibot_head(student.patches[batch.masks])
        gram_teacher = model.gram_teacher(batch.global_crops).patches
    views = 3  # slices per view
    dino_pairs = [cross_entropy64(teacher_cls[t * views:(t + 1) * views], student_cls[s * views:(s + 1) * views], temp)
                  for t in range(2) for s in range(4) if s != t]
    dino = sum(dino_pairs) / len(dino_pairs)
    token_ce = cross_entropy_rows(teacher_patch, student_patch, temp)
    image_of_token = batch.masks.nonzero()[:, 0]
    ibot = sum(float(token_ce[image_of_token == image].mean()) for image in image_of_token.unique()) / 6
    koleo = koleo64(student.cls[:views]) + koleo64(student.cls[views:])
    gram = gram64(student.patches, gram_teacher)
    expected = 0.7 * dino + 1.3 * ibot + 0.1 * koleo + 0.5 * gram
    assert total.item() == pytest.approx(expected, rel=1e-5)
    for name, value in (("dino", dino), ("ibot", ibot), ("koleo", koleo), ("gram", gram)):
        assert metrics[f"loss_{name}"].item() == pytest.approx(value, rel=1e-5), name
    assert {"teacher_entropy", "teacher_kl_to_uniform", "student_feature_std", "prototype_usage"} < set(metrics)


def test_only_the_student_receives_gradients(model, make_batch):
    loss, _ = model(make_batch(), teacher_temp=0.04)
    loss.backward()
    assert all(p.grad is not None for n, p in model.student.named_parameters() if "mask_token" not in n)
    assert model.student.backbone.mask_token.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())


def test_teacher_sees_only_unmasked_global_crops(model, make_batch):
    seen = []
    model.teacher.backbone.register_forward_hook(lambda m, args, kwargs, out: seen.append((args, kwargs)), with_kwargs=True)
    batch = make_batch(n_global=2, n_local=3)
    model(batch, teacher_temp=0.04)
    (args, kwargs), = seen
    assert args[0] is batch.global_crops
    assert kwargs.get("masks") is None


def test_teacher_stays_in_eval_mode_and_follows_the_student_by_ema(model, make_batch):
    assert model.student.training and not model.teacher.training
    loss, _ = model(make_batch(), teacher_temp=0.04)
    loss.backward()
    optimizer = torch.optim.SGD(model.student.parameters(), lr=1.0)
    optimizer.step()
    before = copy.deepcopy(model.teacher.state_dict())
    model.update_teacher(momentum=0.5)
    for name, value in model.teacher.state_dict().items():
        student_value = model.student.state_dict()[name]
        torch.testing.assert_close(value, 0.5 * before[name] + 0.5 * student_value)


def test_structures_of_student_and_teacher_are_identical(model):
    assert [n for n, _ in model.student.named_parameters()] == [n for n, _ in model.teacher.named_parameters()]
    assert set(dict(model.student.named_children())) == {"backbone", "dino_head", "ibot_head"}


def test_batches_without_local_crops_or_masks_work(model, make_batch):
    batch = make_batch(n_local=0)
    batch.masks[:] = False
    loss, metrics = model(batch, teacher_temp=0.07)
    assert torch.isfinite(loss) and metrics["loss_ibot"].item() == 0.0


def test_gram_teacher_is_frozen_and_sees_crops_at_its_input_scale(make_batch):
    torch.manual_seed(0)
    model = SelfDistillation(tiny_config()).train()
    model.set_gram_teacher(copy.deepcopy(model.teacher.backbone), GramConfig(weight=0.5, input_scale=2.0))
    grids = []
    model.gram_teacher.register_forward_hook(lambda m, args, out: grids.append(out.grid))
    loss, metrics = model(make_batch(global_size=32), teacher_temp=0.04)
    loss.backward()
    assert grids == [(4, 4)]
    assert metrics["loss_gram"].item() > 0.0
    assert all(p.grad is None for p in model.gram_teacher.parameters())
    assert not model.gram_teacher.training


def test_config_loads_from_yaml_with_the_project_loader(tmp_path):
    path = tmp_path / "pretrain.yaml"
    path.write_text("vit:\n  size: small\n  drop_path_rate: 0.1\ndino_head:\n  n_prototypes: 1024\n")
    config = load_config(SelfDistillationConfig, path, ["vit.depth=2"])
    assert (config.vit.embed_dim, config.vit.depth, config.vit.drop_path_rate) == (384, 2, 0.1)
    assert config.dino_head.n_prototypes == 1024 and config.ibot_head.n_prototypes == 65536
