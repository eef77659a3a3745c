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
