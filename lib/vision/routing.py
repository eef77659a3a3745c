"""Which image patches each pMoE expert receives.

The pMoE layer works on an 8x8 map: position (r, c) is the 4x4 pixel cell
rows 4r..4r+3, columns 4c..4c+3 of the 32x32 input. A router keeps 16 of the
64 positions; :func:`patch_masks` says, per image and expert, which ones.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch

from ..style import EXPERT_COLOURS
from .training import _autocast, _batch, default_device

GRID, CELL = 8, 4


@torch.no_grad()
def patch_masks(model, x: torch.Tensor, batch_size: int = 500, fast: bool = True) -> np.ndarray:
    """Boolean (N, experts, 8, 8): True where the expert receives that patch.

    ``fast`` routes under bf16 autocast, as the library trains and evaluates.
    """
    device = default_device()
    model.eval().to(device)
    out = []
    for i in range(0, len(x), batch_size):
        with _autocast(fast, device):
            idx = model.route(_batch(x[i:i + batch_size], fast, device)).cpu()  # (n, experts, k)
        mask = torch.zeros(idx.shape[0], idx.shape[1], GRID * GRID, dtype=torch.bool)
        mask.scatter_(2, idx, True)
        out.append(mask.view(-1, idx.shape[1], GRID, GRID))
    model.cpu()
    return torch.cat(out).numpy()


def patch_values(x: torch.Tensor) -> np.ndarray:
    """(N, 8, 8) patch values as the paper defines them: the sum over a patch's 16 pixels
    of the pixel value (mean of R, G, B in [0, 1]); 16 for an all-white patch."""
    gray = x.mean(1)  # (N, 32, 32)
    return gray.reshape(len(x), GRID, CELL, GRID, CELL).sum((2, 4)).numpy()


def draw_patch_map(ax, image: torch.Tensor, mask: np.ndarray, colour=EXPERT_COLOURS[0], title: str = ""):
    """The image with the patches of one expert outlined and the rest dimmed."""
    img = image.permute(1, 2, 0).numpy()
    shade = np.where(np.kron(mask, np.ones((CELL, CELL)))[..., None], 1.0, 0.35)
    ax.imshow(img * shade, interpolation="nearest")
    for r, c in zip(*np.nonzero(mask)):
        ax.add_patch(plt.Rectangle((c * CELL - 0.5, r * CELL - 0.5), CELL, CELL, fill=False,
                                   edgecolor=colour, linewidth=1))
    ax.set_xticks([]), ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def patch_map_figure(rows: list[tuple[str, torch.Tensor, np.ndarray]], highlight=None):
    """One row per (label, image (3, 32, 32), mask (experts, 8, 8)): the image, then one panel per expert.

    ``highlight`` = (r, c) marks that patch (the square trigger's) in every panel.
    """
    experts = rows[0][2].shape[0]
    fig, axes = plt.subplots(len(rows), experts + 1, figsize=(1.9 * (experts + 1), 2.0 * len(rows)),
                             squeeze=False)
    for i, (label, image, mask) in enumerate(rows):
        axes[i, 0].imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
        axes[i, 0].set_xticks([]), axes[i, 0].set_yticks([])
        axes[i, 0].set_ylabel(label, fontsize=8)
        for e in range(experts):
            n_trig = ""
            if highlight is not None:
                n_trig = " ✓" if mask[e][highlight] else ""
            draw_patch_map(axes[i, e + 1], image, mask[e], EXPERT_COLOURS[e],
                           f"expert {e + 1}{n_trig}" if i == 0 or highlight is not None else "")
            if highlight is not None:
                r, c = highlight
                axes[i, e + 1].add_patch(plt.Rectangle((c * CELL - 0.5, r * CELL - 0.5), CELL, CELL,
                                                       fill=False, edgecolor="red", linewidth=1.5,
                                                       linestyle=":"))
    axes[0, 0].set_title("input", fontsize=9)
    fig.tight_layout()
    return fig


def patch_value_figure(items: list[tuple[str, torch.Tensor, np.ndarray]], bins=np.arange(0, 16.5, 1)):
    """Figure 5: per expert, the histogram of the values of the patches it receives."""
    experts = items[0][2].shape[0]
    fig, axes = plt.subplots(len(items), experts, figsize=(2.3 * experts, 1.9 * len(items)),
                             squeeze=False, sharex=True, sharey=True)
    for i, (label, image, mask) in enumerate(items):
        values = patch_values(image[None])[0]
        for e in range(experts):
            ax = axes[i, e]
            sns.histplot(values[mask[e]], bins=bins, color=EXPERT_COLOURS[e], ax=ax)
            ax.set_ylabel("")
            ax.set_yticks(range(0, 17, 4))
            ax.set_ylim(0, 16)
            if i == 0:
                ax.set_title(f"expert {e + 1}", fontsize=9)
            if e == 0:
                ax.set_ylabel(f"{label}\npatches", fontsize=8)
            if i == len(items) - 1:
                ax.set_xlabel("patch value (0–16)", fontsize=8)
    fig.tight_layout()
    return fig


def routing_rates(masks: np.ndarray, patch=(0, 0)) -> dict:
    """How often each expert receives ``patch``, over a set of images, in percent;
    also how many experts receive it on average and how often none does."""
    hit = masks[:, :, patch[0], patch[1]]  # (N, experts)
    rates = {f"expert_{e + 1}": 100 * float(hit[:, e].mean()) for e in range(hit.shape[1])}
    rates["mean_experts"] = float(hit.sum(1).mean())
    rates["none"] = 100 * float((hit.sum(1) == 0).mean())
    return rates
