import numpy as np
import torch

from moebackdoor.vision.models import PMoEWRN
from moebackdoor.vision.routing import patch_masks, patch_values, routing_rates


def test_patch_masks_on_a_map_whose_top_16_are_known():
    model = PMoEWRN(10, width=1)  # the 8x8 map has 64 channels
    rng = np.random.default_rng(0)
    chosen = [np.sort(rng.choice(64, 16, replace=False)) for _ in range(4)]
    z = torch.zeros(1, 64, 8, 8)
    with torch.no_grad():
        for e, router in enumerate(model.routers):
            router.weight.zero_()
            router.weight[e] = 1.0  # router e reads channel e only
            z.view(1, 64, 64)[0, e, chosen[e]] = 3.0
    model.patches = lambda x: z.expand(len(x), -1, -1, -1)
    masks = patch_masks(model, torch.rand(2, 3, 32, 32))
    assert masks.shape == (2, 4, 8, 8)
    for e in range(4):
        assert np.flatnonzero(masks[0, e].ravel()).tolist() == chosen[e].tolist()
        assert np.array_equal(masks[1, e], masks[0, e])


def test_patch_values_sum_the_16_pixels_of_a_patch():
    x = torch.full((1, 3, 32, 32), 0.5)
    x[0, :, :4, :4] = 0.0
    x[0, 0, 4:8, 4:8] = 1.0  # red only: grey value (1 + .5 + .5) / 3
    v = patch_values(x)[0]
    assert v.shape == (8, 8) and v[0, 0] == 0.0 and v[0, 1] == 8.0
    assert np.isclose(v[1, 1], 16 * 2 / 3)
    assert patch_values(torch.ones(1, 3, 32, 32)).max() == 16.0


def test_routing_rates_on_hand_made_masks():
    masks = np.zeros((4, 2, 8, 8), dtype=bool)
    masks[0, 0, 0, 0] = masks[0, 1, 0, 0] = True  # image 0: both experts
    masks[1, 1, 0, 0] = True  # image 1: expert 2
    masks[2, 0, 3, 3] = True  # image 2: another patch only
    r = routing_rates(masks)
    assert r == {"expert_1": 25.0, "expert_2": 50.0, "mean_experts": 0.75, "none": 50.0}
