"""Block masks for iBOT: how many images are masked, how much of each, and in what shape."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from braindino.ssl.masking import BlockMaskGenerator

GRID = (14, 14)
TOKENS = GRID[0] * GRID[1]


def test_masks_are_bool_rows_over_the_patch_grid():
    masks = BlockMaskGenerator(GRID, seed=0)(8)
    assert masks.dtype == torch.bool
    assert masks.shape == (8, TOKENS)


def test_exactly_the_masked_fraction_of_images_is_masked_and_the_rest_untouched():
    generator = BlockMaskGenerator(GRID, masked_fraction=0.5, seed=1)
    for batch_size in (2, 10, 64):
        masked_per_image = generator(batch_size).sum(dim=1)
        assert int((masked_per_image > 0).sum()) == round(0.5 * batch_size)
    assert not BlockMaskGenerator(GRID, masked_fraction=0.0, seed=1)(16).any()
    assert (BlockMaskGenerator(GRID, masked_fraction=1.0, seed=1)(16).sum(dim=1) > 0).all()


def test_mask_ratios_lie_in_range_and_spread_uniformly_across_it():
    ratios = BlockMaskGenerator(GRID, min_ratio=0.1, max_ratio=0.5, masked_fraction=1.0, seed=2)(2000)
    ratios = ratios.sum(dim=1).double() / TOKENS
    assert ratios.min() >= 0.1 - 0.5 / TOKENS and ratios.max() <= 0.5 + 0.5 / TOKENS
    assert abs(ratios.mean().item() - 0.3) < 0.01
    # uniform on [0.1, 0.5]: each fifth of the range holds about a fifth of the images
    counts, _ = np.histogram(ratios.numpy(), bins=5, range=(0.1 - 0.5 / TOKENS, 0.5 + 0.5 / TOKENS))
    assert np.all(np.abs(counts / 2000 - 0.2) < 0.04)


def test_masks_are_made_of_blocks_not_scattered_patches():
    masks = BlockMaskGenerator(GRID, min_ratio=0.3, max_ratio=0.3, masked_fraction=1.0, seed=3)(200)
    pieces = [ndimage.label(mask.reshape(GRID).numpy())[1] for mask in masks]
    # 59 scattered patches would form dozens of pieces; blocks of >= 4 patches form a few
    assert np.mean(pieces) < 6


def test_same_seed_same_masks():
    assert torch.equal(BlockMaskGenerator(GRID, seed=4)(32), BlockMaskGenerator(GRID, seed=4)(32))
    assert not torch.equal(BlockMaskGenerator(GRID, seed=4)(32), BlockMaskGenerator(GRID, seed=5)(32))


@pytest.mark.parametrize("arguments", [dict(min_ratio=0.6, max_ratio=0.5), dict(masked_fraction=1.5),
                                       dict(min_block=0), dict(aspect=(2.0, 1.0))])
def test_invalid_settings_are_refused(arguments):
    with pytest.raises(ValueError, match="BlockMaskGenerator"):
        BlockMaskGenerator(GRID, **arguments)
