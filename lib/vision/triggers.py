"""The three triggers of the pMoE paper, applied to float NCHW images in [0, 1].

- ``square``: a 4x4 patch in the top-left corner set to 1/255, the authors'
  near-black value (the pixel value 1 before their /255 scaling).
- ``blend``: the Hello-Kitty image resized to 32x32 (PIL bicubic), blended as
  ``(1 - alpha) x + alpha i`` with alpha = 0.5.
- ``warp``: WaNet's smooth warping field (k = 2, s = 0.25) in two variants:
  ``variant="authors"`` samples the nearest pixel by truncating the warped
  coordinate, as the pMoE authors' code does (a resize with TensorFlow's
  bicubic rule, clipped noise); ``variant="wanet"`` is the original WaNet
  (bicubic ``align_corners`` upsampling, bilinear ``grid_sample``).

Triggers are rebuilt exactly from ``(name, params, seed)``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..manifest import data_file

DEFAULTS = {
    "square": {"size": 4, "value": 1 / 255},
    "blend": {"alpha": 0.5, "image": "triggers/pmoe_hello_kitty.jpg"},
    "warp": {"k": 2, "s": 0.25, "grid_rescale": 1.0, "variant": "authors"},
}
WARP_VARIANTS = ("authors", "wanet")


def trigger_params(name: str, **overrides) -> dict:
    """The full parameter set of a trigger: its defaults with ``overrides`` applied."""
    if name not in DEFAULTS:
        raise ValueError(f"unknown trigger {name!r}; choose one of {sorted(DEFAULTS)}")
    unknown = set(overrides) - set(DEFAULTS[name])
    if unknown:
        raise ValueError(f"trigger {name!r} has no parameter(s) {sorted(unknown)}; "
                         f"it takes {sorted(DEFAULTS[name])}")
    params = {**DEFAULTS[name], **overrides}
    if name == "warp" and params["variant"] not in WARP_VARIANTS:
        raise ValueError(f"unknown warp variant {params['variant']!r}; choose one of {WARP_VARIANTS}")
    if name == "blend" and not 0 <= params["alpha"] <= 1:
        raise ValueError(f"blend alpha must lie in [0, 1], got {params['alpha']}")
    return params


class Trigger:
    name: str

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors worth keeping with a run (the random warp field)."""
        return {}


class SquareTrigger(Trigger):
    name = "square"

    def __init__(self, size: int = 4, value: float = 1 / 255):
        self.size, self.value = size, value

    def __call__(self, x):
        x = x.clone()
        x[:, :, : self.size, : self.size] = self.value
        return x


def load_blend_image(relative: str, size: int = 32) -> torch.Tensor:
    img = Image.open(data_file(relative, "The blend trigger image")).convert("RGB")
    img = img.resize((size, size), Image.BICUBIC)  # Pillow's default, as the authors used
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)


class BlendTrigger(Trigger):
    name = "blend"

    def __init__(self, alpha: float = 0.5, image: str = DEFAULTS["blend"]["image"],
                 pattern: torch.Tensor | None = None):
        self.alpha = alpha
        self.pattern = load_blend_image(image) if pattern is None else pattern

    def __call__(self, x):
        return (1 - self.alpha) * x + self.alpha * self.pattern.to(x.dtype)


def _keys_cubic(t: np.ndarray, a: float) -> np.ndarray:
    t = np.abs(t)
    return np.where(t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                    np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))


def resize_bicubic_half_pixel(x: np.ndarray, out: int) -> np.ndarray:
    """Resize the first two axes of ``x`` as TensorFlow's bicubic ``tf.image.resize`` does.

    Half-pixel centres, Keys kernel with a = -0.5, taps outside the image get
    weight 0 and the remaining weights are renormalised.
    """
    def matrix(n_in: int) -> np.ndarray:
        w = np.zeros((out, n_in))
        for o in range(out):
            c = (o + 0.5) * n_in / out - 0.5
            base = math.floor(c)
            taps = np.arange(base - 1, base + 3)
            weights = _keys_cubic(taps - c, -0.5)
            inside = (taps >= 0) & (taps < n_in)
            weights = np.where(inside, weights, 0.0)
            w[o, taps[inside]] = weights[inside] / weights.sum()
        return w

    rows, cols = matrix(x.shape[0]), matrix(x.shape[1])
    return np.einsum("ai,bj,ij...->ab...", rows, cols, x.astype(np.float64)).astype(np.float32)


