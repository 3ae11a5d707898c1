"""``posereid reid-gain`` and ``posereid reid-gain-compare``: the command lines of the re-ID gain protocol
(:mod:`posereid.experiments.reid_gain`) and of its comparison of runs
(:mod:`~posereid.experiments.reid_gain.compare`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from posereid.argtypes import (
    add_alias,
    add_annotation_size_arg,
    add_device_arg,
    add_guidance_arg,
    add_progress_arg,
    check_labels,
    csv_list,
    finite_float,
    keep_usage_error,
    key_value,
    non_negative_float,
    non_negative_int,
    per_image,
    positive_float,
    positive_int,
    share,
    share_or_uniform,
    unit_interval,
    usage_error,
)
from posereid.augment.sampling_settings import fill_from_own
from posereid.experiments.quality.gate import DEFAULT_PAIRS, NEAR_FLOOR_MARGIN
from posereid.experiments.reid_gain.compare import compare_table, distinct_labels, load_run, write_comparison
from posereid.experiments.reid_gain.config import (
    ARMS,
    NOISE_ARM,
    ORACLE_ARM,
    SOFT_ARM,
    GainConfig,
    GainOutOfTimeError,
    parse_fractions,
)
from posereid.experiments.reid_gain.gate import GainGate, GeneratorGateError
from posereid.experiments.reid_gain.protocol import run_gain
from posereid.experiments.reid_gain.report import markdown_table, summarize
from posereid.models.checkpoint import read_json
from posereid.models.contract import FAMILIES
from posereid.models.few_step import FEW_STEP, FEW_STEP_FOLDER
from posereid.reid_integration.recipes import (
    RECIPES,
    Recipe,
    choose_recipe,
    fill_from_recipe,
    probe_step_seconds,
)
from posereid.reid_integration.soft_settings import soft_weight_arg


def add_reid_gain_args(parser: argparse.ArgumentParser) -> None:
    """Add the ``posereid reid-gain`` options (defaults: those of :class:`GainConfig`) to ``parser``."""
    d = GainConfig(data=Path("."), out=Path("."))
    parser.add_argument("--data", required=True, help="Market-1501-format folder")
    parser.add_argument(
        "--recipe", choices=("auto", *RECIPES), default="auto",
        help="settings sized to the data (auto: synthetic for the renderer's 64x32 people, market otherwise); "
        "it fills every re-ID, generator and sampling option below that is not given, and is printed at start",
    )  # fmt: skip
    parser.add_argument("--annotations", help="PATN CSV of the train images (default: found next to --data)")
    parser.add_argument("--out", required=True, help="output folder (results.csv/.md/.png + work/ cache)")
    parser.add_argument(
        "--fractions",
        type=parse_fractions,
        default=d.fractions,
        help="kept fractions, e.g. 0.2,0.4 or 20%%,40%% (default: 20..100%%)",
    )
    parser.add_argument(
        "--arms",
        type=csv_list(str),
        default=d.arms,
        help=f"comma list from {', '.join(ARMS)} (default: {','.join(d.arms)}); {ORACLE_ARM} (real renders of "
        "the train identities in the views the train split hides: the ceiling) needs a synth-market dataset; "
        f"{NOISE_ARM} (pixel noise with each kept image's colours, as many as the synthetic images: the floor); "
        f"{SOFT_ARM} (strong+synthetic with the soft labels of the same seed's strong cell model) needs strong; "
        "strong+noise+soft and strong+noise+filtered: the floor's images with the soft labels / the filter",
    )
    parser.add_argument(
        "--seeds",
        type=csv_list(non_negative_int),
        default=d.seeds,
        help=f"re-ID seeds (default: {','.join(map(str, d.seeds))}: with fewer than five, the report's paired "
        "95 %% intervals are rarely narrow enough to settle a gain)",
    )
    parser.add_argument("--subset-seed", type=int, default=d.subset_seed, help="seed of the subset choice")
    parser.add_argument(
        "--reid-steps",
        type=positive_int,
        default=None,
        help="optimisation steps of EVERY run (default: the recipe's)",
    )
    parser.add_argument("--reid-model", default=None, help="torchreid model name (default: the recipe's)")
    parser.add_argument("--reid-batch-size", type=positive_int, default=None)
    parser.add_argument("--reid-lr", type=positive_float, default=None)
    parser.add_argument(
        "--generator-family", default=d.generator_family, choices=sorted(FAMILIES),
        help="family of the generators the protocol trains",
    )  # fmt: skip
    parser.add_argument(
        "--generator-preset",
        default=None,
        help="a preset of that family (tiny|small|market|...; default: the recipe's)",
    )
    parser.add_argument(
        "--generator-option", type=key_value, action="append", default=[], metavar="KEY=VALUE",
        help="override a field of the preset (repeatable), e.g. prediction_type=v_prediction",
    )  # fmt: skip
    parser.add_argument("--generator-steps", type=positive_int, default=None)
    parser.add_argument("--generator-batch-size", type=positive_int, default=d.generator_batch_size)
    parser.add_argument("--generator-lr", type=positive_float, default=d.generator_lr)
    parser.add_argument("--generator", help="reuse this generator checkpoint for every fraction")
    parser.add_argument(
        "--generator-data",
        choices=("kept", "full"),
        default=d.generator_data,
        help="train the generator on the kept fraction only (default) or on all train images",
    )
    parser.add_argument(
        "--generator-identity-weight", type=non_negative_float, default=d.generator_identity_weight,
        metavar="W",
        help="train the protocol's generators with the identity loss of this weight (train-generator "
        "--identity-model) against a strong re-ID model of the kept images only (no leakage), seeded apart from "
        "the gate's and filter's; 0 (default): none",
    )  # fmt: skip
    parser.add_argument(
        "--per-image", type=per_image, default=d.per_image, help="synthetic images per kept image (1-100)"
    )
    parser.add_argument(
        "--synthetic-ratio",
        type=share,
        default=None,
        metavar="R",
        help="share of synthetic images in the synthetic arms' batches (default: uniform over all images)",
    )
    parser.add_argument(
        "--soft-synthetic-ratio", type=share_or_uniform, default=d.soft_synthetic_ratio, metavar="R|uniform",
        help=f"the same share for the soft-label arms (default {d.soft_synthetic_ratio}: with half of each batch "
        "synthetic, soft labels left noise images settled below strong)",
    )  # fmt: skip
    parser.add_argument("--sampler", default=None, help="diffusion sampler (dpmsolver++, ddim, unipc, …)")
    parser.add_argument("--steps", type=positive_int, default=None, help="sampling steps")
    add_guidance_arg(parser, what="the synthetic images (default: the recipe's)")
    parser.set_defaults(guidance=None)
    parser.add_argument("--pose-sampling", choices=("uniform", "cluster", "view"), default=None)
    parser.add_argument("--gen-batch-size", type=positive_int, default=d.gen_batch_size)
    add_annotation_size_arg(parser)
    add_alias(
        parser, "--annotation-hw", "--annotation-size HxW", dest="annotation_size", type=positive_int, nargs=2,
        metavar=("H", "W"), convert=lambda hw, _ns: tuple(hw),
    )  # fmt: skip
    parser.add_argument(
        "--filter-checkpoint", help="re-ID checkpoint for the strong+synthetic+filtered arm, or 'auto'"
    )
    parser.add_argument("--filter-score", choices=("similarity", "margin"), default=d.filter_score)
    parser.add_argument("--filter-threshold", type=finite_float, default=d.filter_threshold)
    parser.add_argument(
        "--soft-weight", type=soft_weight_arg, default=d.soft_weight, metavar="W",
        help=f"{SOFT_ARM}: share of the teacher's soft term in a synthetic image's loss, in [0, 1] (1 - W: its "
        "hard source-pid label), or 'agree': the hard label alone where the teacher's most probable identity is "
        "the source pid, the teacher's soft label alone elsewhere",
    )  # fmt: skip
    parser.add_argument(
        "--soft-temperature", type=positive_float, default=d.soft_temperature, metavar="T",
        help=f"{SOFT_ARM}: softmax temperature of the teacher and the student in the soft term",
    )  # fmt: skip
    parser.add_argument(
        "--height", type=positive_int, default=None, help="re-ID image height (default: the recipe's)"
    )
    parser.add_argument(
        "--width", type=positive_int, default=None, help="re-ID image width (default: the recipe's)"
    )
    add_device_arg(parser, default=d.device)
    parser.add_argument("--workers", type=int, default=d.num_workers, help="data loader workers")
    add_progress_arg(parser)
    parser.add_argument(
        "--max-minutes", type=positive_float, default=None,
        help="stop after this many wall minutes (no new cell; a generator training checkpoints), exit code 3; "
        "the same command again continues",
    )  # fmt: skip
    parser.add_argument(
        "--force", action="store_true",
        help="train the strong+synthetic arms even when the generator gate finds the generator near the floor on "
        "the kept images (the gate runs once before them, prints its verdict and records it in OUT/gate.json; "
        "without --force a near-floor verdict stops the run with exit code 4)",
    )  # fmt: skip
    parser.add_argument(
        "--gate-pairs", type=positive_int, default=DEFAULT_PAIRS, metavar="N",
        help=f"held-out pairs of kept images the generator gate scores (default: {DEFAULT_PAIRS})",
    )  # fmt: skip
    parser.add_argument(
        "--gate-margin", type=unit_interval, default=NEAR_FLOOR_MARGIN, metavar="M",
        help="the gate's near-floor margin: a generator whose identity score is within M of the floor-to-ceiling "
        f"gap above the floor is near-floor (default: {NEAR_FLOOR_MARGIN:g})",
    )  # fmt: skip
    parser.add_argument(
        "--baselines-from", metavar="DIR",
        help="read the baseline, oracle and floor cells from this earlier reid-gain --out (same data, subset and re-ID "
        "settings) instead of training them again: compares another generator on the same baseline models",
    )  # fmt: skip


#: reid-gain option (its dest) → the recipe field that fills it when the option is left out
RECIPE_FIELDS = {
    "reid_model": "reid_model", "height": "height", "width": "width", "reid_steps": "reid_steps",
    "reid_batch_size": "reid_batch_size", "reid_lr": "reid_lr", "generator_preset": "generator_preset",
    "generator_steps": "generator_steps", "sampler": "sampler", "steps": "steps", "guidance": "guidance",
    "pose_sampling": "pose_sampling",
}  # fmt: skip


def apply_recipe(args: argparse.Namespace) -> tuple[Recipe, list[str]]:
    """Fill the options left out from ``--recipe`` (or the recipe the data calls for); returns the recipe and
    the options it set."""
    recipe = choose_recipe(getattr(args, "recipe", None), args.data)
    return recipe, fill_from_recipe(args, recipe, RECIPE_FIELDS)


def announce_recipe(recipe: Recipe, taken: list[str], device: str, *, probe: bool = True) -> None:
    """Print the recipe, what it implies, which options it set, and an estimated time per re-ID run."""
    print(f"recipe {recipe.name} ({recipe.why}): {recipe.describe()}")
    if taken:
        print(
            f"  from the recipe: {', '.join('--' + t.replace('_', '-') for t in taken)}; give one to change it"
        )
    if probe:
        try:
            per_step = probe_step_seconds(
                recipe.reid_model, recipe.height, recipe.width, recipe.reid_batch_size, device=device
            )
        except Exception as err:  # a probe that fails must not stop the run: say so and go on
            print(f"  (no time estimate: the probe failed: {err})")
        else:
            print(f"  about {per_step * recipe.reid_steps / 60:.1f} min per re-ID run on {device} "
                  f"({per_step:.3f} s per step measured on 2 steps; evaluation and generation come on top)")  # fmt: skip


def checkpoint_sampling(args: argparse.Namespace) -> list[str]:
    """Fill ``--sampler`` / ``--steps`` / ``--guidance`` left out from a few-step ``--generator``'s own
    sampler (its ``few_step/`` config: the few-step sampler at its default step count, guidance folded in),
    before the recipe fills the rest; returns the options it set (none for any other generator, and none
    when another ``--sampler`` is named: that sampler's options are the recipe's)."""
    generator = getattr(args, "generator", None)
    config = Path(generator) / FEW_STEP_FOLDER / "config.json" if generator is not None else None
    if config is None or not config.is_file():
        return []
    defaults = {"sampler": FEW_STEP, "steps": int(read_json(config)["default_steps"]), "guidance": (1.0, 1.0)}
    asked = {name: getattr(args, name, None) for name in defaults}
    filled = fill_from_own(defaults, **asked)  # another sampler named: its options are the recipe's
    taken = [name for name in defaults if asked[name] is None and filled[name] is not None]
    for name in taken:
        setattr(args, name, filled[name])
    if taken:
        print(f"{generator} is a few-step checkpoint: {', '.join('--' + t for t in taken)} from it "
              f"({defaults['sampler']}, {defaults['steps']} step(s), guidance folded in)")  # fmt: skip
    return taken


def config_from_args(args: argparse.Namespace) -> GainConfig:
    """A :class:`GainConfig` from parsed ``posereid reid-gain`` arguments (a few-step generator's sampling,
    :func:`checkpoint_sampling`, then the recipe: see :func:`apply_recipe`)."""
    checkpoint_sampling(args)
    if any(getattr(args, dest, None) is None for dest in RECIPE_FIELDS):
        apply_recipe(args)
    guidance = tuple(args.guidance)
    return GainConfig(
        data=Path(args.data), out=Path(args.out), annotations=args.annotations, fractions=args.fractions,
        arms=args.arms, seeds=args.seeds, subset_seed=args.subset_seed, reid_steps=args.reid_steps,
        reid_model=args.reid_model, reid_batch_size=args.reid_batch_size, reid_lr=args.reid_lr,
        height=args.height, width=args.width, generator_family=args.generator_family,
        generator_preset=args.generator_preset, generator_options=dict(args.generator_option),
        generator_steps=args.generator_steps, generator_batch_size=args.generator_batch_size,
        generator_lr=args.generator_lr, generator=args.generator, generator_data=args.generator_data,
        generator_identity_weight=args.generator_identity_weight,
        per_image=args.per_image, synthetic_ratio=args.synthetic_ratio,
        soft_synthetic_ratio=args.soft_synthetic_ratio, sampler=args.sampler, steps=args.steps,
        guidance=guidance * 2 if len(guidance) == 1 else guidance, pose_sampling=args.pose_sampling,
        gen_batch_size=args.gen_batch_size, annotation_hw=args.annotation_size,
        filter_checkpoint=args.filter_checkpoint, filter_score=args.filter_score,
        filter_threshold=args.filter_threshold, soft_weight=args.soft_weight,
        soft_temperature=args.soft_temperature, device=args.device, num_workers=args.workers,
        progress=args.progress, max_minutes=args.max_minutes, baselines_from=args.baselines_from,
    )  # fmt: skip


def run_reid_gain(args: argparse.Namespace) -> int:
    """Run ``posereid reid-gain``: the recipe, the protocol (behind the generator gate), then the summary table
    and the output paths. Exit codes: 3 out of time, 4 stopped by the gate (a near-floor generator)."""
    from posereid.models.runtime import resolve_device

    checkpoint_sampling(args)
    recipe, taken = apply_recipe(args)
    reid_taken = {"reid_model", "height", "width", "reid_steps", "reid_batch_size"} & set(taken)
    announce_recipe(recipe, taken, str(resolve_device(args.device)), probe=bool(reid_taken))
    config = config_from_args(args)
    gate = GainGate(
        force=args.force, n_pairs=args.gate_pairs, near_floor_margin=args.gate_margin, report=print
    )
    try:
        rows = run_gain(config, gate=gate)
    except GainOutOfTimeError as err:
        print(f"out of time: {err}")
        return 3
    except GeneratorGateError as err:
        print(f"stopped: {err}")
        return 4
    print(markdown_table(summarize(rows)))
    for what, path in (
        ("results", config.out / "results.csv"),
        ("table", config.out / "results.md"),
        ("plot", config.out / "results.png"),
    ):
        print(f"{what:>8}: {path}")
    return 0


def add_reid_gain_compare_args(parser: argparse.ArgumentParser) -> None:
    """Add the ``posereid reid-gain-compare`` options to ``parser``."""
    parser.add_argument(
        "runs", nargs="+", help="reid-gain --out folders (the first one's baselines are the reference)"
    )
    parser.add_argument("--out", required=True, help="folder for comparison.md / comparison.png")
    parser.add_argument(
        "--labels",
        help="comma list of row labels, one per run, all different (default: from each run's settings, with "
        "the folder's name where two runs' settings read the same)",
    )
    keep_usage_error(parser)


def run_reid_gain_compare(args: argparse.Namespace) -> int:
    """Run ``posereid reid-gain-compare``: print the table and write it with its plot."""
    folders = [Path(p) for p in args.runs]
    resolved = [p.resolve() for p in folders]
    twice = next((p for i, p in enumerate(folders) if resolved[i] in resolved[:i]), None)
    if twice is not None:
        usage_error(args, f"run {twice} is given twice")
    labels: list[str | None] = [None] * len(folders)
    if args.labels is not None:
        labels = [s.strip() for s in args.labels.split(",")]
        check_labels(args, labels, len(folders), "run")
    runs = [load_run(p, label) for p, label in zip(folders, labels)]
    if args.labels is None:
        runs = distinct_labels(runs)
    paths = write_comparison(runs, Path(args.out))
    print(compare_table(runs))
    for what, path in paths.items():
        print(f"{what:>8}: {path}")
    return 0


__all__ = [
    "add_reid_gain_args",
    "add_reid_gain_compare_args",
    "checkpoint_sampling",
    "config_from_args",
    "run_reid_gain",
    "run_reid_gain_compare",
]
