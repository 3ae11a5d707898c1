"""``posereid train-generator`` and ``posereid sample``: train the pose-transfer generator on a Market-1501
folder with PATN keypoints, and draw samples from a trained one.

Keypoint coordinates in the annotation CSV are taken to be in each image's own pixel frame (true for
Market-1501, where every crop is 128x64); pass ``--annotation-size HxW`` when the CSV uses another frame.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from posereid.experiments.data import market_pose_records
from posereid.models.generator import PoseTransferGenerator
from posereid.models.io_utils import atomic_save
from posereid.models.pose import resize_keypoints, skeleton_tensor
from posereid.models.sampling import SAMPLERS
from posereid.models.training import PosePairDataset, TrainConfig, train_generator
from posereid.reid_integration.market1501 import load_image, read_pairs_csv, read_patn_csv

logger = logging.getLogger(__name__)


def parse_hw(text: str) -> tuple[int, int]:
    """``"128x64"`` → ``(128, 64)``."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW like 128x64, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"image size must be positive, got {text!r}")
    return h, w


# --------------------------------------------------------------------------------------------------
# train-generator
# --------------------------------------------------------------------------------------------------
def add_train_generator_args(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p = parser.add_argument
    p("--data", required=True, type=Path, help="Market-1501 folder (uses bounding_box_train)")
    p("--annotations", required=True, type=Path, help="PATN keypoint CSV (name:keypoints_y:keypoints_x)")
    p("--pairs", type=Path, help="PATN pairs CSV (from,to); default: all same-identity pairs, on the fly")
    p("--preset", default="market", choices=sorted(PoseTransferGenerator.PRESETS), help="model size")
    p("--image-size", type=parse_hw, help="override the preset's HxW, e.g. 64x32")
    p(
        "--prediction-type",
        choices=("epsilon", "v_prediction"),
        help="override the preset's prediction target (v_prediction learns faster at small scale)",
    )
    p("--init", type=Path, help="start from this generator directory (fine-tuning) instead of a preset")
    p("--out", required=True, type=Path, help="output directory (checkpoints, samples, log, final/)")
    p("--steps", type=int, default=d.steps)
    p("--batch-size", type=int, default=d.batch_size, help="per process")
    p("--lr", type=float, default=d.lr)
    p("--weight-decay", type=float, default=d.weight_decay)
    p("--warmup-steps", type=int, default=d.warmup_steps)
    p("--lr-schedule", default=d.lr_schedule, choices=("cosine", "linear", "constant"))
    p("--grad-accum", type=int, default=d.grad_accum, help="micro-batches per optimizer step")
    p("--mixed-precision", default=d.mixed_precision, choices=("no", "fp16", "bf16"))
    p("--ema-decay", type=float, default=d.ema_decay)
    p("--checkpoint-every", type=int, default=d.checkpoint_every, help="steps (0: only at the end)")
    p("--keep-checkpoints", type=int, default=d.keep_checkpoints)
    p("--sample-every", type=int, default=d.sample_every, help="steps between sample grids (0: none)")
    p("--log-every", type=int, default=d.log_every)
    p("--seed", type=int, default=d.seed)
    p("--num-workers", type=int, default=d.num_workers, help="data loader workers")
    p(
        "--max-minutes",
        type=float,
        default=None,
        help="wall-clock budget: checkpoint and stop when it runs out (rerun to resume)",
    )
    p("--min-joints", type=int, default=7, help="skip images with fewer visible keypoints")
    p(
        "--annotation-size",
        type=parse_hw,
        help="HxW frame of the CSV coordinates (default: each image's size)",
    )
    p("--singletons", default="skip", choices=("skip", "self"), help="identities with one image")
    p(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue from the latest checkpoint",
    )
    p("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm progress bar")


def run_train_generator(args: argparse.Namespace) -> int:
    records = market_pose_records(
        args.data, args.annotations, min_joints=args.min_joints, annotation_size=args.annotation_size
    )
    if args.init is not None:
        model = PoseTransferGenerator.from_pretrained(args.init, use_ema=True).train()
        if args.image_size is not None and tuple(args.image_size) != model.image_size:
            raise SystemExit(f"--image-size {args.image_size} differs from {args.init}'s {model.image_size}")
    else:
        overrides: dict = {"image_size": tuple(args.image_size)} if args.image_size else {}
        if args.prediction_type:
            overrides["prediction_type"] = args.prediction_type
        model = PoseTransferGenerator.from_preset(args.preset, **overrides)
    pairs = read_pairs_csv(args.pairs) if args.pairs else None
    dataset = PosePairDataset(
        records, model.image_size, pairs=pairs, singletons=args.singletons, seed=args.seed
    )
    config = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_steps=min(args.warmup_steps, args.steps), lr_schedule=args.lr_schedule,
        grad_accum=args.grad_accum, mixed_precision=args.mixed_precision, ema_decay=args.ema_decay,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints, sample_every=args.sample_every, log_every=args.log_every,
        seed=args.seed, num_workers=args.num_workers, max_minutes=args.max_minutes,
    )  # fmt: skip
    logger.info(
        "%d training pairs; %.2f M parameters", len(dataset), sum(p.numel() for p in model.parameters()) / 1e6
    )
    result = train_generator(model, dataset, config, args.out, resume=args.resume, progress=args.progress)
    print(f"trained steps {result.start_step}..{result.steps}, final loss {result.final_loss:.4f}, "
          f"{result.skipped_nonfinite} non-finite step(s) skipped")  # fmt: skip
    if result.out_of_time:
        print(f"stopped by --max-minutes {args.max_minutes:g} at step {result.steps} of {config.steps}; "
              "run the same command again to continue")  # fmt: skip
    print(f"final model: {args.out / 'final'}\ncheckpoints: {args.out / 'checkpoints'}\n"
          f"samples:     {args.out / 'samples'}\nloss log:    {args.out / 'train_log.csv'}")  # fmt: skip
    return 0


