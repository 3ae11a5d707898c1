"""``posereid train-generator`` and ``posereid sample``: train a pose-transfer generator (any family) on a
Market-1501 folder with PATN keypoints, and draw samples from a trained one.

The keypoints' frame is the size of the images the CSV annotates (128x64 for Market-1501); pass
``--annotation-size HxW`` when the CSV uses another frame. A keypoint outside the frame skips its row.

A multi-stage family (PCDMs: ``TRAINING_STAGES`` inpaint → prior → refine) trains stage by stage
(``--stage``, default all): each stage goes through the same training loop into ``OUT/<stage>/``, starts
from the previous stage's ``final/`` and the last one is copied to ``OUT/final``. A rerun skips the stages
that finished, so ``--max-minutes`` + rerun resumes the whole sequence.

A run that ``--max-minutes`` stops before its last step writes no ``final/`` and exits with code 3 (as
``reid-gain``), so ``train-generator … && generate …`` never uses an unfinished model; the same command
again resumes it. A resume must use the settings and the training data of the checkpoint (the data's
fingerprint is kept in ``train_config.json`` and each checkpoint).

The model flags (:data:`MODEL_FLAGS`: ``--image-size``, ``--prediction-type``, ``--zero-snr``,
``--snr-gamma``, ``--p-drop-source-pose``, ``--reference-attention``) shape a fresh model only: with
``--init`` (or a stage's start, a few-step teacher) the checkpoint's settings stand and a flag given with
another value is refused; a resume must find the checkpoint's values in the model it resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from PIL import Image

from posereid import argtypes
from posereid.argtypes import (
    add_annotation_size_arg,
    add_strict_arg,
    finite_float,
    hw,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from posereid.experiments.data import market_pose_records
from posereid.experiments.identity_loss import DEFAULT_IDENTITY_WEIGHT, IdentityLoss
from posereid.models.checkpoint import CONFIG_NAME, SCHEDULER_CONFIG_NAME, read_json
from posereid.models.contract import FAMILIES, checkpoint_family, family_class, load_generator
from posereid.models.images import pil_to_tensor01
from posereid.models.io_utils import atomic_save
from posereid.models.pipeline import init_fields, load_scheduler
from posereid.models.pose import resize_keypoints, skeleton_tensor
from posereid.models.runtime import resolve_device
from posereid.models.sampling import SAMPLERS, prediction_type
from posereid.models.training import (
    PosePairDataset,
    TrainConfig,
    TrainResult,
    list_checkpoints,
    stage_done,
    train_generator,
    train_stages,
)
from posereid.reid_integration.market1501 import (
    find_annotations,
    load_annotations,
    load_image,
    read_pairs_csv,
)
from posereid.reid_integration.recipes import RECIPES, choose_recipe, fill_from_recipe

logger = logging.getLogger(__name__)


#: the model config field ``--reference-attention`` sets (PIDM's and CFLD's models have it)
REFERENCE_FIELD = "reference_attention"


@dataclasses.dataclass(frozen=True)
class ModelFlag:
    """A train-generator flag that sets a field of a fresh model (or its training scheduler): after
    ``--init`` or on a resume the checkpoint's value stands, so a given flag must agree with it.

    Args:
        flag: the option, e.g. ``--prediction-type`` (its ``argparse`` default is ``None``: not given).
        field: the config field it sets (a model's, every part that has it; or the scheduler's).
        schedule: the field lives in the main training scheduler's config, not the models'.
        normalize: a value as compared (a flag's and a config's alike, e.g. a JSON list → a tuple).
    """

    flag: str
    field: str
    schedule: bool = False
    normalize: Callable[[Any], Any] = lambda v: v

    def given(self, args: argparse.Namespace) -> Any:
        """The value the command gave (normalized), or ``None`` when the flag was left out."""
        value = getattr(args, self.flag.removeprefix("--").replace("-", "_"))
        return None if value is None else self.normalize(value)


def _size(value: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in value)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


#: the flags that set a fresh model's fields (:func:`_preset_model`); checked against ``--init`` and a resume
MODEL_FLAGS = (
    ModelFlag("--image-size", "image_size", normalize=_size),
    ModelFlag("--prediction-type", "prediction_type", schedule=True, normalize=str),
    ModelFlag("--zero-snr", "rescale_betas_zero_snr", schedule=True, normalize=bool),
    ModelFlag("--snr-gamma", "snr_gamma", normalize=_optional_float),
    ModelFlag("--p-drop-source-pose", "p_drop_source_pose", normalize=_optional_float),
    ModelFlag("--reference-attention", REFERENCE_FIELD, normalize=bool),
)


def _presets() -> list[str]:
    return sorted({p for f in FAMILIES for p in family_class(f).PRESETS})


def _stages() -> list[str]:
    """Every training stage of a multi-stage family (``TRAINING_STAGES``), in their families' order."""
    found: list[str] = []
    for f in FAMILIES:
        found += [s for s in family_class(f).TRAINING_STAGES if s not in found]
    return found


