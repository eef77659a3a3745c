import torch

from moebackdoor.vision.models import PMoEWRN
from moebackdoor.vision.training import Recipe, predict, train


def test_both_training_paths_learn_a_separable_toy_task():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(64) % 2
    x = torch.rand(64, 3, 32, 32, generator=g) * 0.2 + y.view(-1, 1, 1, 1) * 0.6  # bright vs dark
    for fast in (True, False):
        torch.manual_seed(0)
        model = PMoEWRN(2, width=1)
        hist = train(model, x, y, Recipe(epochs=5, batch_size=16, momentum=0.9, lr=0.05),
                     fast=fast, progress=False)
        assert hist["loss"][-1] < hist["loss"][0]
        assert hist["train_acc"][-1] > 90
        # eval mode uses BN running statistics, which move slowly (Keras momentum 0.99)
        pred = predict(model, x, fast=fast)
        assert pred.shape == (64,) and set(pred.tolist()) <= {0, 1}


def test_benchmark_pieces_measure_something():
    from moebackdoor.vision.bench import matmul_rate, training_flops_per_image, training_rate
    assert matmul_rate(torch.bfloat16, n=128, seconds=0.05) > 0
    # width 1: the experts' 1x1 convs and the 3x3 convs dominate; a known order of magnitude
    assert 5e6 < training_flops_per_image(width=1, batch=4) < 5e8
    assert training_rate(width=1, steps=1, fast=True, batch=8) > 0


def test_measuring_the_fast_precision_draws_nothing_from_the_seeded_stream(monkeypatch):
    """The first fast step of a process measures bf16 against fp32; a run seeded before that
    must draw the same random numbers (dropout masks) as one seeded after it."""
    from moebackdoor import devices

    monkeypatch.delenv("MOEBD_PRECISION", raising=False)
    devices._cpu_precision.cache_clear()
    torch.manual_seed(0)
    assert devices.fast_precision(torch.device("cpu")) in devices.PRECISIONS  # measures now
    first = torch.rand(4)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(4), first)
