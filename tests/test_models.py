import torch

from moebackdoor.vision.models import PMoEWRN, WRN, Router, build_model


def _trainable(m):
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def test_pmoe_matches_the_authors_parameter_count():
    # the Keras model's counts, from its layer list (targets.md)
    assert _trainable(PMoEWRN(10, width=10)) == 3_962_890
    assert _trainable(PMoEWRN(43, width=10)) == 3_984_043
    bn = [m for m in PMoEWRN(10, width=1).modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(m.momentum == 0.01 and m.eps == 1e-3 for m in bn)


def test_each_router_keeps_exactly_16_of_64_positions():
    torch.manual_seed(0)
    model = PMoEWRN(10, width=1).eval()
    x = torch.rand(5, 3, 32, 32)
    z = model.patches(x)
    assert z.shape[-2:] == (8, 8)
    for router in model.routers:
        gates, idx = router(z)
        nonzero = (gates.reshape(5, 64) > 0).sum(1)
        assert nonzero.tolist() == [16] * 5
        assert all(len(set(row.tolist())) == 16 for row in idx)
        # the kept gates are the 16 largest softmax values
        probs = torch.einsum("nchw,c->nhw", z, router.weight).reshape(5, 64).softmax(-1)
        assert torch.allclose(gates.reshape(5, 64).sum(1), probs.topk(16).values.sum(1))
    routes = model.route(x)
    assert routes.shape == (5, 4, 16)


def test_router_picks_the_positions_it_is_built_to_pick():
    router = Router(channels=2, k=16)
    with torch.no_grad():
        router.weight.copy_(torch.tensor([1.0, 0.0]))
    z = torch.zeros(1, 2, 8, 8)
    chosen = torch.tensor([0, 1, 2, 3, 9, 10, 17, 20, 33, 40, 41, 50, 55, 60, 62, 63])
    z.view(1, 2, 64)[0, 0, chosen] = 5.0
    gates, idx = router(z)
    assert sorted(idx[0].tolist()) == chosen.tolist()
    # softmax over 16 logits of 5 and 48 of 0: each kept gate is 1 / (16 + 48 e^-5)
    expected = 1 / (16 + 48 * torch.exp(torch.tensor(-5.0)))
    assert torch.allclose(gates.view(64)[chosen], expected.expand(16), atol=1e-5)
    assert (gates.view(64).count_nonzero()) == 16


def test_both_models_classify_float_images():
    x = torch.rand(2, 3, 32, 32)
    assert build_model("pmoe", 43, 1)(x).shape == (2, 43)
    assert build_model("wrn", 10, 1)(x).shape == (2, 10)
    assert isinstance(build_model("wrn", 10, 1), WRN)
