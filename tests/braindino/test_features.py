"""Frozen encoder: exact save/load round trip, strict key checking, slice and volume embeddings."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from braindino.features import AttentionPooling, CheckpointError, Encoder
from braindino.models import ViTConfig, VisionTransformer


@pytest.fixture
def encoder():
    torch.manual_seed(0)
    return Encoder(VisionTransformer(ViTConfig(size="micro", num_registers=2)))


@pytest.fixture
def slices():
    return torch.randn(5, 1, 32, 48, generator=torch.Generator().manual_seed(1))


def test_encoder_is_frozen_and_stays_in_eval(encoder):
    encoder.train()
    assert not encoder.training and not encoder.backbone.training
    assert not any(p.requires_grad for p in encoder.parameters())


def test_save_and_load_round_trip_features_exactly(encoder, slices, tmp_path):
    path = tmp_path / "encoder.safetensors"
    encoder.save(path)
    sidecar = json.loads((tmp_path / "encoder.json").read_text())
    assert sidecar["format_version"] == 1 and sidecar["vit"]["num_registers"] == 2
    loaded = Encoder.from_checkpoint(path)
    assert loaded.config == encoder.config
    assert torch.equal(loaded.encode_slices(slices), encoder.encode_slices(slices))


def test_missing_and_unexpected_keys_are_named(encoder, tmp_path):
    path = tmp_path / "encoder.safetensors"
    encoder.save(path)
    state = load_file(path)
    del state["blocks.1.mlp.fc2.bias"]
    state["blocks.9.extra"] = torch.zeros(1)
    save_file(state, path)
    with pytest.raises(CheckpointError, match=r"missing keys \['blocks.1.mlp.fc2.bias'\].*unexpected keys \['blocks.9.extra'\]"):
        Encoder.from_checkpoint(path)


def test_a_config_that_does_not_match_the_weights_is_refused(encoder, tmp_path):
    path = tmp_path / "encoder.safetensors"
    encoder.save(path)
    with pytest.raises(CheckpointError, match="wrong shapes.*register_tokens"):
        Encoder.from_checkpoint(path, config=ViTConfig(size="micro", num_registers=4))


def test_a_missing_sidecar_says_what_to_do(encoder, tmp_path):
    path = tmp_path / "encoder.safetensors"
    encoder.save(path)
    (tmp_path / "encoder.json").unlink()
    with pytest.raises(CheckpointError, match="pass config="):
        Encoder.from_checkpoint(path)
    assert Encoder.from_checkpoint(path, config=encoder.config).embed_dim == 64


def test_slice_embeddings_are_cls_optionally_with_the_mean_patch_token(encoder, slices):
    cls = encoder.encode_slices(slices)
    both = encoder.encode_slices(slices, with_patch_mean=True, batch_size=2)
    out = encoder.backbone(slices)
    assert cls.shape == (5, 64) and both.shape == (5, 128)
    torch.testing.assert_close(both[:, :64], out.cls)
    torch.testing.assert_close(both[:, 64:], out.patches.mean(1))


def test_volume_embedding_is_the_mean_of_slice_embeddings(encoder, slices):
    volume = encoder.encode_volume(slices, batch_size=2)
    torch.testing.assert_close(volume, encoder.encode_slices(slices).mean(0))
    assert encoder.encode_volume(slices, with_patch_mean=True).shape == (128,)


def test_attention_pooling_starts_as_the_mean_and_trains_without_touching_the_encoder(encoder, slices):
    pooling = AttentionPooling(64)
    pooled = encoder.encode_volume(slices, pooling=pooling)
    torch.testing.assert_close(pooled, encoder.encode_volume(slices))
    pooled.sum().backward()
    assert pooling.norm.weight.grad is not None
    assert all(p.grad is None for p in encoder.parameters())
