"""The authors' patch-level MoE WideResNet (pMoE) and its dense counterpart.

Both take float NCHW images in [0, 1] and return logits. ``width`` is the WRN
widening factor k (the paper's 10); groups have 16k and 32k channels.

pMoE (Chowdhury et al. 2023, as used by Chan et al.): WRN stem and two
pre-activation groups, then BN-ReLU-3x3 conv (stride 2) to an 8x8 map of 64k
channels: 64 "patches", one per position, each the image's 4x4 pixel cell.
Each of 4 routers scores the positions with a bias-free 1x1 conv, takes a
softmax over the 64 positions, and keeps its top 16 values (all others 0); its
expert (BN-ReLU-1x1 conv to 16k channels) sees the map scaled by those gates.
Experts are concatenated, then BN-ReLU, 8x8 average pooling and a linear layer.

The dense WRN replaces the MoE layer by an ordinary third WRN group (64k, stride 2).
Initialisation and BatchNorm follow Keras defaults, as in the authors' code.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

BN_MOMENTUM, BN_EPS = 0.01, 1e-3  # Keras momentum 0.99, epsilon 1e-3


def bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3, plus a 1x1 conv shortcut on the raw input."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = bn(c_in), nn.Conv2d(c_in, c_out, 3, stride, padding=1)
        self.bn2, self.conv2 = bn(c_out), nn.Conv2d(c_out, c_out, 3, 1, padding=1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride)

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return self.shortcut(x) + out


class Router(nn.Module):
    """Scores the positions of a feature map, keeps the top-k softmax gates."""

    def __init__(self, channels: int, k: int):
        super().__init__()
        self.k = k
        self.weight = nn.Parameter(torch.randn(channels) * 1e-4)

    def forward(self, x):
        n, _, h, w = x.shape
        logits = torch.einsum("nchw,c->nhw", x, self.weight.to(x.dtype)).reshape(n, h * w)
        probs = logits.float().softmax(-1)
        values, idx = probs.topk(self.k, dim=-1, sorted=False)
        gates = torch.zeros_like(probs).scatter(-1, idx, values)
        return gates.reshape(n, 1, h, w).to(x.dtype), idx


class Expert(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.bn, self.conv = bn(c_in), nn.Conv2d(c_in, c_out, 1)

    def forward(self, x):
        return self.conv(F.relu(self.bn(x)))


def _stem_and_groups(width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        PreActBlock(16, 16 * width, 1),
        PreActBlock(16 * width, 32 * width, 2),
    )


def keras_init(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)  # glorot_uniform
            nn.init.zeros_(m.bias)
    return model


class PMoEWRN(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 10, num_experts: int = 4,
                 k: int = 16):
        super().__init__()
        self.features = _stem_and_groups(width)
        self.pre_bn = bn(32 * width)
        self.moe_conv = nn.Conv2d(32 * width, 64 * width, 3, 2, padding=1)
        self.routers = nn.ModuleList(Router(64 * width, k) for _ in range(num_experts))
        self.experts = nn.ModuleList(Expert(64 * width, 16 * width) for _ in range(num_experts))
        self.post_bn = bn(16 * width * num_experts)
        self.fc = nn.Linear(16 * width * num_experts, num_classes)
        keras_init(self)

    def patches(self, x):
        """The 8x8 map the routers see."""
        return self.moe_conv(F.relu(self.pre_bn(self.features(x))))

    def route(self, x) -> torch.Tensor:
        """Indices (N, experts, k) of the positions each expert receives, row-major on 8x8."""
        z = self.patches(x)
        return torch.stack([r(z)[1] for r in self.routers], 1)

    def forward(self, x):
        z = self.patches(x)
        outs = [e(z * r(z)[0]) for r, e in zip(self.routers, self.experts)]
        out = F.relu(self.post_bn(torch.cat(outs, 1)))
        return self.fc(out.mean((2, 3)))


class WRN(nn.Module):
    """The dense WRN: a third pre-activation group instead of the MoE layer."""

    def __init__(self, num_classes: int = 10, width: int = 10):
        super().__init__()
        self.features = nn.Sequential(*_stem_and_groups(width),
                                      PreActBlock(32 * width, 64 * width, 2))
        self.post_bn = bn(64 * width)
        self.fc = nn.Linear(64 * width, num_classes)
        keras_init(self)

    def forward(self, x):
        out = F.relu(self.post_bn(self.features(x)))
        return self.fc(out.mean((2, 3)))


MODELS = {"pmoe": PMoEWRN, "wrn": WRN}


def build_model(arch: str, num_classes: int, width: int) -> nn.Module:
    if arch not in MODELS:
        raise ValueError(f"unknown model {arch!r}; choose one of {sorted(MODELS)}")
    return MODELS[arch](num_classes=num_classes, width=width)
