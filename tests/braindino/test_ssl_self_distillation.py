"""SelfDistillation: student/teacher composition and the combined loss on one multi-crop batch."""

import copy

import pytest
import torch

from braindino.config import load_config
from braindino.models import HeadConfig, ViTConfig
from braindino.ssl import GramConfig, SelfDistillation, SelfDistillationConfig


def tiny_config(**overrides) -> SelfDistillationConfig:
    head = HeadConfig(n_prototypes=32, hidden_dim=32, bottleneck_dim=16)
    return SelfDistillationConfig(vit=ViTConfig(size="micro", drop_path_rate=0.1), dino_head=head, ibot_head=head, **overrides)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return SelfDistillation(tiny_config()).train()


def test_forward_returns_a_finite_loss_and_the_health_metrics(model, make_batch):
    loss, metrics = model(make_batch(), teacher_temp=0.04)
    assert loss.ndim == 0 and torch.isfinite(loss)
    expected = {"loss_dino", "loss_ibot", "loss_koleo", "loss_total", "teacher_entropy",
                "teacher_kl_to_uniform", "student_feature_std", "prototype_usage"}
    assert set(metrics) == expected
    total = metrics["loss_dino"] + metrics["loss_ibot"] + 0.1 * metrics["loss_koleo"]
    assert metrics["loss_total"].item() == pytest.approx(total.item(), rel=1e-5)


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


def test_gram_anchoring_adds_a_term_with_a_frozen_teacher_on_larger_inputs(make_batch):
    torch.manual_seed(0)
    model = SelfDistillation(tiny_config()).train()
    model.set_gram_teacher(copy.deepcopy(model.teacher.backbone), GramConfig(weight=0.5, input_scale=2.0))
    grids = []
    model.gram_teacher.register_forward_hook(lambda m, args, out: grids.append(out.grid))
    loss, metrics = model(make_batch(global_size=32), teacher_temp=0.04)
    loss.backward()
    assert grids == [(4, 4)]
    assert metrics["loss_gram"].item() > 0.0
    others = metrics["loss_dino"] + metrics["loss_ibot"] + model.config.koleo_weight * metrics["loss_koleo"]
    assert torch.allclose(metrics["loss_total"], others + 0.5 * metrics["loss_gram"])
    assert all(p.grad is None for p in model.gram_teacher.parameters())
    assert not model.gram_teacher.training


def test_config_loads_from_yaml_with_the_project_loader(tmp_path):
    path = tmp_path / "pretrain.yaml"
    path.write_text("vit:\n  size: small\n  drop_path_rate: 0.1\ndino_head:\n  n_prototypes: 1024\n")
    config = load_config(SelfDistillationConfig, path, ["vit.depth=2"])
    assert (config.vit.embed_dim, config.vit.depth, config.vit.drop_path_rate) == (384, 2, 0.1)
    assert config.dino_head.n_prototypes == 1024 and config.ibot_head.n_prototypes == 65536