def _stage_steps(text: str) -> tuple[int, ...]:
    """``A,B,C``: steps of each training stage, in the family's stage order (e.g. inpaint,prior,refine)."""
    try:
        steps = tuple(positive_int(part) for part in text.split(","))
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated step counts, each {err}") from err
    return steps


# --------------------------------------------------------------------------------------------------
# train-generator
# --------------------------------------------------------------------------------------------------
def add_train_generator_args(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p = parser.add_argument
    p("--data", required=True, type=Path, help="Market-1501 folder (uses bounding_box_train)")
    argtypes.add_annotations_arg(parser)
    p(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: accelerate's choice (every GPU under accelerate launch), else cpu or cuda",
    )
    p("--pairs", type=Path, help="PATN pairs CSV (from,to); default: all same-identity pairs, on the fly")
    p("--family", default="pidm", choices=sorted(FAMILIES), help="generator family")
    p(
        "--recipe",
        choices=("auto", *RECIPES),
        default="auto",
        help="sizes fitting the data (auto: synthetic for the renderer's 64x32 people, market otherwise): "
        "fills --preset and --steps when they are not given, and is printed at start",
    )
    p(
        "--preset",
        default=None,
        choices=_presets(),
        help="model size (of the chosen family; default: the recipe's)",
    )
    p("--image-size", type=hw, help="override the preset's HxW, e.g. 64x32")
    p(
        "--prediction-type",
        choices=("epsilon", "v_prediction", "flow"),
        help="override the preset's prediction target (v_prediction learns faster at small scale; flow: "
        "flow matching / rectified flow, sampled with euler, dpmsolver++ or unipc)",
    )
    p(
        "--zero-snr",
        action="store_true",
        default=None,
        help="zero terminal SNR schedule (needs --prediction-type v_prediction)",
    )
    p("--snr-gamma", type=positive_float, help="min-SNR-gamma loss weighting, e.g. 5 (default: plain MSE)")
    p(
        "--p-drop-source-pose",
        type=finite_float,
        help="share of training samples whose appearance encoder gets no source pose (default: the preset's)",
    )
    p(
        "--reference-attention",
        action="store_true",
        default=None,
        help="pidm, cfld: every UNet self-attention layer also attends to the source's features of its "
        "resolution (the model's reference_attention field; default: the preset's, or --init's)",
    )
    p("--init", type=Path, help="start from this generator directory (fine-tuning) instead of a preset")
    p(
        "--stage",
        choices=(*_stages(), "all"),
        help="multi-stage families (pcdms): the stage to train, or all in order (default: all); each goes to "
        "OUT/<stage>/ and starts from the previous stage's final/ (or --init)",
    )
    p(
        "--stage-steps",
        type=_stage_steps,
        help="multi-stage families: steps per stage in stage order, e.g. 20000,10000,10000 for "
        "inpaint,prior,refine (default: --steps each)",
    )
    p("--out", required=True, type=Path, help="output directory (checkpoints, samples, log, final/)")
    p("--steps", type=positive_int, default=None, help="training steps (default: the recipe's)")
    p(
        "--identity-model",
        type=Path,
        default=None,
        metavar="REID_CKPT",
        help="a posereid re-ID checkpoint (train-reid on the SAME training images: no leakage) whose features "
        "of the predicted clean image are pulled towards the target's (the identity loss)",
    )
    p(
        "--identity-weight",
        type=non_negative_float,
        default=DEFAULT_IDENTITY_WEIGHT,
        help="weight of the identity loss",
    )
    p(
        "--few-step-from",
        type=Path,
        default=None,
        metavar="TEACHER",
        help="fine-tune the trained flow generator TEACHER into a few-step one (1, 2 or 4 network calls per "
        "image, guidance folded in): the teacher's sampling trajectories on this data are recorded in "
        "OUT/trajectories (resumable), then the student learns their jumps (posereid.models.few_step)",
    )
    p(
        "--few-step-trajectories",
        type=positive_int,
        default=512,
        help="teacher trajectories to record and train on (each costs one 20-step guided sample)",
    )
    p(
        "--few-step-steps",
        type=_step_counts,
        default=(1, 2, 4),
        help="the step counts the few-step sampler is trained for, e.g. 1,2,4 (the first is the default)",
    )
    p("--batch-size", type=positive_int, default=d.batch_size, help="per process")
    p("--lr", type=positive_float, default=d.lr)
    p("--weight-decay", type=finite_float, default=d.weight_decay)
    p("--warmup-steps", type=non_negative_int, default=d.warmup_steps)
    p("--lr-schedule", default=d.lr_schedule, choices=("cosine", "linear", "constant"))
    p("--grad-accum", type=positive_int, default=d.grad_accum, help="micro-batches per optimizer step")
    p("--mixed-precision", default=d.mixed_precision, choices=("no", "fp16", "bf16"))
    p("--ema-decay", type=finite_float, default=d.ema_decay)
    p(
        "--checkpoint-every",
        type=non_negative_int,
        default=d.checkpoint_every,
        help="steps (0: only at the end)",
    )
    p("--keep-checkpoints", type=non_negative_int, default=d.keep_checkpoints)
    p(
        "--sample-every",
        type=non_negative_int,
        default=d.sample_every,
        help="steps between sample grids (0: none)",
    )
    p("--log-every", type=positive_int, default=d.log_every)
    p("--seed", type=non_negative_int, default=d.seed)
    p("--num-workers", type=non_negative_int, default=d.num_workers, help="data loader workers")
    p(
        "--max-minutes",
        type=positive_float,
        default=None,
        help="wall-clock budget: checkpoint and stop when it runs out, without final/, exit code 3 (the same "
        "command again resumes)",
    )
    p("--min-joints", type=non_negative_int, default=7, help="skip images with fewer visible keypoints")
    add_annotation_size_arg(parser)
    add_strict_arg(parser)
    p("--singletons", default="skip", choices=("skip", "self"), help="identities with one image")
    p(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue from the latest checkpoint (its settings must match; see --overwrite)",
    )
    p(
        "--overwrite",
        action="store_true",
        help="delete this command's earlier outputs in --out and start over",
    )
    p("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm progress bar")


def _step_counts(text: str) -> tuple[int, ...]:
    """``1,2,4``: step counts >= 1, the first being the default."""
    try:
        counts = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected step counts like 1,2,4, got {text!r}") from None
    if not counts or any(c < 1 for c in counts) or len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"expected distinct step counts >= 1 like 1,2,4, got {text!r}")
    return counts


