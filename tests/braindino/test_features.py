"""Frozen encoder: exact save/load round trip, strict key checking, slice and volume embeddings, and
older exports that keep running with the RoPE layout they were trained with."""

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from braindino.features import AttentionPooling, CheckpointError, Encoder
from braindino.models import RopeConfig, ViTConfig, VisionTransformer


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
    assert sidecar["format_version"] == 2 and sidecar["vit"]["num_registers"] == 2
    assert sidecar["vit"]["rope"] == {"base": 100.0, "coordinates": "normalized", "shift": 0.0, "jitter": 1.0,
                                      "rescale": 1.0}
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


def reference_cls(state: dict[str, torch.Tensor], config: ViTConfig, x: torch.Tensor, layout: str) -> torch.Tensor:
    """The ViT's CLS output written out in float64, with RoPE on ``patch_index`` or ``normalized`` coordinates."""
    sd = {key: value.double() for key, value in state.items()}
    heads, dim, patch = config.num_heads, config.embed_dim, config.patch_size
    head_dim = dim // heads
    grid = F.conv2d(x.double(), sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    batch, _, rows, cols = grid.shape
    tokens = torch.cat([sd["cls_token"].expand(batch, -1, -1), sd["register_tokens"].expand(batch, -1, -1),
                        grid.flatten(2).transpose(1, 2)], dim=1)
    prefix = 1 + config.num_registers
    r, c = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64), indexing="ij")
    if layout == "patch_index":
        r, c, scale = r - (rows - 1) / 2, c - (cols - 1) / 2, 1.0
    else:
        r, c, scale = (2 * r + 1 - rows) / max(rows, cols), (2 * c + 1 - cols) / max(rows, cols), 2 * math.pi
    inv_freq = scale * config.rope.base ** (-torch.arange(head_dim // 4, dtype=torch.float64) / (head_dim // 4))
    angles = torch.cat([r.reshape(-1, 1) * inv_freq, c.reshape(-1, 1) * inv_freq], dim=-1).repeat(1, 2)

    def rotate(t):
        patches = t[:, :, prefix:]
        half = head_dim // 2
        turned = torch.cat([-patches[..., half:], patches[..., :half]], dim=-1)
        return torch.cat([t[:, :, :prefix], patches * angles.cos() + turned * angles.sin()], dim=2)

    def norm(t, name):
        return F.layer_norm(t, (dim,), sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-6)

    for block in range(config.depth):
        name = f"blocks.{block}"
        qkv = norm(tokens, f"{name}.norm1") @ sd[f"{name}.attn.qkv.weight"].T
        q, k, v = qkv.reshape(batch, -1, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(rotate(q) @ rotate(k).transpose(-1, -2) / math.sqrt(head_dim), dim=-1)
        attended = (weights @ v).transpose(1, 2).reshape(batch, -1, dim)
        attended = attended @ sd[f"{name}.attn.proj.weight"].T + sd[f"{name}.attn.proj.bias"]
        tokens = tokens + sd[f"{name}.ls1.gamma"] * attended
        hidden = F.gelu(norm(tokens, f"{name}.norm2") @ sd[f"{name}.mlp.fc1.weight"].T + sd[f"{name}.mlp.fc1.bias"])
        tokens = tokens + sd[f"{name}.ls2.gamma"] * (hidden @ sd[f"{name}.mlp.fc2.weight"].T + sd[f"{name}.mlp.fc2.bias"])
    return norm(tokens[:, 0], "norm")


def test_an_export_in_format_1_loads_and_runs_on_centred_patch_indices_as_it_was_trained(tmp_path, slices):
    """Format 1 wrote ``vit.rope_base`` and no layout; its encoders were trained on centred patch indices."""
    torch.manual_seed(3)
    config = ViTConfig(size="micro", num_registers=2, layerscale_init=0.5)  # blocks that matter
    state = {k: v.contiguous() for k, v in VisionTransformer(config).state_dict().items()}
    path = tmp_path / "old.safetensors"
    save_file(state, path, metadata={"format_version": "1"})
    old_vit = {k: v for k, v in dataclasses.asdict(config).items() if k != "rope"} | {"rope_base": 100.0}
    path.with_suffix(".json").write_text(json.dumps({"format_version": 1, "vit": old_vit}))

    encoder = Encoder.from_checkpoint(path)
    assert encoder.config.rope == RopeConfig(coordinates="patch_index")
    as_trained = reference_cls(state, config, slices, "patch_index")
    torch.testing.assert_close(encoder.encode_slices(slices).double(), as_trained, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(reference_cls(state, config, slices, "normalized"), as_trained, atol=1e-3)
    encoder.save(tmp_path / "resaved.safetensors")  # re-exported in format 2, the layout written down
    again = Encoder.from_checkpoint(tmp_path / "resaved.safetensors")
    assert again.config.rope.coordinates == "patch_index"
    assert torch.equal(again.encode_slices(slices), encoder.encode_slices(slices))


def test_a_current_export_runs_on_normalized_coordinates(tmp_path, slices):
    torch.manual_seed(4)
    config = ViTConfig(size="micro", layerscale_init=0.5)
    encoder = Encoder(VisionTransformer(config))
    encoder.save(tmp_path / "new.safetensors")
    loaded = Encoder.from_checkpoint(tmp_path / "new.safetensors")
    expected = reference_cls(encoder.backbone.state_dict(), config, slices, "normalized")
    torch.testing.assert_close(loaded.encode_slices(slices).double(), expected, rtol=1e-4, atol=1e-5)


def test_an_unknown_format_is_refused(encoder, tmp_path):
    path = tmp_path / "encoder.safetensors"
    encoder.save(path)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({**sidecar, "format_version": 9}))
    with pytest.raises(CheckpointError, match="format_version 9"):
        Encoder.from_checkpoint(path)
