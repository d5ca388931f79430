"""data.load(..., val_split=f): a seeded, stratified hold-out of the training rows, normalised
with the statistics of the remaining training rows only."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from jaxbp import data


def write_idx(folder, n_train=60, n_test=10, seed=0):
    """Four raw IDX files; class c has 3 + c training rows (unbalanced, so proportions are visible)."""
    rng = np.random.default_rng(seed)
    y_train = np.repeat(np.arange(10), 3 + np.arange(10))[:n_train].astype(np.uint8)
    splits = {
        "train": (rng.integers(0, 256, (len(y_train), 4, 3), dtype=np.uint8), y_train),
        "t10k": (rng.integers(0, 256, (n_test, 4, 3), dtype=np.uint8), (np.arange(n_test) % 10).astype(np.uint8)),
    }
    for prefix, (images, labels) in splits.items():
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
            (folder / f"{prefix}-{kind}-ubyte").write_bytes(header + arr.tobytes())
    return splits["train"]


def test_stratified_seeded_disjoint_and_covering():
    y = np.repeat(np.arange(4), [10, 20, 30, 40])
    train, val = data.validation_indices(y, 0.1, seed=3)
    assert np.array_equal(np.bincount(y[val]), [1, 2, 3, 4])  # round(0.1 n_c) per class: the proportions of y
    assert not set(train) & set(val) and np.array_equal(np.sort(np.concatenate([train, val])), np.arange(100))
    again, other = data.validation_indices(y, 0.1, seed=3)[1], data.validation_indices(y, 0.1, seed=4)[1]
    assert np.array_equal(val, again) and not np.array_equal(val, other)


def test_idx_load_holds_out_rows_and_takes_statistics_from_the_rest(tmp_path):
    x_raw, y_raw = write_idx(tmp_path)
    ds = data.load("mnist", tmp_path, val_split=0.25, seed=1)
    train, val = data.validation_indices(y_raw, 0.25, seed=1)
    kept = x_raw[train].astype(np.float32) / np.float32(255)  # as load computes them: float32 images, float64 sums
    assert ds.mean == kept.mean(dtype=np.float64) and ds.std == kept.std(dtype=np.float64)
    full = data.load("mnist", tmp_path)
    assert ds.mean != full.mean  # the held-out rows no longer count
    np.testing.assert_array_equal(ds.y_train, y_raw[train])
    np.testing.assert_array_equal(ds.y_val, y_raw[val])
    # The held-out rows are normalised with the same (remaining rows') statistics.
    np.testing.assert_allclose(ds.x_val[..., 0] * ds.std + ds.mean, x_raw[val] / 255.0, atol=1e-6)
    np.testing.assert_allclose(ds.x_train[..., 0] * ds.std + ds.mean, x_raw[train] / 255.0, atol=1e-6)
    assert ds.x_val.dtype == np.float32 and ds.y_val.dtype == np.int32 and not ds.x_val.flags.writeable
    np.testing.assert_allclose(ds.x_test * ds.std + ds.mean, full.x_test * full.std + full.mean, atol=1e-6)
    assert full.x_val is None and full.y_val is None


def test_digits_validation_split_is_seeded_and_stratified():
    a, b = data.load("digits", val_split=0.1, seed=0), data.load("digits", val_split=0.1, seed=0)
    np.testing.assert_array_equal(a.x_val, b.x_val)
    assert len(a.y_train) + len(a.y_val) == 1437 and len(a.x_test) == 360
    share = np.bincount(a.y_val, minlength=10) / len(a.y_val)
    np.testing.assert_allclose(share, np.bincount(a.y_train, minlength=10) / len(a.y_train), atol=0.02)


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, float("nan"), True, "0.1"])
def test_bad_fractions_are_rejected_before_loading(fraction):
    with pytest.raises(data.DataError, match=r"^val_split must be"):
        data.load("mnist", "/nonexistent", val_split=fraction)  # no file is looked for


def test_a_fraction_too_small_for_one_row_per_class_is_a_clear_error():
    y = np.repeat(np.arange(3), 10)
    with pytest.raises(data.DataError, match=r"val_split=0.01 holds out 0 of the 10 training rows of class 0"):
        data.validation_indices(y, 0.01)
    with pytest.raises(data.DataError, match="at least one validation and one training row"):
        data.validation_indices(np.array([0, 0, 1]), 0.5)  # class 1: its only row would be held out
