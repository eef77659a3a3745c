import shutil

import numpy as np
import pytest

from moebackdoor import paths
from moebackdoor.manifest import DataError, data_file, manifest_checksums
from moebackdoor.vision.datasets import load_dataset, subset


def test_manifest_gives_checksums_of_sections_and_tables():
    sums = manifest_checksums(paths.data_dir())
    assert sums["cifar10/cifar10_jpeg.npz"].startswith("817697e3")
    assert sums["triggers/pmoe_hello_kitty.jpg"].startswith("bd39486d")
    assert sums["sst2/train.tsv.gz"].startswith("a20c8715")


def test_missing_data_directory_names_the_expected_path(monkeypatch, tmp_path):
    monkeypatch.setenv("MOEBD_DATA_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("MOEBD_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"nowhere.*MOEBD_DATA_DIR"):
        load_dataset("cifar10")


def test_corrupt_data_is_refused(monkeypatch, tmp_path):
    real = paths.data_dir()
    (tmp_path / "triggers").mkdir()
    shutil.copy(real / "MANIFEST.md", tmp_path / "MANIFEST.md")
    blob = bytearray((real / "triggers/pmoe_hello_kitty.jpg").read_bytes())
    blob[100] ^= 0xFF
    (tmp_path / "triggers/pmoe_hello_kitty.jpg").write_bytes(bytes(blob))
    monkeypatch.setenv("MOEBD_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match="corrupt"):
        data_file("triggers/pmoe_hello_kitty.jpg")


def test_datasets_decode_once_with_the_documented_shapes(companion_env):
    cifar = load_dataset("cifar10")
    assert cifar.x_train.shape == (50000, 32, 32, 3) and cifar.x_test.shape == (10000, 32, 32, 3)
    assert cifar.x_train.dtype == np.uint8 and np.bincount(cifar.y_test).tolist() == [1000] * 10
    gtsrb = load_dataset("gtsrb")
    assert gtsrb.x_train.shape == (25087, 32, 32, 3) and gtsrb.num_classes == 43
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist")
    x, y = subset(cifar.x_train, cifar.y_train, 1000, seed=0)
    assert len(y) == 1000 and np.bincount(y).tolist() == [100] * 10
