"""``posereid check-generator``: the generator gate (:mod:`posereid.experiments.quality.gate`) as a command.

Run it before ``posereid generate`` (or any use of a generator on new data): it scores the generator on a
few dozen held-out pairs of the user's own images against an untrained generator of the same config (the
floor) and the real images (the ceiling), prints the verdict and, with ``--out``, writes ``gate.json``.
Exit code 0 for ``pass`` (or ``untrusted``: the judge could not tell), 4 for ``near-floor`` (what makes
``reid-gain`` stop), so a script can chain ``posereid check-generator ... && posereid generate ...``;
``posereid generate --check`` runs the same :func:`check_generator` itself (from the console script, since
:mod:`posereid.augment` may not import this package) and generates nothing on a near-floor verdict.

The re-ID judge is ``--reid-checkpoint PATH`` (a ``train-reid`` model of the same data's train images) or
``auto``: a strong-baseline model trained here on the data's train images with the data's recipe
(:mod:`posereid.reid_integration.recipes`), kept in ``OUT/reid-judge`` and reused by a rerun.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from posereid.argtypes import (
    add_annotation_size_arg,
    add_annotations_arg,
    add_device_arg,
    add_guidance_arg,
    add_strict_arg,
    non_negative_int,
    positive_int,
    unit_interval,
)
from posereid.experiments.quality.gate import DEFAULT_PAIRS, NEAR_FLOOR_MARGIN, STYLE_MARGIN, Split

if TYPE_CHECKING:
    from posereid.experiments.quality.gate import GateResult

#: the exit code of a near-floor verdict (the same as a ``reid-gain`` stopped by the gate)
NEAR_FLOOR_EXIT = 4
#: the file the verdict is written to in ``--out``
GATE_JSON = "gate.json"


def add_check_generator_args(parser: argparse.ArgumentParser) -> None:
    """Options of ``posereid check-generator``."""
    parser.add_argument("--generator", required=True, help="generator checkpoint directory (save_pretrained)")
    parser.add_argument("--data", required=True, help="your Market-1501-format folder")
    add_annotations_arg(parser)
    add_annotation_size_arg(parser, what="--annotations")
    parser.add_argument(
        "--split", choices=("train", "test"), default="train",
        help="whose images are paired: train (default: the images you augment; nothing of the test split is "
        "read) or test (query + gallery, as evaluate-generator scores)",
    )  # fmt: skip
    parser.add_argument(
        "--reid-checkpoint", default="auto", metavar="PATH|auto",
        help="the re-ID judge: a train-reid checkpoint of this data's train images, or auto (default): train a "
        "strong baseline on them with the data's recipe into OUT/reid-judge (needs --out)",
    )  # fmt: skip
    parser.add_argument(
        "--n-pairs", type=positive_int, default=DEFAULT_PAIRS, help="held-out pairs to score (seeded draw)"
    )
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="sampling steps (default: reid-gain's: a few-step checkpoint's own, else the recipe's)",
    )
    parser.add_argument("--sampler", default=None, help="diffusion sampler (default: as --steps)")
    add_guidance_arg(parser, what="the scored images (default: as --steps)")
    parser.set_defaults(guidance=None)
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of the pair draw and the noise"
    )
    parser.add_argument(
        "--gate-margin", type=unit_interval, default=NEAR_FLOOR_MARGIN, metavar="M",
        help="near-floor when the identity score is within M of the floor-to-ceiling gap above the floor "
        f"(default: {NEAR_FLOOR_MARGIN:g})",
    )  # fmt: skip
    parser.add_argument(
        "--style-margin", type=unit_interval, default=STYLE_MARGIN, metavar="S",
        help=f"flag the style when the realism position is above S (default: {STYLE_MARGIN:g})",
    )  # fmt: skip
    add_device_arg(parser)
    parser.add_argument(
        "--out", help=f"folder for {GATE_JSON} (and the auto re-ID judge); default: print only"
    )
    add_strict_arg(parser)


def _auto_judge(data: Path, out: Path, device: str, command: str = "check-generator") -> Path:
    """A strong-baseline re-ID model of ``data``'s train images (the data's recipe), trained once into
    ``out/reid-judge``."""
    from posereid.reid_integration.recipes import choose_recipe
    from posereid.reid_integration.train import ReidTrainConfig, train_reid

    ckpt = out / "reid-judge" / "model.safetensors"
    if ckpt.is_file():
        return ckpt
    r = choose_recipe(None, data)
    print(f"{command}: training the re-ID judge on {data}'s train images ({r.reid_model}, {r.reid_steps} "
          f"steps; recipe {r.name}) → {ckpt.parent}")  # fmt: skip
    cfg = ReidTrainConfig(
        data=str(data), model=r.reid_model, steps=r.reid_steps, batch_size=r.reid_batch_size, lr=r.reid_lr,
        height=r.height, width=r.width, augment="strong", out=str(ckpt.parent), device=device,
    )  # fmt: skip
    train_reid(cfg, progress=False)
    return ckpt


#: where ``check_generator`` takes the sampling options left out (``None``) from
SamplingDefaults = Literal["recipe", "checkpoint"]


def check_generator(
    generator: str | os.PathLike[str],
    data: str | os.PathLike[str],
    *,
    reid_checkpoint: str | os.PathLike[str] = "auto",
    out: str | os.PathLike[str] | None = None,
    annotations: str | os.PathLike[str] | None = None,
    split: Split = "train",
    n_pairs: int = DEFAULT_PAIRS,
    steps: int | None = None,
    sampler: str | None = None,
    guidance: tuple[float, float] | None = None,
    sampling_defaults: SamplingDefaults = "recipe",
    refiner: str | os.PathLike[str] | None = None,
    refiner_steps: int = 20,
    seed: int = 0,
    near_floor_margin: float = NEAR_FLOOR_MARGIN,
    style_margin: float = STYLE_MARGIN,
    device: str = "auto",
    strict: bool = False,
    command: str = "check-generator",
    annotation_hw: tuple[int, int] | None = None,
) -> GateResult:
    """The gate as the commands run it (``check-generator`` and ``generate --check``, one code path): resolve
    the re-ID judge (``"auto"`` trains one into ``out/reid-judge``) and the sampling setting, load the
    generator (+ ``refiner``), score it (:func:`~posereid.experiments.quality.gate.gate_generator`), print
    the verdict and, with ``out``, write ``out/gate.json``.

    ``steps`` / ``sampler`` / ``guidance`` left out come from ``sampling_defaults``: ``"recipe"`` (what
    ``reid-gain`` samples with: a few-step checkpoint's own setting, else the data's recipe; ``check-generator``) or ``"checkpoint"`` (the checkpoint's own
    setting, :func:`~posereid.augment.sampling_settings.resolve_sampling`: what ``generate`` samples with).
    ``command`` names the caller in what is printed. ``annotation_hw``: the ``(H, W)`` frame of the annotation
    CSV's coordinates (``--annotation-size``; ``None``: the images' own size).
    """
    from posereid.augment.sampling_settings import refiner_sampler, resolve_sampling
    from posereid.experiments.quality.gate import gate_generator, recipe_sampling, write_gate_json
    from posereid.models.refine import load_sampler
    from posereid.models.runtime import resolve_device

    if sampling_defaults not in ("recipe", "checkpoint"):
        raise ValueError(f"sampling_defaults {sampling_defaults!r}: choose recipe or checkpoint")
    data, out = Path(data), None if out is None else Path(out)
    device = str(resolve_device(device))
    if str(reid_checkpoint) == "auto":
        if out is None:
            raise ValueError(
                "the auto re-ID judge is trained into an output folder; give one or a checkpoint"
            )
        judge = _auto_judge(data, out, device, command)
    else:
        judge = Path(reid_checkpoint)
    model = load_sampler(
        generator,
        device=device,
        refiner=refiner,
        refiner_steps=refiner_steps,
        sampler=refiner_sampler(sampler),
    )
    if sampling_defaults == "checkpoint":
        setting = resolve_sampling(model, steps=steps, sampler=sampler, guidance=guidance)
    else:  # reid-gain's rule: a few-step checkpoint's own setting, then the recipe, for each option left out
        setting = recipe_sampling(model, data, steps, sampler, guidance)
    result = gate_generator(
        model, data, judge, annotations=annotations, split=split, n_pairs=n_pairs, steps=setting["steps"],
        sampler=setting["sampler"], guidance=setting["guidance"], seed=seed, near_floor_margin=near_floor_margin,
        style_margin=style_margin, strict=strict, annotation_hw=annotation_hw,
    )  # fmt: skip
    print(result.describe())
    if out is not None:
        path = write_gate_json(
            out / GATE_JSON, result, generator_checkpoint=str(generator), reid_checkpoint=str(judge),
            **({"refiner_checkpoint": str(refiner)} if refiner is not None else {}),
        )  # fmt: skip
        print(f"verdict: {path}")
    return result


def exit_code(result: GateResult) -> int:
    """The commands' exit code for a verdict: :data:`NEAR_FLOOR_EXIT` for ``near-floor``, else 0."""
    return NEAR_FLOOR_EXIT if result.near_floor else 0


def run_check_generator(args: argparse.Namespace) -> int:
    """CLI entry: :func:`check_generator` with the parsed options (sampling left out: reid-gain's)."""
    if args.reid_checkpoint == "auto" and args.out is None:
        raise ValueError(
            "--reid-checkpoint auto trains the re-ID judge into --out; give --out or a checkpoint"
        )
    result = check_generator(
        args.generator, args.data, reid_checkpoint=args.reid_checkpoint, out=args.out, annotations=args.annotations,
        split=args.split, n_pairs=args.n_pairs, steps=args.steps, sampler=args.sampler,
        guidance=None if args.guidance is None else tuple(args.guidance), sampling_defaults="recipe",
        seed=args.seed, near_floor_margin=args.gate_margin, style_margin=args.style_margin, device=args.device,
        strict=args.strict, annotation_hw=args.annotation_size,
    )  # fmt: skip
    return exit_code(result)


__all__ = [
    "GATE_JSON",
    "NEAR_FLOOR_EXIT",
    "SamplingDefaults",
    "add_check_generator_args",
    "check_generator",
    "exit_code",
    "run_check_generator",
]