def _few_step_student(args: argparse.Namespace, dataset: PosePairDataset) -> tuple[Any, Any, str]:
    """``--few-step-from``: record the teacher's trajectories on ``dataset``, then the student (the teacher's
    EMA weights + a zero-initialised step-size embedding) and the trajectory dataset it trains on."""
    from posereid.models.few_step import (
        TEACHER_SAMPLING,
        StepSizeEmbedding,
        TrajectoryDataset,
        few_step_description,
        record_trajectories,
    )

    teacher_dir, count, steps = args.few_step_from, args.few_step_trajectories, args.few_step_steps
    if args.init is not None:
        raise SystemExit("--few-step-from starts from the teacher's weights; drop --init")
    device = resolve_device(args.device)
    teacher = load_generator(teacher_dir, use_ema=True).to(device).eval()
    if getattr(teacher, "few_step", None) is not None:
        raise SystemExit(
            f"--few-step-from {teacher_dir}: already a few-step checkpoint; give its flow teacher"
        )
    folder = record_trajectories(teacher, dataset, args.out, count, seed=args.seed, progress=args.progress)
    del teacher
    student = _load_init(args, teacher_dir)
    width = int(student.denoiser().time_embedding.linear_2.out_features)
    student.enable_few_step(
        StepSizeEmbedding(
            time_embed_dim=width, steps=steps, default_steps=steps[0], guidance=TEACHER_SAMPLING["guidance"],
            teacher_steps=TEACHER_SAMPLING["steps"], teacher_sampler=TEACHER_SAMPLING["sampler"],
        )
    )  # fmt: skip
    print(f"few-step fine-tune of {teacher_dir}: {count} teacher trajectories in {folder}; "
          f"jumps for {','.join(map(str, steps))} step(s)")  # fmt: skip
    return student, TrajectoryDataset(folder, dataset, count), few_step_description(teacher_dir, count, steps)