# --------------------------------------------------------------------------------------------------
# sample
# --------------------------------------------------------------------------------------------------
def add_sample_args(parser: argparse.ArgumentParser) -> None:
    p = parser.add_argument
    p("--generator", required=True, type=Path, help="directory written by train-generator (e.g. OUT/final)")
    p("--source", required=True, type=Path, help="source image (the person to re-pose)")
    p("--target-pose-from", required=True, help="image name whose annotation row gives the target pose")
    p("--annotations", required=True, type=Path, help="PATN keypoint CSV")
    p("--out", required=True, type=Path, help="output PNG: source | target skeleton | generated")
    p("--steps", type=int, default=20)
    p("--sampler", default="dpmsolver++", choices=sorted(SAMPLERS))
    p("--guidance-pose", type=float, default=2.0)
    p("--guidance-appearance", type=float, default=2.0)
    p("--seed", type=int, default=0)
    p(
        "--annotation-size",
        type=parse_hw,
        help="HxW frame of the CSV coordinates (default: the source's size)",
    )
    p("--no-ema", action="store_true", help="use the raw instead of the EMA weights")


def run_sample(args: argparse.Namespace) -> int:
    model = PoseTransferGenerator.from_pretrained(args.generator, use_ema=not args.no_ema)
    h, w = model.image_size
    image = load_image(args.source)
    frame = args.annotation_size or (image.height, image.width)
    ann = read_patn_csv(args.annotations, image_hw=None)
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
    src = torch.from_numpy(np.asarray(image.resize((w, h), Image.Resampling.BILINEAR)).copy())
    src = src.permute(2, 0, 1)[None].float() / 255.0
    tgt = torch.from_numpy(target_kps)[None]
    out = model.generate(
        src, tgt, source_kps, steps=args.steps, sampler=args.sampler,
        guidance=(args.guidance_pose, args.guidance_appearance), seeds=[args.seed],
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
    "parse_hw",
    "run_sample",
    "run_train_generator",
]
