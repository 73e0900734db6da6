"""Batched multi-view augmentation that runs on the training device.

The SimCLR/VICReg recipe (random resized crop, horizontal flip, colour jitter, grayscale,
Gaussian blur) plus additive noise, applied to a whole batch at once with per-sample random
parameters. torchvision's transforms draw parameters per image in Python, which dominates the
step time for the tiny images of a sweep (8×8 digits to 32×32 CIFAR) on CPU; here one
``affine_grid``/``grid_sample`` and a grouped convolution serve the whole batch, on CPU or GPU.

Multi-crop (DINO, SwAV; papers/003 §4.2.3, §5.2): besides the global views at the input's size,
``num_local_views`` local views are cropped from a smaller area range (``local_crop_scale``) and
resampled straight to ``local_size`` pixels by the same ``grid_sample``, then jittered, blurred
and noised like the global views.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MultiViewAugment", "normalize"]

_MEAN, _STD = 0.5, 0.25


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Map images in [0, 1] to roughly zero mean and unit variance (train and eval alike)."""
    return (images - _MEAN) / _STD


class MultiViewAugment(nn.Module):
    """Draw ``num_views`` global and ``num_local_views`` local augmented, normalised views of a
    batch (B, C, H, W) in [0, 1]: the global views first, at (H, W), then the local views at
    (``local_size``, ``local_size``).

    Args:
        flip: random horizontal flips (off for digits and text, on for natural images).
        crop_scale: area fraction range of the random resized crop of the global views.
        num_local_views: multi-crop local views (0: global views only).
        local_size: side of the local views (required with local views).
        local_crop_scale: area fraction range of the local views' crops (DINO: (0.05, 0.4)).
        jitter: strength of brightness/contrast (and saturation, for RGB) jitter.
        jitter_p, grayscale_p, blur_p, noise_p: per-sample probabilities.
        noise_std: standard deviation of the additive Gaussian noise.
    """

    def __init__(
        self,
        *,
        num_views: int = 2,
        num_local_views: int = 0,
        local_size: int | None = None,
        local_crop_scale: tuple[float, float] = (0.05, 0.4),
        flip: bool = True,
        crop_scale: tuple[float, float] = (0.3, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        jitter: float = 0.4,
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur_p: float = 0.5,
        blur_sigma: tuple[float, float] = (0.1, 1.0),
        noise_p: float = 0.5,
        noise_std: float = 0.05,
    ) -> None:
        super().__init__()
        if num_local_views and local_size is None:
            raise ValueError("local views need local_size, the side of the local crops")
        self.num_views = num_views
        self.num_local_views = num_local_views
        self.local_size = local_size
        self.local_crop_scale = local_crop_scale
        self.flip = flip
        self.crop_scale = crop_scale
        self.crop_ratio = crop_ratio
        self.jitter = jitter
        self.jitter_p = jitter_p
        self.grayscale_p = grayscale_p
        self.blur_p = blur_p
        self.blur_sigma = blur_sigma
        self.noise_p = noise_p
        self.noise_std = noise_std

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        views = [normalize(self.view(images)) for _ in range(self.num_views)]
        return views + [normalize(self.view(images, local=True)) for _ in range(self.num_local_views)]

    def view(self, images: torch.Tensor, *, local: bool = False) -> torch.Tensor:
        """One augmented view in [0, 1] (not normalised); ``local``: a local multi-crop view."""
        if local:
            size = (self.local_size, self.local_size)
            x = self._resized_crop(images, scale=self.local_crop_scale, size=size)
        else:
            x = self._resized_crop(images, scale=self.crop_scale, size=images.shape[-2:])
        x = self._jitter(x)
        if x.shape[1] == 3:
            x = _where(self._coin(x, self.grayscale_p), _gray(x).expand_as(x), x)
        x = _where(self._coin(x, self.blur_p), self._blur(x), x)
        noise = torch.randn_like(x) * self.noise_std
        x = x + noise * self._coin(x, self.noise_p).view(-1, 1, 1, 1)
        return x.clamp_(0.0, 1.0)

    def _coin(self, x: torch.Tensor, p: float) -> torch.Tensor:
        return torch.rand(x.shape[0], device=x.device) < p

    def _resized_crop(self, x: torch.Tensor, *, scale: tuple[float, float], size: Sequence[int]) -> torch.Tensor:
        """Crops of area fraction in ``scale`` (aspect ratio in ``crop_ratio``), resampled to
        ``size`` (H, W)."""
        b = x.shape[0]
        device = x.device
        area = torch.empty(b, device=device).uniform_(*scale)
        log_r = torch.empty(b, device=device).uniform_(*map(math.log, self.crop_ratio))
        ratio = log_r.exp()
        width = (area * ratio).sqrt().clamp(max=1.0)
        height = (area / ratio).sqrt().clamp(max=1.0)
        cx = (torch.rand(b, device=device) * 2 - 1) * (1 - width)
        cy = (torch.rand(b, device=device) * 2 - 1) * (1 - height)
        sx = width
        if self.flip:
            sx = torch.where(torch.rand(b, device=device) < 0.5, -width, width)
        theta = torch.zeros(b, 2, 3, device=device, dtype=x.dtype)
        theta[:, 0, 0] = sx
        theta[:, 0, 2] = cx
        theta[:, 1, 1] = height
        theta[:, 1, 2] = cy
        grid = F.affine_grid(theta, [b, x.shape[1], *size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def _jitter(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        shape = (b, 1, 1, 1)

        def factor() -> torch.Tensor:
            return torch.empty(shape, device=x.device).uniform_(1 - self.jitter, 1 + self.jitter)

        out = x * factor()
        mean = _gray(out).mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * factor() + mean
        if x.shape[1] == 3:
            gray = _gray(out)
            out = (out - gray) * factor() + gray
        return _where(self._coin(x, self.jitter_p), out.clamp(0.0, 1.0), x)

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        size = max(3, (min(h, w) // 10) | 1)
        sigma = torch.empty(b, device=x.device).uniform_(*self.blur_sigma)
        offsets = torch.arange(size, device=x.device, dtype=x.dtype) - size // 2
        kernel_1d = torch.exp(-(offsets[None, :] ** 2) / (2 * sigma[:, None] ** 2))
        kernel_1d = kernel_1d / kernel_1d.sum(dim=1, keepdim=True)  # (B, size)
        kernel_1d = kernel_1d.repeat_interleave(c, dim=0)  # (B*C, size)
        flat = x.reshape(1, b * c, h, w)
        pad = size // 2
        flat = F.pad(flat, (pad, pad, pad, pad), mode="reflect")
        flat = F.conv2d(flat, kernel_1d[:, None, None, :], groups=b * c)
        flat = F.conv2d(flat, kernel_1d[:, None, :, None], groups=b * c)
        return flat.reshape(b, c, h, w)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype)
    return (x * weights.view(1, 3, 1, 1)).sum(dim=1, keepdim=True)


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), a, b)
