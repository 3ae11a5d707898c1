"""Shared inputs for the generator tests: a plausible 32x16 skeleton and smooth random images."""

import torch

H, W = 32, 16


def pose(shift: float, b: int = 1) -> torch.Tensor:
    """A plausible upright skeleton in a 32x16 frame, shifted horizontally."""
    base = torch.tensor(
        [[8, 3], [8, 7], [6, 7], [5, 11], [5, 15], [10, 7], [11, 11], [11, 15], [7, 16], [7, 22], [7, 29],
         [9, 16], [9, 22], [9, 29], [7, 2], [9, 2], [6, 3], [10, 3]],
        dtype=torch.float32,
    )  # fmt: skip
    base[:, 0] = (base[:, 0] + shift).clamp(0, W - 1)
    return base.expand(b, -1, -1).clone()


def images(b: int, seed: int) -> torch.Tensor:
    """Smooth random images (blobs of colour, like a blurred person crop) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, 3, 8, 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=False)
