"""The pose judge for synthetic people: a small keypoint network trained on renderer output.

mediapipe finds nobody in many real 64x32 synthetic images, so it cannot judge how well a generator
follows the pose on synthetic data (the ceiling reads far below 1). The renderer
(:func:`~posereid.experiments.synthetic.people.render_person`) knows every keypoint, so labelled images
are unlimited: :class:`PoseJudge` is a small fully-convolutional heatmap network (COCO-18, one channel per
joint) trained on renderer output drawn on the fly at 64x32 and 128x64, with degradations (blur,
resampling, noise, JPEG, colour) so generator outputs do not throw it off. mediapipe stays the judge
for real photos.

Modules:

* ``model`` — :class:`PoseJudge` (diffusers ``ModelMixin``/``ConfigMixin``: ``config.json`` +
  ``diffusion_pytorch_model.safetensors``, ``save_pretrained`` / ``from_pretrained(dir)`` of the shared
  :class:`~posereid.models.checkpoint.CheckpointMixin`; input
  ``(B, 3, H, W)`` in ``[0, 1]``, heatmap logits at 1/``output_stride``; :meth:`PoseJudge.predict` decodes
  keypoints) and :class:`PoseJudgeEstimator` — the call surface of the mediapipe
  :class:`~posereid.models.pose_estimation.PoseEstimator` (``est(uint8 HxWx3) → (18, 2)``, ``batch``,
  ``close``, context manager) plus a batched ``detect`` of ``(N, 3, H, W)`` tensors, so
  :class:`~posereid.experiments.quality.scoring.QualityScorer` can take either; it loads the shipped judge
  (:data:`DEFAULT_JUDGE_DIR`) by default.
* ``heatmaps`` — training targets, the focal loss, :func:`decode_heatmaps`.
* ``degradations`` — the random degradations of training and the report's fixed blur + noise.
* ``renders`` — training batches and held-out sets of synthetic people; the seeds (``>= 10**6``,
  disjoint from every ``synth-market`` / demo / test dataset, which use small seeds).
* ``train`` — :func:`train_judge`: Adam on the seeded render stream (:class:`JudgeBatches`),
  deterministic in ``seed``.
* ``report`` — :func:`evaluate_judge`: PCKh@0.5 and the share of people found on held-out renders
  (another seed, as ``synth-market`` writes them: JPEG quality 95), at 64x32 and 128x64; also blurred
  renders, person-free backgrounds (false finds) and, optionally, the real target images of a dataset's
  evaluation pairs (what ``evaluate-generator`` scores as its ceiling).
* ``cli`` — the command ``posereid pose-judge train --out DIR --minutes M`` /
  ``posereid pose-judge evaluate --judge DIR --out REPORT_DIR`` (imported by no other module).

**Found**: a person is found when at least ``min_joints`` joints are predicted (config, default 1) —
the same rule as ``no_person`` in :func:`~posereid.experiments.quality.metrics.pose_fidelity`, which
counts an image as "no person" when every joint is ``-1``. PCKh is that function's (head length = twice
the neck-to-nose distance, else half the torso).

The public names are re-exported here, resolved on first access.
"""

from posereid._lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "model": ["DEFAULT_JUDGE_DIR", "PoseJudge", "PoseJudgeEstimator", "resize_to_height"],
        "heatmaps": ["decode_heatmaps", "focal_loss", "keypoint_heatmaps", "to_heatmap_coords"],
        "degradations": ["blur_images", "degrade", "jpeg_round_trip"],
        "renders": ["EVAL_SEED", "MIN_JUDGE_SEED", "SIZES", "SYNTH_JPEG_QUALITY", "TRAIN_SEED", "heldout_backgrounds",
                    "heldout_people", "training_batch", "training_rng"],
        "train": ["TRAINING_NAME", "WARMUP_STEPS", "JudgeBatches", "JudgeTrainConfig", "train_judge"],
        "report": ["REPORT_JSON", "REPORT_MD", "TARGET_FOUND", "TARGET_PCKH", "Predictor", "evaluate_judge",
                   "judge_metrics", "render_judge_markdown", "write_judge_report"],
    },
)  # fmt: skip
