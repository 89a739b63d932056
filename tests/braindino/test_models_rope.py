"""Axial 2D RoPE: relative positions only, prefix tokens never rotated, one coordinate range at every size."""

import math

import pytest
import torch

import braindino.models.rope as rope
from braindino.models import RopeConfig, ViTConfig, VisionTransformer
from braindino.models.rope import RotaryEmbedding, apply_rope, grid_coordinates, rope_angles, rope_attention

HEAD_DIM = 16


def random_qkv(n_tokens: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, n_tokens, HEAD_DIM, generator=generator) for _ in range(3)]


def test_patch_index_layout_is_row_major_centred_indices():
    coords = grid_coordinates(2, 3, layout="patch_index")
    assert coords.tolist() == [[-0.5, -1.0], [-0.5, 0.0], [-0.5, 1.0], [0.5, -1.0], [0.5, 0.0], [0.5, 1.0]]


@pytest.mark.parametrize("pixels", [224, 512])
def test_normalized_patch_cells_tile_the_image_from_minus_one_to_one(pixels):
    grid = pixels // 16
    coords = grid_coordinates(grid, grid, layout="normalized")
    rows = coords[::grid, 0]
    cell = 2 / grid
    # patch centres sit half a cell inside the edges, one cell apart: the cells cover [-1, 1] exactly
    torch.testing.assert_close(rows, -1 + cell / 2 + cell * torch.arange(grid, dtype=torch.float32))
    assert torch.equal(coords[:grid, 1], rows)


def test_coordinates_at_224_and_512_px_span_the_same_range():
    for pixels in (224, 512):
        grid = pixels // 16
        coords = grid_coordinates(grid, grid)
        half_cell = 1 / grid
        assert coords.min().item() - half_cell == pytest.approx(-1.0) and coords.max().item() + half_cell == pytest.approx(1.0)
    centred_indices = [grid_coordinates(n, n, "patch_index").abs().max().item() for n in (14, 32)]
    assert centred_indices == [6.5, 15.5]  # the patch-index layout reaches twice as far at 512 px


def test_non_square_grids_keep_the_aspect_ratio():
    coords = grid_coordinates(2, 4)
    spacing_rows = coords[4, 0] - coords[0, 0]
    spacing_cols = coords[1, 1] - coords[0, 1]
    assert spacing_rows == spacing_cols == 0.5 and coords[:, 1].abs().max() == 0.75


def test_cls_and_register_tokens_are_never_rotated(monkeypatch):
    """Spy on every rotation inside a ViT forward: the prefix comes out bit-identical, the patches do not."""
    calls = []
    original = rope.rotate_patches

    def spy(x, cos, sin, n_prefix):
        out = original(x, cos, sin, n_prefix)
        calls.append((x, out, n_prefix))
        return out

    monkeypatch.setattr(rope, "rotate_patches", spy)
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(size="micro", num_registers=3, rope=RopeConfig(shift=0.5, rescale=2.0))).train()
    model(torch.randn(2, 1, 48, 48))
    assert len(calls) == 2 * model.config.depth  # queries and keys of every block
    for x, out, n_prefix in calls:
        assert n_prefix == 4
        assert torch.equal(out[:, :, :n_prefix], x[:, :, :n_prefix])
        assert not torch.allclose(out[:, :, n_prefix:], x[:, :, n_prefix:])


def test_shifting_the_whole_grid_leaves_patch_attention_unchanged():
    n_prefix, coords = 0, grid_coordinates(3, 4)
    q, k, v = random_qkv(n_prefix + len(coords))
    out = rope_attention(q, k, v, *rope_angles(coords, HEAD_DIM, 100.0), n_prefix)
    shifted = coords + torch.tensor([7.0, -3.0])
    out_shifted = rope_attention(q, k, v, *rope_angles(shifted, HEAD_DIM, 100.0), n_prefix)
    assert torch.allclose(out, out_shifted, atol=1e-5)


def test_position_matters_when_relative_offsets_change():
    n_prefix, coords = 1, grid_coordinates(3, 4)
    q, k, v = random_qkv(n_prefix + len(coords))
    out = rope_attention(q, k, v, *rope_angles(coords, HEAD_DIM, 100.0), n_prefix)
    stretched = rope_attention(q, k, v, *rope_angles(coords * 2, HEAD_DIM, 100.0), n_prefix)
    assert not torch.allclose(out[:, :, n_prefix:], stretched[:, :, n_prefix:], atol=1e-4)


def test_rotation_preserves_norms_and_rows_and_columns_use_separate_channels():
    x = torch.randn(5, HEAD_DIM)
    cos, sin = rope_angles(grid_coordinates(1, 5), HEAD_DIM, 100.0)
    assert torch.allclose(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    # a single row: row angles are constant, so channels carrying row frequencies rotate identically
    row_channels = list(range(HEAD_DIM // 4)) + list(range(HEAD_DIM // 2, 3 * HEAD_DIM // 4))
    assert torch.allclose(cos[:, row_channels], cos[:1, row_channels].expand(5, -1))


def test_normalized_angles_turn_the_fastest_channels_a_full_period_per_unit():
    cos, sin = rope_angles(torch.tensor([[0.25, 0.5]]), HEAD_DIM, 100.0, angle_scale=2 * math.pi)
    row, col = 0, HEAD_DIM // 4  # the fastest row and column channels
    assert (cos[0, row].item(), sin[0, row].item()) == pytest.approx((0.0, 1.0), abs=1e-6)  # a quarter turn
    assert (cos[0, col].item(), sin[0, col].item()) == pytest.approx((-1.0, 0.0), abs=1e-6)  # half a turn


def test_zero_angles_reduce_to_plain_attention():
    n_prefix, coords = 2, grid_coordinates(2, 2)
    q, k, v = random_qkv(n_prefix + len(coords))
    zero_angle = (torch.ones(len(coords), HEAD_DIM), torch.zeros(len(coords), HEAD_DIM))
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(rope_attention(q, k, v, *zero_angle, n_prefix), plain, atol=1e-6)


def test_coordinate_augmentation_runs_in_training_and_never_in_eval():
    embedding = RotaryEmbedding(RopeConfig(shift=0.2, jitter=1.2, rescale=2.0), HEAD_DIM)
    torch.manual_seed(0)
    embedding.train()
    first, second = embedding((4, 4), torch.device("cpu"))[1], embedding((4, 4), torch.device("cpu"))[1]
    assert not torch.allclose(first, second)
    embedding.eval()
    clean = rope_angles(grid_coordinates(4, 4), HEAD_DIM, 100.0, angle_scale=2 * math.pi)[1]
    assert torch.equal(embedding((4, 4), torch.device("cpu"))[1], clean)


def test_augmented_coordinates_stay_within_the_configured_ranges():
    coords = grid_coordinates(8, 8)
    torch.manual_seed(1)
    for _ in range(200):
        scaled = rope.augment_coordinates(coords, shift=0.0, jitter=1.0, rescale=2.0)
        factor = scaled[-1, 0] / coords[-1, 0]
        assert 0.5 - 1e-6 <= factor <= 2.0 + 1e-6
        torch.testing.assert_close(scaled, coords * factor)  # one factor for both axes
        shifted = rope.augment_coordinates(coords, shift=0.3, jitter=1.0, rescale=1.0) - coords
        assert shifted.abs().max() <= 0.3 + 1e-6
        torch.testing.assert_close(shifted, shifted[:1].expand_as(shifted))  # one offset per axis


def test_invalid_augmentation_settings_are_refused():
    with pytest.raises(ValueError, match="rescale >= 1"):
        RopeConfig(rescale=0.5)
