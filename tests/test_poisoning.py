import numpy as np
import pytest
import torch

from moebackdoor.vision.poisoning import poison_training_set, triggered_test_set
from moebackdoor.vision.triggers import make_trigger


def _data(n=1000, classes=10):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 32, 32, generator=g), torch.arange(n) % classes


@pytest.mark.parametrize("rate,expected", [(0.0, 0), (0.005, 5), (0.02, 20), (0.1, 100), (1.0, 1000)])
def test_poisons_int_rate_times_n_samples(rate, expected):
    x, y = _data()
    p = poison_training_set(x, y, make_trigger("square"), rate, target=0, seed=1)
    assert len(p.poison_idx) == expected == len(np.unique(p.poison_idx))
    assert torch.all(p.y[p.poison_idx] == 0)
    assert torch.all(p.x[p.poison_idx][:, :, :4, :4] == 1 / 255)
    rest = np.setdiff1d(np.arange(len(y)), p.poison_idx)
    assert torch.equal(p.y[rest], y[rest]) and torch.equal(p.x[rest], x[rest])


def test_poison_is_drawn_from_all_classes_and_is_seeded():
    x, y = _data()
    p = poison_training_set(x, y, make_trigger("square"), 0.1, seed=1)
    assert len(np.unique(y[p.poison_idx].numpy())) == 10  # source-agnostic, target class included
    again = poison_training_set(x, y, make_trigger("square"), 0.1, seed=1)
    assert np.array_equal(p.poison_idx, again.poison_idx)


@pytest.mark.parametrize("rate", [1.5, -0.1, "0.02", None, True])
def test_bad_poison_rates_fail_fast(rate):
    x, y = _data(20)
    with pytest.raises(ValueError, match=r"parameter `poison_rate`: expected a fraction in \[0, 1\]"):
        poison_training_set(x, y, make_trigger("square"), rate)


def test_noise_mode_only_for_wanet_and_keeps_labels():
    x, y = _data(200)
    with pytest.raises(ValueError, match="noise mode|cross_ratio"):
        poison_training_set(x, y, make_trigger("square"), 0.1, cross_ratio=2)
    p = poison_training_set(x, y, make_trigger("warp", variant="wanet"), 0.1, cross_ratio=2)
    assert len(p.poison_idx) == 20 and len(p.cross_idx) == 40
    assert not set(p.poison_idx) & set(p.cross_idx)
    assert torch.equal(p.y[p.cross_idx], y[p.cross_idx])


def test_triggered_test_set_excludes_the_target_class():
    x, y = _data(100)
    xt, yt = triggered_test_set(x, y, make_trigger("square"), target=3)
    assert len(yt) == 90 and not (yt == 3).any()
