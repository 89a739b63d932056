"""Fixtures shared by the model-library tests."""

import pytest
import torch

from braindino.augment import MultiCropBatch


@pytest.fixture
def make_batch():
    """``make_batch(batch_size, n_global, n_local, global_size, local_size, seed)`` -> a random ``MultiCropBatch``.

    Half of the images get a random 30 % patch mask, as the iBOT recipe masks half of the images.
    """

    def build(batch_size=4, n_global=2, n_local=2, global_size=32, local_size=16, seed=0):
        generator = torch.Generator().manual_seed(seed)
        n_patches = (global_size // 16) ** 2
        masks = torch.rand(n_global * batch_size, n_patches, generator=generator) < 0.3
        masks[1::2] = False
        return MultiCropBatch(
            global_crops=torch.randn(n_global * batch_size, 1, global_size, global_size, generator=generator),
            local_crops=torch.randn(n_local * batch_size, 1, local_size, local_size, generator=generator),
            masks=masks,
            n_global=n_global,
            n_local=n_local,
        )

    return build


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: tensors this small go faster without thread contention on shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