def _identity_loss(args: argparse.Namespace) -> IdentityLoss | None:
    """``--identity-model`` / ``--identity-weight`` (``None`` without an identity model)."""
    if args.identity_model is None:
        return None
    return IdentityLoss(args.identity_model, args.identity_weight)


def _with_identity_loss(model: Any, args: argparse.Namespace) -> Any:
    """Set ``--identity-model`` / ``--identity-weight`` on a fresh or loaded pipeline (a training setting)."""
    identity = _identity_loss(args)
    if identity is None:
        return model
    model = identity.apply(model, device="cpu" if args.device == "cpu" else None)
    print(f"identity loss: {args.identity_model} (weight {args.identity_weight:g})")
    return model


def _preset_model(args: argparse.Namespace) -> Any:
    """A fresh pipeline of ``--family`` / ``--preset`` with the command's overrides (:data:`MODEL_FLAGS`)."""
    pipeline = family_class(args.family)
    if args.preset not in pipeline.PRESETS:
        raise SystemExit(
            f"--preset {args.preset}: not a {args.family} preset ({', '.join(pipeline.PRESETS)})"
        )
    overrides: dict[str, Any] = {}
    for flag in MODEL_FLAGS:
        value = flag.given(args)
        if value is not None:
            _require_field(pipeline, flag)
            overrides[flag.field] = value
    return pipeline.from_preset(args.preset, **overrides)


def _part_classes(pipeline: type) -> list[type]:
    """The model classes of a pipeline class: its main model's, then each trainable component's."""
    return [pipeline.model_class, *(c.model_class for c in pipeline.COMPONENTS.values() if c.model_class)]


def _require_field(pipeline: type, flag: ModelFlag) -> None:
    """Refuse a model ``flag`` for a family none of whose models has its field (a schedule field: every one)."""
    if flag.schedule or any(flag.field in init_fields(part) for part in _part_classes(pipeline)):
        return
    have = [f for f in FAMILIES if any(flag.field in init_fields(c) for c in _part_classes(family_class(f)))]
    raise SystemExit(
        f"{flag.flag}: the {pipeline.family} family has no {flag.field} (families with it: {', '.join(have)})"
    )


def _model_values(
    flag: ModelFlag, configs: list[Mapping[str, Any]], schedulers: list[Any]
) -> tuple[Any, ...]:
    """``flag``'s field in a model: its training schedulers' (the main one, then those that share the plain
    schedule fields, ``SHARED_SCHEDULE``), or the distinct values of the model configs ``configs`` (main model
    first, then components) that have it."""
    if flag.field == "prediction_type":
        values: list[Any] = [prediction_type(s) for s in schedulers]
    elif flag.schedule:
        values = [s.config.get(flag.field, False) for s in schedulers]
    else:
        values = [config[flag.field] for config in configs if flag.field in config]
    return tuple(dict.fromkeys(flag.normalize(v) for v in values))


