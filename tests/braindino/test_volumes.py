"""The canonical volume and the shared preprocessing, specified on real ICBM152 2009c volumes."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from braindino.volumes import intensity
from braindino.volumes import (
    CanonicalVolume,
    PreprocessSpec,
    axial_slices,
    canonicalise,
    evenly_spaced,
    non_empty_range,
    normalise_intensity,
    percentiles,
    preprocess,
    resample,
)
from infra.local.catalogue import entry


def load(name: str, stride: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A real catalogue volume, subsampled by ``stride`` (affine adjusted) to keep tests fast."""
    item = entry(name)
    if not item.available:
        pytest.skip(f"{name} not available: {item.install_hint}")
    img = nib.load(str(item.path))
    data = np.asarray(img.dataobj, dtype=np.float32)[::stride, ::stride, ::stride]
    affine = img.affine @ np.diag([stride, stride, stride, 1.0])
    return data, affine


@pytest.fixture(scope="module")
def t1() -> tuple[np.ndarray, np.ndarray]:
    return load("icbm2009c_t1")


@pytest.fixture(scope="module")
def t1_brain() -> tuple[np.ndarray, np.ndarray]:
    return load("icbm2009c_t1bet")


def stored_as_psl(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same scan stored with axes (S, flipped R, A) -> i.e. permuted and flipped, data and affine together.

    New voxel (a, b, c) holds old voxel (nx - 1 - b, c, a).
    """
    nx = data.shape[0]
    index_map = np.array([[0, -1, 0, nx - 1], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
    return np.ascontiguousarray(data[::-1].transpose(2, 0, 1)), affine @ index_map


def test_a_permuted_and_flipped_copy_gives_identical_canonical_data_and_axial_slices(t1):
    data, affine = t1
    stored, stored_affine = stored_as_psl(data, affine)
    assert nib.aff2axcodes(stored_affine) == ("S", "L", "A")
    reference = canonicalise(data, affine)
    permuted = canonicalise(stored, stored_affine)
    assert permuted.provenance["source_orientation"] == "SLA" and permuted.provenance["reoriented"]
    np.testing.assert_array_equal(permuted.data, reference.data)
    np.testing.assert_allclose(permuted.affine, reference.affine, atol=1e-9)
    spec = PreprocessSpec(spacing=(2.0, 2.0, 2.0), slice_size=128)
    _, slices_reference = preprocess(data, affine, spec)
    _, slices_permuted = preprocess(stored, stored_affine, spec)
    assert [z for z, _, _ in slices_permuted] == [z for z, _, _ in slices_reference]
    for (_, a, fa), (_, b, fb) in zip(slices_reference, slices_permuted):
        np.testing.assert_array_equal(a, b)
        assert fa == fb


def test_canonical_axes_run_right_anterior_superior(t1):
    data, affine = t1
    vol = canonicalise(*stored_as_psl(data, affine))
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    assert np.all(np.diag(vol.affine)[:3] > 0)
    assert vol.spacing == pytest.approx((2.0, 2.0, 2.0))
    assert vol.data.dtype == np.float32 and vol.data.flags["F_CONTIGUOUS"]  # each axial slice is one block


def test_a_ras_nifti_array_becomes_canonical_without_a_copy(t1):
    data = np.asfortranarray(t1[0])  # nibabel's layout for a NIfTI on disk
    assert np.shares_memory(canonicalise(data, t1[1]).data, data)


def test_canonical_volume_refuses_anything_but_float32_3d_ras():
    with pytest.raises(ValueError, match="3D"):
        CanonicalVolume(np.zeros((4, 4), np.float32), np.eye(4), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="float32"):
        CanonicalVolume(np.zeros((4, 4, 4)), np.eye(4), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="Fortran"):
        CanonicalVolume(np.zeros((4, 4, 4), np.float32), np.eye(4), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="RAS"):
        CanonicalVolume(np.zeros((4, 4, 4), np.float32, order="F"), np.eye(4), (1.0, 1.0, 1.0), orientation="LPS")


def test_resampling_hits_the_target_spacing_and_keeps_world_positions(t1):
    data, affine = t1
    thick = canonicalise(data[:, :, ::2], affine @ np.diag([1.0, 1.0, 2.0, 1.0]))  # 2 x 2 x 4 mm
    fine = resample(thick, (2.0, 2.0, 2.0))
    assert fine.spacing == pytest.approx((2.0, 2.0, 2.0))
    assert fine.provenance["resampled"] and fine.provenance["spacing_before"] == pytest.approx([2.0, 2.0, 4.0])
    centre_before = thick.affine @ np.r_[(np.array(thick.shape) - 1) / 2, 1]
    centre_after = fine.affine @ np.r_[(np.array(fine.shape) - 1) / 2, 1]
    np.testing.assert_allclose(centre_after, centre_before, atol=1e-6)
    # the 4 mm stack, interpolated back to 2 mm, tracks the real 2 mm volume closely
    reference = canonicalise(data, affine).data
    depth = min(reference.shape[2], fine.shape[2])
    r = np.corrcoef(reference[:, :, :depth].ravel(), fine.data[:, :, :depth].ravel())[0, 1]
    assert r > 0.97


def test_separable_resampling_equals_scipy_trilinear_on_the_same_grid(t1):
    vol = canonicalise(*t1)
    out = resample(vol, (1.5, 2.0, 3.0))
    index_map = np.linalg.inv(vol.affine) @ out.affine  # output index -> input index
    reference = ndimage.affine_transform(
        vol.data, np.diag(index_map)[:3], offset=index_map[:3, 3], output_shape=out.shape, order=1, mode="nearest"
    )
    np.testing.assert_allclose(out.data, reference, rtol=1e-5, atol=1e-3)
    assert out.spacing == pytest.approx((1.5, 2.0, 3.0))


def test_resampling_is_skipped_at_the_target_spacing(t1):
    vol = canonicalise(*t1)
    same = resample(vol, 2.0)
    assert same.data is vol.data or np.shares_memory(same.data, vol.data)
    assert same.provenance["resampled"] is False


def test_partition_percentiles_equal_numpy_percentiles(t1):
    values = t1[0][t1[0] != 0]
    np.testing.assert_allclose(percentiles(values, (0.5, 99.5)), np.percentile(values, (0.5, 99.5)), rtol=1e-6)


@pytest.mark.parametrize("name", ["icbm2009c_t1", "icbm2009c_t1bet", "colin27_t1", "icbm2009a_t1"])
def test_tail_selected_percentiles_of_full_volumes_equal_numpy_exactly(name):
    data, _ = load(name, stride=1)  # large enough for the tail selection; uint8 sources bring many ties
    foreground = data != 0
    values = np.sort(data[foreground])
    ranks = np.array([3, 4, values.size // 100, values.size - 5])
    tails = intensity.tail_values(data.ravel("F"), foreground.ravel("F"), values.size, ranks)
    np.testing.assert_array_equal(tails, values[ranks])  # the selected ranks are exact, not estimates
    qs = (0.5, 99.5, 2.0, 98.0)  # interpolated in float64: equal to numpy's on float64 input
    np.testing.assert_allclose(percentiles(data, qs, where=foreground), np.percentile(values.astype(np.float64), qs), rtol=1e-12)
    np.testing.assert_allclose(percentiles(data, qs), np.percentile(data.astype(np.float64), qs), rtol=1e-12)


def test_percentiles_fall_back_to_a_full_selection_when_a_tail_is_short():
    values = np.ones(1_000_000, np.float32)
    values[:: 1_000_000 // intensity.SAMPLE_SIZE] = 0  # the strided sample sees only these zeros (6.7 %)
    assert intensity.tail_values(values, None, values.size, np.array([99_999, 100_000])) is None
    assert percentiles(values, (10.0,))[0] == np.percentile(values, 10.0) == 1.0


def test_normalisation_keeps_background_zero_and_standardises_the_foreground(t1_brain):
    vol = canonicalise(*t1_brain)
    background = vol.data == 0
    out = normalise_intensity(vol)
    assert np.all(out.data[background] == 0) and not np.signbit(out.data[background]).any()  # +0.0, not -0.0
    foreground = out.data[~background]
    assert abs(float(foreground.mean())) < 1e-3
    assert float(foreground.std()) == pytest.approx(1.0, abs=1e-3)
    low, high = out.provenance["intensity"]["clip_values"]
    assert low < high


def test_normalisation_with_a_mask_zeroes_everything_outside_it(t1):
    vol = canonicalise(*t1)
    mask = vol.data > np.percentile(vol.data, 60)
    out = normalise_intensity(vol, mask=mask)
    assert np.all(out.data[~mask] == 0)
    assert float(out.data[mask].std()) == pytest.approx(1.0, abs=1e-3)


def test_slices_cover_the_non_empty_range_and_are_square(t1_brain):
    vol = normalise_intensity(canonicalise(*t1_brain))
    first, stop = non_empty_range(vol)
    every = list(axial_slices(vol, size=64, min_foreground=0.0))
    assert [z for z, _, _ in every] == list(range(first, stop))
    assert all(s.shape == (64, 64) and s.dtype == np.float32 for _, s, _ in every)
    kept = list(axial_slices(vol, size=64, min_foreground=0.05))
    assert 0 < len(kept) < len(every)
    assert all(fraction >= 0.05 for _, _, fraction in kept)


def test_evaluation_sampling_spreads_slices_over_the_range(t1_brain):
    vol = normalise_intensity(canonicalise(*t1_brain))
    kept = list(axial_slices(vol, size=32, min_foreground=0.05))
    picked = [z for z, _, _ in evenly_spaced(kept, 10)]
    assert len(picked) == 10 and picked[0] == kept[0][0] and picked[-1] == kept[-1][0]
    assert picked == sorted(set(picked))
    assert evenly_spaced(kept, 10_000) == kept


def test_a_slice_is_centred_in_the_canvas(t1_brain):
    vol = canonicalise(*t1_brain)
    z, image, _ = next(iter(axial_slices(vol, size=128, min_foreground=0.2)))
    source = vol.data[:, :, z]
    x0, y0 = (128 - source.shape[0]) // 2, (128 - source.shape[1]) // 2
    np.testing.assert_array_equal(image[x0 : x0 + source.shape[0], y0 : y0 + source.shape[1]], source)
    cropped = next(iter(axial_slices(vol, size=32, min_foreground=0.2)))[1]
    cx, cy = (source.shape[0] - 32) // 2, (source.shape[1] - 32) // 2
    np.testing.assert_array_equal(cropped, source[cx : cx + 32, cy : cy + 32])


def test_preprocess_spec_round_trips_through_json_and_names_bad_keys():
    spec = PreprocessSpec(spacing=(1.0, 1.0, 1.5), slice_size=224, min_foreground=0.1)
    assert PreprocessSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="unknown keys \\['slice_sizee'\\]"):
        PreprocessSpec.from_json('{"slice_sizee": 224}')
    with pytest.raises(ValueError, match="version 3"):
        PreprocessSpec.from_json('{"version": 3}')
    assert set(json.loads(spec.to_json())) == {"spacing", "slice_size", "clip_percentiles", "min_foreground", "version"}


def test_a_version_1_spec_reads_as_version_2_without_the_keys_nothing_read():
    v1 = ('{"channels": 1, "clip_percentiles": [0.5, 99.5], "min_foreground": 0.05, "slice_size": 96, '
          '"slices_per_volume": 128, "spacing": [2.0, 2.0, 2.0], "version": 1}')
    assert PreprocessSpec.from_json(v1) == PreprocessSpec(spacing=(2.0, 2.0, 2.0), slice_size=96)


def test_preprocess_leaves_the_callers_array_alone_unless_given_it(t1):
    data, affine = np.asfortranarray(t1[0]), t1[1]  # RAS at 2 mm: the canonical volume is this very array
    before = data.copy()
    spec = PreprocessSpec(spacing=(2.0, 2.0, 2.0), slice_size=96)
    vol, slices = preprocess(data, affine, spec)
    np.testing.assert_array_equal(data, before)
    given, given_slices = preprocess(data, affine, spec, overwrite_data=True)
    assert np.shares_memory(given.data, data)
    np.testing.assert_array_equal(given.data, vol.data)
    assert [z for z, _, _ in given_slices] == [z for z, _, _ in slices]


def test_preprocess_records_every_step(t1):
    data, affine = t1
    vol, slices = preprocess(data, affine, PreprocessSpec(spacing=(2.0, 2.0, 2.0), slice_size=96))
    assert set(vol.provenance) >= {"source_orientation", "resampled", "intensity", "preprocess_spec"}
    assert vol.provenance["preprocess_spec"]["slice_size"] == 96
    assert slices and all(s.shape == (96, 96) for _, s, _ in slices)
