"""``posereid check-generator``: the generator gate (:mod:`posereid.experiments.quality.gate`) as a command.

Run it before ``posereid generate`` (or any use of a generator on new data): it scores the generator on a
few dozen held-out pairs of the user's own images against an untrained generator of the same config (the
floor) and the real images (the ceiling), prints the verdict and, with ``--out``, writes ``gate.json``.
Exit code 0 for ``pass`` (or ``untrusted``: the judge could not tell), 4 for ``near-floor`` (what makes
``reid-gain`` stop), so a script can chain ``posereid check-generator ... && posereid generate ...``.

The re-ID judge is ``--reid-checkpoint PATH`` (a ``train-reid`` model of the same data's train images) or
``auto``: a strong-baseline model trained here on the data's train images with the data's recipe
(:mod:`posereid.reid_integration.recipes`), kept in ``OUT/reid-judge`` and reused by a rerun.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from posereid.argtypes import (
    add_annotations_arg,
    add_device_arg,
    add_guidance_arg,
    add_strict_arg,
    non_negative_int,
    positive_int,
    unit_interval,
)
from posereid.experiments.quality.gate import DEFAULT_PAIRS, NEAR_FLOOR_MARGIN, STYLE_MARGIN

#: the exit code of a near-floor verdict (the same as a ``reid-gain`` stopped by the gate)
NEAR_FLOOR_EXIT = 4
#: the file the verdict is written to in ``--out``
GATE_JSON = "gate.json"


def add_check_generator_args(parser: argparse.ArgumentParser) -> None:
    """Options of ``posereid check-generator``."""
    parser.add_argument("--generator", required=True, help="generator checkpoint directory (save_pretrained)")
    parser.add_argument("--data", required=True, help="your Market-1501-format folder")
    add_annotations_arg(parser)
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
        "--steps", type=positive_int, default=None, help="sampling steps (default: the recipe's)"
    )
    parser.add_argument("--sampler", default=None, help="diffusion sampler (default: the recipe's)")
    add_guidance_arg(parser, what="the scored images (default: the recipe's)")
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


def _auto_judge(data: Path, out: Path, device: str) -> Path:
    """A strong-baseline re-ID model of ``data``'s train images (the data's recipe), trained once into
    ``out/reid-judge``."""
    from posereid.reid_integration.recipes import choose_recipe
    from posereid.reid_integration.train import ReidTrainConfig, train_reid

    ckpt = out / "reid-judge" / "model.safetensors"
    if ckpt.is_file():
        return ckpt
    r = choose_recipe(None, data)
    print(f"check-generator: training the re-ID judge on {data}'s train images ({r.reid_model}, {r.reid_steps} "
          f"steps; recipe {r.name}) → {ckpt.parent}")  # fmt: skip
    cfg = ReidTrainConfig(
        data=str(data), model=r.reid_model, steps=r.reid_steps, batch_size=r.reid_batch_size, lr=r.reid_lr,
        height=r.height, width=r.width, augment="strong", out=str(ckpt.parent), device=device,
    )  # fmt: skip
    train_reid(cfg, progress=False)
    return ckpt


def run_check_generator(args: argparse.Namespace) -> int:
    """CLI entry: resolve the judge, run the gate, print the verdict, write ``gate.json`` with ``--out``."""
    from posereid.experiments.quality.gate import gate_generator, write_gate_json
    from posereid.models.contract import load_generator
    from posereid.models.runtime import resolve_device
    from posereid.reid_integration.recipes import choose_recipe

    data, out = Path(args.data), None if args.out is None else Path(args.out)
    device = str(resolve_device(args.device))
    recipe = choose_recipe(None, data)
    steps = args.steps or recipe.steps
    sampler = args.sampler or recipe.sampler
    guidance = tuple(args.guidance) if args.guidance is not None else recipe.guidance
    if args.reid_checkpoint == "auto":
        if out is None:
            raise ValueError(
                "--reid-checkpoint auto trains the re-ID judge into --out; give --out or a checkpoint"
            )
        judge = _auto_judge(data, out, device)
    else:
        judge = Path(args.reid_checkpoint)
    generator = load_generator(args.generator, device=device)
    result = gate_generator(
        generator, data, judge, annotations=args.annotations, split=args.split, n_pairs=args.n_pairs, steps=steps,
        sampler=sampler, guidance=guidance, seed=args.seed, near_floor_margin=args.gate_margin,
        style_margin=args.style_margin, strict=args.strict,
    )  # fmt: skip
    print(result.describe())
    if out is not None:
        path = write_gate_json(
            out / GATE_JSON, result, generator_checkpoint=str(args.generator), reid_checkpoint=str(judge)
        )
        print(f"verdict: {path}")
    return NEAR_FLOOR_EXIT if result.near_floor else 0


__all__ = ["GATE_JSON", "NEAR_FLOOR_EXIT", "add_check_generator_args", "run_check_generator"]
