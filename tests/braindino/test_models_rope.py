"""Axial 2D RoPE: attention depends on relative grid positions only; prefix tokens are not rotated."""

import torch

from braindino.models.rope import apply_rope, grid_coordinates, rope_angles, rope_attention

HEAD_DIM = 16


def random_qkv(n_tokens: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, n_tokens, HEAD_DIM, generator=generator) for _ in range(3)]


def test_grid_coordinates_are_row_major_and_centred():
    coords = grid_coordinates(2, 3)
    assert coords.tolist() == [[-0.5, -1.0], [-0.5, 0.0], [-0.5, 1.0], [0.5, -1.0], [0.5, 0.0], [0.5, 1.0]]


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


def test_zero_angles_reduce_to_plain_attention():
    n_prefix, coords = 2, grid_coordinates(2, 2)
    q, k, v = random_qkv(n_prefix + len(coords))
    zero_angle = (torch.ones(len(coords), HEAD_DIM), torch.zeros(len(coords), HEAD_DIM))
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(rope_attention(q, k, v, *zero_angle, n_prefix), plain, atol=1e-6)