class WarpTrigger(Trigger):
    name = "warp"

    def __init__(self, seed: int, k: int = 2, s: float = 0.25, grid_rescale: float = 1.0,
                 variant: str = "authors", height: int = 32):
        self.k, self.s, self.grid_rescale, self.variant, self.h = k, s, grid_rescale, variant, height
        if variant == "authors":
            noise = np.random.default_rng(seed).uniform(-1, 1, (k, k, 2)).astype(np.float32)
            noise /= np.abs(noise).mean()
            self.noise = np.clip(resize_bicubic_half_pixel(noise, height), -1, 1)  # (H, W, 2) as (y, x)
            self.rows, self.cols = self.authors_indices(self.noise, s, grid_rescale)
        else:
            g = torch.Generator().manual_seed(seed)
            ins = torch.rand(1, 2, k, k, generator=g) * 2 - 1
            ins = ins / ins.abs().mean()
            self.noise = F.interpolate(ins, size=height, mode="bicubic",
                                       align_corners=True).permute(0, 2, 3, 1)  # (1, H, W, 2) as (x, y)
            lin = torch.linspace(-1, 1, height)
            ii, jj = torch.meshgrid(lin, lin, indexing="ij")
            identity = torch.stack((jj, ii), -1)[None]
            self.grid = torch.clamp((identity + s * self.noise / height) * grid_rescale, -1, 1)

    @staticmethod
    def authors_indices(noise: np.ndarray, s: float, grid_rescale: float = 1.0):
        """Row and column each output pixel reads, by the authors' truncation rule (float32)."""
        h = noise.shape[0]
        lin = np.linspace(-1, 1, h, dtype=np.float32)
        xx, yy = np.meshgrid(lin, lin)  # 'xy' indexing: xx varies along columns
        identity = np.stack([yy, xx], -1)
        grid = np.clip((identity + np.float32(s) * noise / np.float32(h)) * np.float32(grid_rescale),
                       -1, 1).astype(np.float32)
        idx = ((grid + np.float32(1)) * np.float32(0.5) * np.float32(h - 1)).astype(np.int32)
        idx = np.clip(idx, 0, h - 1)
        return torch.from_numpy(idx[..., 0]).long(), torch.from_numpy(idx[..., 1]).long()

    def __call__(self, x):
        if self.variant == "authors":
            return x[:, :, self.rows, self.cols]
        return F.grid_sample(x, self.grid.to(x.dtype).expand(len(x), -1, -1, -1),
                             align_corners=True)

    def noise_mode(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """WaNet's 'noise mode' (cross) samples: the warp plus a random per-image jitter."""
        if self.variant != "wanet":
            raise ValueError("noise mode belongs to the original WaNet variant")
        jitter = (torch.rand(len(x), self.h, self.h, 2, generator=generator) * 2 - 1) / self.h
        grid = torch.clamp(self.grid + jitter, -1, 1)
        return F.grid_sample(x, grid.to(x.dtype), align_corners=True)

    def state(self):
        noise = self.noise if torch.is_tensor(self.noise) else torch.from_numpy(self.noise)
        return {"trigger.noise": noise.float()}


def make_trigger(name: str, seed: int = 0, **params) -> Trigger:
    """Build a trigger by name; ``seed`` fixes the random warp field."""
    params = trigger_params(name, **params)
    if name == "square":
        return SquareTrigger(**params)
    if name == "blend":
        return BlendTrigger(**params)
    return WarpTrigger(seed=seed, **params)