def _schedulers(model: Any) -> list[Any]:
    """A loaded pipeline's training schedulers that the schedule flags set: the main one, then ``SHARED_SCHEDULE``'s."""
    parts = type(model).COMPONENTS
    found = [getattr(model, parts[name].scheduler, None) for name in type(model).SHARED_SCHEDULE]
    return [model.scheduler, *(s for s in found if s is not None)]


def _saved_schedulers(pipeline: type, directory: Path) -> list[Any]:
    """The training schedulers :func:`_schedulers` reads, from a checkpoint ``directory`` (the main one required)."""
    main = [load_scheduler(directory / pipeline.MODEL_FOLDER)]
    shared = [directory / name for name in pipeline.SHARED_SCHEDULE]
    return main + [load_scheduler(folder) for folder in shared if (folder / SCHEDULER_CONFIG_NAME).is_file()]


def _pipeline_configs(model: Any) -> list[Mapping[str, Any]]:
    """The model configs of a loaded pipeline: main model first, then each trainable component present."""
    parts = [getattr(model, c.attr) for c in type(model).COMPONENTS.values() if c.model_class]
    return [model.model.config, *(part.config for part in parts if part is not None)]


def _saved_configs(pipeline: type, directory: Path) -> list[Mapping[str, Any]]:
    """The model configs of the pipeline saved in ``directory`` (JSON only, no weights read), each field
    missing from an older file at its class's default, as loading would give it."""
    folders = {pipeline.MODEL_FOLDER: pipeline.model_class}
    folders.update({name: c.model_class for name, c in pipeline.COMPONENTS.items() if c.model_class})
    configs = []
    for folder, cls in folders.items():
        path = directory / folder / CONFIG_NAME
        if path.is_file():
            params = inspect.signature(cls.__init__).parameters.values()
            defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
            configs.append({**defaults, **read_json(path)})
    return configs


def _show(value: Any) -> str:
    """A field's value as a message shows it (``64x32`` for a size)."""
    return "x".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _show_all(values: tuple[Any, ...]) -> str:
    """A model's value(s) of a field: one, or its parts' distinct values joined with ``/``."""
    return " / ".join(map(_show, values))


def _check_model_flags(args: argparse.Namespace, model: Any, path: Path) -> None:
    """``--init`` / a stage's start ``path`` loaded as ``model``: every :data:`MODEL_FLAGS` flag the command
    gave must agree with the checkpoint (a model keeps the settings it was made with); a disagreeing one is
    refused naming the flag, ``path`` and both values, as is one whose field the family lacks."""
    configs = _pipeline_configs(model)
    for flag in MODEL_FLAGS:
        asked = flag.given(args)
        if asked is None:
            continue
        _require_field(type(model), flag)
        saved = _model_values(flag, configs, _schedulers(model))
        if saved and saved != (asked,):
            raise SystemExit(
                f"{flag.flag} asks for {flag.field} {_show(asked)}, but {path} was made with {flag.field} "
                f"{_show_all(saved)}: a trained model keeps the settings it was made with; drop {flag.flag} (the "
                "checkpoint's stands) or give its value, or start from a preset"
            )


def _check_resume(args: argparse.Namespace, model: Any, out: Path) -> None:
    """A resume from ``out``'s latest checkpoint loads its weights into ``model`` (fresh from the preset,
    ``--init``'s or ``--few-step-from``'s): refuse when a :data:`MODEL_FLAGS` field of the two differs (training would go on under
    another setting, or the weights would not fit), naming the flag, the checkpoint and both values."""
    found = list_checkpoints(out) if args.resume and not args.overwrite else []
    if not found:
        return
    directory = found[-1][1] / "model"
    main = directory / type(model).MODEL_FOLDER
    saved_configs = _saved_configs(type(model), directory)
    if not saved_configs or not (main / SCHEDULER_CONFIG_NAME).is_file():
        return  # not a checkpoint of this family: the resume itself refuses it
    saved_schedulers, now_configs = _saved_schedulers(type(model), directory), _pipeline_configs(model)
    for flag in MODEL_FLAGS:
        saved = _model_values(flag, saved_configs, saved_schedulers)
        now = _model_values(flag, now_configs, _schedulers(model))
        if saved != now:
            origin = f"from {flag.flag}" if flag.given(args) is not None else _start(args)
            raise SystemExit(
                f"{found[-1][1]}: this run was started with {flag.field} {_show_all(saved)} ({flag.flag}), now "
                f"{_show_all(now)} ({origin}); rerun with the same settings to resume, or start over "
                "(--overwrite, or a new --out)"
            )


