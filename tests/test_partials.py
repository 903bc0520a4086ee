"""Shard partials are declared data: plain arrays in .npz, read back without pickle."""
from __future__ import annotations

import numpy as np
import pytest

from curate.partials import UnsafePartial, load_partial, save_partial


def test_partials_round_trip_as_plain_arrays(tmp_path):
    partial = {"keys": np.array([3, 1], np.uint64), "ids": np.array(["a", "bc"]), "flags": np.array([True, False])}
    save_partial(tmp_path / "p.npz", partial, "demo")
    back = load_partial(tmp_path / "p.npz")
    assert back.keys() == partial.keys()
    for key, value in partial.items():
        np.testing.assert_array_equal(back[key], value)
        assert back[key].dtype == value.dtype
    assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]  # written via a temporary name, renamed


def test_python_objects_are_refused_when_saving(tmp_path):
    with pytest.raises(TypeError, match="partial 'rows' holds Python objects"):
        save_partial(tmp_path / "p.npz", {"rows": np.array([{"a": 1}], dtype=object)}, "demo")
    with pytest.raises(TypeError, match="must be a dict of numpy arrays"):
        save_partial(tmp_path / "p.npz", [1, 2], "demo")
    assert not (tmp_path / "p.npz").exists()


def test_a_file_that_needs_pickle_is_refused_when_loading(tmp_path):
    planted = tmp_path / "p.npz"
    np.savez(planted, rows=np.array([{"a": 1}], dtype=object))  # object arrays are pickled inside the .npz
    with pytest.raises(UnsafePartial, match="refusing partial"):
        load_partial(planted)
