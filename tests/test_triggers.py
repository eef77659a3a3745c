import numpy as np
import pytest
import torch

from moebackdoor.vision.triggers import (BlendTrigger, WarpTrigger, make_trigger,
                                         resize_bicubic_half_pixel)


def test_square_sets_the_top_left_4x4_to_one_over_255():
    x = torch.rand(3, 3, 32, 32)
    out = make_trigger("square")(x)
    assert torch.all(out[:, :, :4, :4] == 1 / 255)
    mask = torch.ones(32, 32, dtype=torch.bool)
    mask[:4, :4] = False
    assert torch.equal(out[:, :, mask], x[:, :, mask])
    assert not torch.equal(out, x) and torch.equal(x, x.clone())  # input left alone


def test_blend_is_the_average_with_the_pattern():
    pattern = torch.zeros(3, 32, 32)
    pattern[0] = 1.0
    x = torch.full((1, 3, 32, 32), 0.4)
    out = BlendTrigger(alpha=0.5, pattern=pattern)(x)
    assert torch.allclose(out[0, 0], torch.full((32, 32), 0.7))
    assert torch.allclose(out[0, 1:], torch.full((2, 32, 32), 0.2))


def test_blend_image_is_loaded_from_the_data_directory():
    t = make_trigger("blend")
    assert t.pattern.shape == (3, 32, 32)
    assert 0 <= t.pattern.min() and t.pattern.max() <= 1 and t.pattern.std() > 0.05


def test_bicubic_resize_matches_the_hand_computed_half_pixel_rule():
    # 2 -> 4: output 0 sits at input coordinate -0.25; taps -2, -1 fall outside,
    # Keys (a = -0.5) weights of taps 0 and 1 are 0.8671875 and -0.0703125, renormalised
    out = resize_bicubic_half_pixel(np.array([[0.0], [1.0]]), 4)
    assert out.shape == (4, 4)
    assert out[0, 0] == pytest.approx(-0.0703125 / 0.796875, abs=1e-6)
    assert out[3, 0] == pytest.approx(1 + 0.0703125 / 0.796875, abs=1e-6)  # mirror image
    const = resize_bicubic_half_pixel(np.full((2, 2, 2), 0.3), 32)
    assert np.allclose(const, 0.3, atol=1e-6)


def test_authors_warp_indices_by_truncation():
    # 4x4 field: y pushed by -1, x by +1, s = 0.25 -> shift 0.0625 in [-1, 1] units
    noise = np.zeros((4, 4, 2), np.float32)
    noise[..., 0], noise[..., 1] = -1, 1
    rows, cols = WarpTrigger.authors_indices(noise, s=0.25)
    # y: clip(-1.0625)=-1 -> 0; -0.396 -> 0.906 -> 0; 0.271 -> 1.906 -> 1; 0.9375 -> 2.906 -> 2
    assert rows[:, 0].tolist() == [0, 0, 1, 2]
    # x: -0.9375 -> 0.09 -> 0; -0.271 -> 1.09 -> 1; 0.396 -> 2.09 -> 2; clip(1.0625) -> 3
    assert cols[0].tolist() == [0, 1, 2, 3]


def test_authors_warp_moves_pixels_by_at_most_one():
    t = make_trigger("warp", seed=3)
    ii, jj = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    assert (t.rows - ii).abs().max() <= 1 and (t.cols - jj).abs().max() <= 1
    assert (t.rows != ii).any()  # the warp does something
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(t(x), x[:, :, t.rows, t.cols])
    # the same seed rebuilds the same warp; another seed gives another
    assert torch.equal(make_trigger("warp", seed=3).rows, t.rows)
    assert not torch.equal(make_trigger("warp", seed=4).rows, t.rows)


def test_wanet_warp_with_zero_strength_is_the_identity():
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(make_trigger("warp", variant="wanet", s=0.0)(x), x, atol=1e-5)
    out = make_trigger("warp", variant="wanet", seed=1)(x)
    assert out.shape == x.shape and not torch.allclose(out, x)


@pytest.mark.parametrize("name,params,match", [
    ("checkerboard", {}, "unknown trigger 'checkerboard'"),
    ("square", {"colour": 1}, "no parameter"),
    ("warp", {"variant": "smooth"}, "unknown warp variant"),
    ("blend", {"alpha": 2.0}, "alpha"),
])
def test_bad_trigger_settings_fail_fast(name, params, match):
    with pytest.raises(ValueError, match=match):
        make_trigger(name, **params)