def _start(args: argparse.Namespace) -> str:
    """Where a model's settings come from when no flag sets them (a resume's message)."""
    if args.few_step_from is not None:
        return "--few-step-from's"
    return "--init's" if args.init is not None else "the preset's"


def _load_init(args: argparse.Namespace, path: Path) -> Any:
    """The generator in ``path`` (EMA weights), in training mode, checked against the model flags given
    (:func:`_check_model_flags`: fields fixed at a model's creation, the checkpoint's stand)."""
    model = load_generator(path, use_ema=True).train()
    _check_model_flags(args, model, path)
    return model


def _train_config(args: argparse.Namespace, steps: int, few_step: str | None = None) -> TrainConfig:
    sampling = {}
    identity = _identity_loss(args)
    if few_step is not None:  # grids drawn with the sampler being trained
        sampling = {"sample_sampler": "few-step", "sample_steps": args.few_step_steps[0]}
    return TrainConfig(
        **sampling, few_step=few_step,
        steps=steps, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_steps=min(args.warmup_steps, steps), lr_schedule=args.lr_schedule,
        grad_accum=args.grad_accum, mixed_precision=args.mixed_precision, ema_decay=args.ema_decay,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints, sample_every=args.sample_every, log_every=args.log_every,
        seed=args.seed, num_workers=args.num_workers, max_minutes=args.max_minutes,
        identity_loss=identity.description() if identity is not None else None,
    )  # fmt: skip


#: exit code of a run that ``--max-minutes`` stopped before its last step (as ``reid-gain``'s): no
#: ``final/`` was written, the same command again resumes from the last checkpoint
EXIT_OUT_OF_TIME = 3


def _report(args: argparse.Namespace, result: TrainResult, config: TrainConfig, out: Path) -> None:
    print(f"trained steps {result.start_step}..{result.steps}, final loss {result.final_loss:.4f}, "
          f"{result.skipped_nonfinite} non-finite step(s) skipped")  # fmt: skip
    if result.out_of_time:
        print(f"out of time: stopped by --max-minutes {args.max_minutes:g} at step {result.steps} of "
              f"{config.steps}; the model is unfinished, so no {out / 'final'} was written (exit code "
              f"{EXIT_OUT_OF_TIME}); run the same command again to continue from {out / 'checkpoints'}")  # fmt: skip
    else:
        print(f"final model: {out / 'final'}")
    print(f"checkpoints: {out / 'checkpoints'}\n"
          f"samples:     {out / 'samples'}\nloss log:    {out / 'train_log.csv'}")  # fmt: skip


def _apply_recipe(args: argparse.Namespace) -> None:
    """Fill ``--preset`` / ``--steps`` left out from the recipe the data calls for, and say so."""
    recipe = choose_recipe(args.recipe, args.data)
    taken = fill_from_recipe(args, recipe, {"preset": "generator_preset", "steps": "generator_steps"})
    print(f"recipe {recipe.name} ({recipe.why}): generator preset {recipe.generator_preset}, "
          f"{recipe.generator_steps} steps" + (f"; from the recipe: {', '.join('--' + t for t in taken)}" if taken else ""))  # fmt: skip


