import pytest
import torch
import torch.nn.functional as F

from moebackdoor.vision.fine_pruning import (apply_pruning, expert_channel_means, expert_convs,
                                             pruning_plan, remove_masks)
from moebackdoor.vision.models import PMoEWRN
from moebackdoor.runcache import config_hash
from moebackdoor.vision.training import Recipe, train


def _model():
    torch.manual_seed(0)
    return PMoEWRN(10, width=1)  # experts: 1x1 convs of 16 filters


def test_plan_takes_the_lowest_means_first():
    means = [torch.tensor([3.0, -1.0, 0.5, -2.0, 7.0, 0.0, 1.0, 2.0])] * 2
    plan = pruning_plan(means, 0.25)  # int(8 * 0.25) = 2 filters: -2 (index 3), then -1 (index 1)
    assert [p.tolist() for p in plan] == [[3, 1], [3, 1]]
    assert [len(p) for p in pruning_plan(means, 0.3)] == [2, 2]  # int(2.4)
    assert [len(p) for p in pruning_plan(means, 0.0)] == [0, 0]
    with pytest.raises(ValueError, match="fraction"):
        pruning_plan(means, 1.5)


def test_pruning_zeroes_exactly_the_planned_filters_and_nothing_else():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = [torch.tensor([0, 5]), torch.tensor([15]), torch.tensor([], dtype=torch.long), torch.tensor([2, 3, 4])]
    apply_pruning(model, plan)
    after = model.state_dict()
    assert after.keys() == before.keys()
    for e, channels in enumerate(plan):
        for name in ("weight", "bias"):
            key = f"experts.{e}.conv.{name}"
            keep = torch.ones(16, dtype=torch.bool)
            keep[channels] = False
            assert torch.all(after[key][~keep] == 0)
            assert torch.equal(after[key][keep], before[key][keep])
    untouched = [k for k in before if not k.startswith("experts.") or ".conv." not in k]
    assert all(torch.equal(after[k], before[k]) for k in untouched)


def test_a_persistent_mask_survives_fine_tuning_and_no_mask_does_not():
    x, y = torch.rand(32, 3, 32, 32), torch.arange(32) % 10
    plan = [torch.tensor([1, 2])] * 4
    for persistent in (True, False):
        model = _model()
        # a zeroed filter's constant output leaves BN as its shift; at the fresh shift 0 the ReLU
        # passes no gradient and the filter could never regrow: shift it as training would
        with torch.no_grad():
            model.post_bn.bias.fill_(0.5)
        apply_pruning(model, plan, persistent=persistent)
        train(model, x, y, Recipe(epochs=2, batch_size=16, lr=0.1), progress=False)
        remove_masks(model)
        assert not any("_orig" in k or "_mask" in k for k in model.state_dict())
        zero = [bool(conv.weight[[1, 2]].abs().sum() == 0) for conv in expert_convs(model)]
        assert zero == [persistent] * 4


def test_channel_means_match_a_direct_computation():
    model = _model().eval()
    x = torch.rand(6, 3, 32, 32)
    means = expert_channel_means(model, x, batch_size=4)
    with torch.no_grad():
        z = model.patches(x)
        for router, expert, m in zip(model.routers, model.experts, means):
            direct = expert.conv(F.relu(expert.bn(z * router(z)[0]))).mean((0, 2, 3))
            assert torch.allclose(m.float(), direct, rtol=0.05, atol=0.02)  # bf16 autocast


def test_chapter_grid_names_its_groups_and_checks_every_parameter_first():
    from moebackdoor.params import ParameterError
    from moebackdoor.vision.fine_pruning import chapter_grid, requires

    grid = chapter_grid("quick")
    assert list(grid) == ["attacks", "fine_pruning", "pmoe", "wrn"]
    assert {c["chapter"] for c in grid["fine_pruning"]} == {"pmoe-fine-pruning"}
    assert {c["arch"] for c in grid["wrn"]} == {"wrn"} and {c["arch"] for c in grid["pmoe"]} == {"pmoe"}
    attacked = {config_hash(c) for c in grid["attacks"]}
    assert all(config_hash(d) in attacked for c in grid["fine_pruning"] for d in requires(c))  # chapter 1's models
    for kwargs, message in [({"pruning_rates": [1.5]}, "`pruning_rates`: expected a fraction"),
                            ({"compare_rates": []}, "`compare_rates`: expected a non-empty list"),
                            ({"poison_rate": -0.1}, "`poison_rate`: expected a fraction"),
                            ({"seeds": [-1]}, "`seeds`: expected an integer >= 0")]:
        with pytest.raises(ParameterError, match=message):
            chapter_grid("quick", **kwargs)
