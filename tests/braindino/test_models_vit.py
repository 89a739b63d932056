"""The ViT backbone: sizes, shapes, masking, intermediate blocks and RGB kernel folding."""

import pytest
import torch

from braindino.models import BackboneOutput, ViTConfig, VisionTransformer, fold_rgb_patch_embedding
from braindino.models.vit import load_natural_image_weights


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def micro(**overrides) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(ViTConfig(size="micro", **overrides))


def parameters_by_formula(dim: int, depth: int, registers: int, patch: int = 16, mlp_ratio: float = 4.0) -> int:
    """Parameter count of a pre-norm ViT without qkv bias or position table, with LayerScale, written out."""
    hidden = int(dim * mlp_ratio)
    patch_embed = dim * patch * patch + dim
    tokens = (1 + registers + 1) * dim  # CLS, registers, mask token
    block = (2 * dim  # norm1
             + 3 * dim * dim  # qkv, no bias
             + dim * dim + dim  # proj
             + 2 * dim  # norm2
             + dim * hidden + hidden + hidden * dim + dim  # MLP
             + 2 * dim)  # two LayerScales
    return patch_embed + tokens + depth * block + 2 * dim  # final norm


@pytest.mark.parametrize("size", ["micro", "tiny", "small", "base", "large"])
def test_every_size_has_the_parameters_and_outputs_of_its_architecture(size):
    with torch.device("meta"):
        model = VisionTransformer(ViTConfig(size=size))
        out = model(torch.empty(2, 1, 32, 48))
    dim, depth = model.embed_dim, model.config.depth
    assert n_params(model) == parameters_by_formula(dim, depth, registers=4)
    assert dim % model.config.num_heads == 0 and (dim // model.config.num_heads) % 4 == 0  # RoPE splits heads in four
    assert out.cls.shape == (2, dim)
    assert out.registers.shape == (2, 4, dim)
    assert out.patches.shape == (2, 6, dim)


def test_base_is_the_papers_vit_b_with_about_86m_parameters():
    with torch.device("meta"):
        model = VisionTransformer(ViTConfig(size="base"))
    assert (model.embed_dim, model.config.depth, model.config.num_heads, model.config.patch_size) == (768, 12, 12, 16)
    assert abs(n_params(model) - 86e6) < 3e6


def test_explicit_fields_override_the_preset():
    config = ViTConfig(size="small", depth=2)
    assert (config.embed_dim, config.depth, config.num_heads) == (384, 2, 6)
    with pytest.raises(ValueError, match="unknown ViT size"):
        ViTConfig(size="huge")


def test_every_block_starts_near_the_identity_and_qkv_has_no_bias():
    """LayerScale at 1e-5 keeps each residual branch tiny at initialisation; a zero input gives zero q, k, v."""
    model = micro().eval()
    tokens = torch.randn(2, 5 + 9, 64)
    cos, sin = model.rope((3, 3), torch.device("cpu"))
    for block in model.blocks:
        change = (block(tokens, cos, sin, model.n_prefix) - tokens).norm() / tokens.norm()
        assert 0 < change < 1e-4
        assert torch.equal(block.attn.qkv(torch.zeros(1, 64)), torch.zeros(1, 192))


@pytest.mark.parametrize("size", [(48, 80), (16, 16), (64, 32)])
def test_any_multiple_of_16_is_a_valid_input(size):
    model = micro()
    out = model(torch.randn(3, 1, *size))
    grid = (size[0] // 16, size[1] // 16)
    assert isinstance(out, BackboneOutput)
    assert out.grid == grid
    assert out.patches.shape == (3, grid[0] * grid[1], 64)
    assert out.cls.dtype == out.patches.dtype == torch.float32


def test_size_not_a_multiple_of_the_patch_is_refused():
    with pytest.raises(ValueError, match="multiple of the patch size"):
        micro()(torch.randn(1, 1, 40, 48))


def test_masked_patches_change_the_output_and_unmasked_batches_do_not():
    model = micro().eval()
    with torch.no_grad():
        model.mask_token.normal_()
    x = torch.randn(2, 1, 48, 48)
    masks = torch.zeros(2, 9, dtype=torch.bool)
    masks[0, :4] = True
    plain = model(x)
    masked = model(x, masks=masks)
    assert torch.allclose(model(x, masks=torch.zeros_like(masks)).cls, plain.cls)
    assert not torch.allclose(masked.cls[0], plain.cls[0])
    assert torch.allclose(masked.cls[1], plain.cls[1], atol=1e-6)


def test_masked_patch_content_is_invisible():
    model = micro().eval()
    x = torch.randn(1, 1, 32, 32)
    y = x.clone()
    y[..., :16, :16] = torch.randn(16, 16)  # patch 0 differs
    masks = torch.tensor([[True, False, False, False]])
    assert torch.allclose(model(x, masks=masks).cls, model(y, masks=masks).cls)


def test_return_blocks_gives_raw_patch_tokens_of_the_requested_blocks():
    model = micro()
    out = model(torch.randn(2, 1, 32, 32), return_blocks=(0, 1))
    assert sorted(out.blocks) == [0, 1]
    assert out.blocks[1].shape == (2, 4, 64)
    assert not torch.allclose(out.blocks[1], out.patches)


@pytest.mark.parametrize("registers", [0, 4])
def test_outputs_are_tensors_of_their_own_normed_per_token(registers):
    """No output is a view (FSDP2 hooks a root's backward on its outputs; an in-place op on a view drops it),
    and norming the token groups apart equals one final norm over all tokens."""
    model = micro(num_registers=registers).eval()
    last = model.config.depth - 1
    out = model(torch.randn(2, 1, 32, 32), return_blocks=(last,))
    assert all(t._base is None for t in (out.cls, out.registers, out.patches, out.blocks[last]))
    assert out.registers.shape == (2, registers, 64)
    assert torch.equal(model.norm(out.blocks[last]), out.patches)  # the last block's raw patches, normed alone


def test_drop_path_is_stochastic_in_training_and_off_in_eval():
    model = micro(drop_path_rate=0.9)
    x = torch.randn(4, 1, 32, 32)
    model.train()
    assert not torch.allclose(model(x).cls, model(x).cls)
    model.eval()
    assert torch.allclose(model(x).cls, model(x).cls)


def test_rgb_kernel_folds_to_one_channel_equivalent_on_grey_input():
    rgb = torch.randn(8, 3, 16, 16)
    grey = torch.randn(1, 1, 32, 32)
    folded = fold_rgb_patch_embedding(rgb)
    expected = torch.nn.functional.conv2d(grey.repeat(1, 3, 1, 1), rgb, stride=16)
    assert folded.shape == (8, 1, 16, 16)
    assert torch.allclose(torch.nn.functional.conv2d(grey, folded, stride=16), expected, atol=1e-5)


def test_natural_image_weights_load_with_a_folded_patch_kernel():
    source = VisionTransformer(ViTConfig(size="micro", in_channels=3))
    target = micro()
    load_natural_image_weights(target, source.state_dict())
    assert torch.equal(target.patch_embed.proj.weight, source.patch_embed.proj.weight.sum(1, keepdim=True))
    assert torch.equal(target.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)