def run_train_generator(args: argparse.Namespace) -> int:
    if args.preset is None or args.steps is None:
        _apply_recipe(args)
    if args.device == "cpu":  # accelerate picks CUDA when it sees one
        os.environ["ACCELERATE_USE_CPU"] = "true"
    elif args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to this process")
    records = market_pose_records(
        args.data,
        args.annotations or find_annotations(args.data),
        min_joints=args.min_joints,
        annotation_size=args.annotation_size,
        strict=args.strict,
        progress=args.progress,
    )
    set_seed(args.seed)  # the same --seed gives the same initial weights (and data order, noise, dropout)
    start = args.few_step_from if args.few_step_from is not None else args.init
    family = checkpoint_family(start) if start is not None else args.family
    stages = family_class(family).TRAINING_STAGES
    if stages and args.few_step_from is not None:
        raise SystemExit(f"--few-step-from: the {family} family trains in stages; few-step fine-tunes are for "
                         "one-model flow families (pidm, cfld)")  # fmt: skip
    if stages:
        return _train_stages(args, records, family, stages)
    if args.stage is not None or args.stage_steps is not None:
        raise ValueError(f"--stage / --stage-steps: the {family} family trains in one stage; drop them")
    pairs = read_pairs_csv(args.pairs) if args.pairs else None
    few_step = None
    if args.few_step_from is not None:
        if args.identity_model is not None:
            raise SystemExit("--identity-model: a few-step fine-tune learns the teacher's trajectories only")
        size = load_generator(args.few_step_from).image_size
        pair_data = PosePairDataset(records, size, pairs=pairs, singletons=args.singletons, seed=args.seed)
        model, dataset, few_step = _few_step_student(args, pair_data)
    else:
        model = _load_init(args, args.init) if args.init is not None else _preset_model(args)
        dataset = PosePairDataset(
            records, model.image_size, pairs=pairs, singletons=args.singletons, seed=args.seed
        )
    _check_resume(args, model, args.out)  # before any training: its settings are the checkpoint's
    model = _with_identity_loss(model, args)  # none for a few-step fine-tune (refused above)
    config = _train_config(args, args.steps, few_step)
    logger.info(
        "%d training pairs; %.2f M parameters", len(dataset), sum(p.numel() for p in model.parameters()) / 1e6
    )
    result = train_generator(
        model, dataset, config, args.out, resume=args.resume, overwrite=args.overwrite, progress=args.progress
    )
    _report(args, result, config, args.out)
    return EXIT_OUT_OF_TIME if result.out_of_time else 0


def _train_stages(args: argparse.Namespace, records: list, family: str, stages: tuple[str, ...]) -> int:
    """Train a multi-stage family's stages in order, each into ``OUT/<stage>/``; the last to ``OUT/final``."""
    if args.stage is not None and args.stage != "all" and args.stage not in stages:
        raise ValueError(f"--stage {args.stage}: not a {family} stage ({', '.join(stages)}, all)")
    todo = tuple(stages) if args.stage in (None, "all") else (args.stage,)
    if args.stage_steps is not None and len(args.stage_steps) != len(stages):
        raise ValueError(
            f"--stage-steps: {len(args.stage_steps)} value(s) for the {len(stages)} {family} stages "
            f"({','.join(stages)})"
        )
    steps = dict(zip(stages, args.stage_steps or [args.steps] * len(stages)))
    if args.identity_model is not None:
        raise ValueError(
            f"--identity-model: the {family} family's stage losses do not take the identity loss yet"
        )
    pairs = read_pairs_csv(args.pairs) if args.pairs else None

    def load(prev: Path | None) -> Any:
        if prev is None:
            return _load_init(args, args.init) if args.init is not None else _preset_model(args)
        return _load_init(args, prev)

    first = load(None)  # the image size of the pair dataset (and the --preset / --init checks, early)
    dataset = PosePairDataset(
        records, first.image_size, pairs=pairs, singletons=args.singletons, seed=args.seed
    )
    configs = {s: _train_config(args, steps[s]) for s in stages}
    for stage in todo:
        if not args.overwrite and stage_done(args.out / stage, steps[stage]):
            print(
                f"stage {stage}: {args.out / stage / 'final'} already trained to step {steps[stage]}; skipped"
            )
        else:  # a later stage starts from the previous one's final/, made from ``first`` alike
            _check_resume(args, first, args.out / stage)
    result = train_stages(
        lambda prev: first if prev is None else load(prev), dataset, configs, args.out, stages=todo,
        resume=args.resume, overwrite=args.overwrite, progress=args.progress,
    )  # fmt: skip
    if result is not None:
        print(f"stage {result.output_dir.name}:")
        _report(args, result, configs[result.output_dir.name], result.output_dir)
        if result.out_of_time:
            return EXIT_OUT_OF_TIME
    print(f"{family} stages {', '.join(todo)} done; final model: {args.out / 'final'}")
    return 0


