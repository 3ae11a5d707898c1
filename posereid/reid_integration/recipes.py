"""Recipes: the re-ID and generation settings that fit a kind of data, chosen from the data itself.

A re-ID run sized for Market-1501 (ResNet-50 at 128x64, 3,000 steps) spends ten CPU-minutes a cell on
a 64x32 synthetic folder whose committed results used OSNet-x0.25 at 64x32 for 471 steps; OSNet at the
Market learning rate barely learns (rank-1 0.035 against 0.48 at lr 0.01). A user should not have to
find that in a results README: ``reid-gain``, ``train-reid`` and ``train-generator`` take
``--recipe synthetic|market`` (default: :func:`recipe_for` the data), fill every setting the user left out
from it, and print what it implies with an estimated time per re-ID run (:func:`probe_step_seconds`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

#: the file the synthetic renderer writes beside every dataset it makes
SYNTHETIC_MARKER = "synthetic-identities.json"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class Recipe:
    """The settings one kind of data is measured with.

    Re-ID: ``reid_model`` at ``height`` x ``width``, ``reid_steps`` steps of batch ``reid_batch_size`` at
    ``reid_lr``. Generation: the ``generator_preset`` trained ``generator_steps`` steps; sampling with
    ``sampler`` in ``steps`` steps at ``guidance``, target poses drawn by ``pose_sampling``.
    """

    name: str
    why: str
    reid_model: str
    height: int
    width: int
    reid_steps: int
    reid_batch_size: int
    reid_lr: float
    generator_preset: str
    generator_steps: int
    sampler: str
    steps: int
    guidance: tuple[float, float]
    pose_sampling: str

    def describe(self) -> str:
        """One line: the settings the recipe implies."""
        return (
            f"re-ID {self.reid_model} at {self.height}x{self.width}, {self.reid_steps} steps x batch "
            f"{self.reid_batch_size}, lr {self.reid_lr:g}; generator preset {self.generator_preset} "
            f"({self.generator_steps} steps); sampling {self.sampler} {self.steps} steps, guidance "
            f"{self.guidance[0]:g},{self.guidance[1]:g}, {self.pose_sampling} target poses"
        )


RECIPES: dict[str, Recipe] = {
    # the committed synthetic results (results/gain_flow_10seeds, results/gain_protocol)
    "synthetic": Recipe(
        "synthetic", "64x32 renders of the synthetic people", "osnet_x0_25", 64, 32, 471, 32, 0.01, "small",
        6000, "dpmsolver++", 12, (1.0, 1.0), "view",
    ),
    # Market-1501 at its native size on a GPU (BoT-style ResNet-50; the generator's GPU preset)
    "market": Recipe(
        "market", "Market-1501-sized photos", "resnet50", 128, 64, 3000, 32, 3.5e-4, "market", 20000,
        "dpmsolver++", 20, (2.0, 2.0), "uniform",
    ),
}  # fmt: skip


def _first_image(folder: Path) -> Path | None:
    for name in sorted(os.listdir(folder)) if folder.is_dir() else ():
        if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("."):
            return folder / name
    return None


def recipe_for(data: str | os.PathLike[str]) -> Recipe:
    """The recipe of a Market-format folder: ``synthetic`` when the renderer made it (its marker file) or
    its train images are at most 64 pixels tall, ``market`` otherwise (the reason is in ``Recipe.why``)."""
    root = Path(data)
    if (root / SYNTHETIC_MARKER).is_file():
        return dataclasses.replace(RECIPES["synthetic"], why=f"{root} was made by the synthetic renderer")
    image = _first_image(root / "bounding_box_train")
    if image is not None:
        try:
            with Image.open(image) as im:
                width, height = im.size
        except OSError:
            height = width = 0
        if 0 < height <= 64:
            return dataclasses.replace(RECIPES["synthetic"], why=f"its train images are {height}x{width}")
        if height:
            return dataclasses.replace(RECIPES["market"], why=f"its train images are {height}x{width}")
    return dataclasses.replace(RECIPES["market"], why="the default (no train image to size it by)")


def choose_recipe(name: str | None, data: str | os.PathLike[str]) -> Recipe:
    """``RECIPES[name]``, or :func:`recipe_for` the data when ``name`` is ``None`` / ``"auto"``."""
    if name in (None, "auto"):
        return recipe_for(data)
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)} or auto")
    return dataclasses.replace(RECIPES[name], why="chosen with --recipe")


def fill_from_recipe(args: object, recipe: Recipe, fields: dict[str, str]) -> list[str]:
    """Set every ``args.<dest>`` still ``None`` to ``recipe.<field>`` (``fields``: dest → recipe field); the
    dests taken from the recipe, so a caller can say which settings the user gave and which it chose."""
    taken = []
    for dest, field in fields.items():
        if getattr(args, dest) is None:
            setattr(args, dest, getattr(recipe, field))
            taken.append(dest)
    return taken


def probe_step_seconds(
    model_name: str, height: int, width: int, batch_size: int, *, device: str = "cpu", steps: int = 2
) -> float:
    """Seconds per re-ID training step (forward + backward + SGD) of ``model_name`` at this size, measured
    on random images after one warm-up step: the basis of the time a recipe announces."""
    import torch

    from posereid.reid_integration.torchreid_plugin import build_reid_model

    model = build_reid_model(model_name, num_classes=8, pretrained=None).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.rand(batch_size, 3, height, width, device=device)
    y = torch.arange(batch_size, device=device) % 8
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        out = model(x)
        logits = out[0] if isinstance(out, tuple) else out
        loss = torch.nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - start)
    return min(times)


__all__ = [
    "RECIPES",
    "SYNTHETIC_MARKER",
    "Recipe",
    "choose_recipe",
    "fill_from_recipe",
    "probe_step_seconds",
    "recipe_for",
]