# --------------------------------------------------------------------------------------------------
# sample
# --------------------------------------------------------------------------------------------------
def add_sample_args(parser: argparse.ArgumentParser) -> None:
    p = parser.add_argument
    p("--generator", required=True, type=Path, help="directory written by train-generator (e.g. OUT/final)")
    p("--source", required=True, type=Path, help="source image (the person to re-pose)")
    p("--target-pose-from", required=True, help="image name whose annotation row gives the target pose")
    p(
        "--annotations",
        type=Path,
        default=None,
        help="PATN keypoint CSV (default: market-annotation-{train,test}.csv beside the source's folder)",
    )
    p("--out", required=True, type=Path, help="output PNG: source | target skeleton | generated")
    p("--steps", type=positive_int, default=None, help="sampling steps (default: the checkpoint's)")
    p(
        "--sampler", default=None, choices=sorted(SAMPLERS),
        help="sampler (default: the checkpoint's: few-step for a few-step checkpoint, else dpmsolver++)",
    )  # fmt: skip
    argtypes.add_guidance_arg(parser, default=None)
    p("--seed", type=non_negative_int, default=0)
    argtypes.add_device_arg(parser)
    add_annotation_size_arg(parser)
    p("--no-ema", action="store_true", help="use the raw instead of the EMA weights")


def _sample_annotations(args: argparse.Namespace) -> Path:
    """``--annotations``, or the Market folder's own CSV (train, else test) beside the source image's folder."""
    if args.annotations is not None:
        return args.annotations
    try:
        return find_annotations(args.source.parent, "train")
    except FileNotFoundError:
        return find_annotations(args.source.parent, "test")


def run_sample(args: argparse.Namespace) -> int:
    args.annotations = _sample_annotations(args)
    model = load_generator(args.generator, use_ema=not args.no_ema, device=resolve_device(args.device))
    h, w = model.image_size
    image = load_image(args.source)
    # the frame of the CSV: explicit, else the size of the images it annotates that sit beside the source
    ann, frame = load_annotations(
        args.annotations,
        args.source.parent,
        frame=args.annotation_size,
        default_frame=(image.height, image.width),
    )
    target_name = Path(args.target_pose_from).name
    if target_name not in ann:
        logger.error("%s has no row for %r (the --target-pose-from image)", args.annotations, target_name)
        return 2
    target_kps = resize_keypoints(ann[target_name], frame, (h, w))
    source_kps = ann.get(args.source.name)
    if source_kps is None:
        logger.warning("%s has no row for the source %s: sampling without source keypoints",
                       args.annotations, args.source.name)  # fmt: skip
    else:
        source_kps = torch.from_numpy(resize_keypoints(source_kps, frame, (h, w)))[None]
    src = pil_to_tensor01(image.resize((w, h), Image.Resampling.BILINEAR))[None]
    tgt = torch.from_numpy(target_kps)[None]
    out = model.generate(
        src, tgt, source_kps, steps=args.steps, sampler=args.sampler, guidance=args.guidance, seeds=[args.seed],
    )  # fmt: skip
    from torchvision.utils import make_grid, save_image

    grid = make_grid(
        torch.cat([src, skeleton_tensor(target_kps, h, w), out.cpu()]), nrow=3, padding=1, pad_value=1.0
    )
    atomic_save(args.out, lambda tmp: save_image(grid, tmp))
    print(f"wrote {args.out}")
    return 0


__all__ = [
    "add_sample_args",
    "add_train_generator_args",
    "run_sample",
    "run_train_generator",
]
