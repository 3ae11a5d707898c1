"""The pose judge for synthetic people (a package; every public name re-exported, resolved on first access)."""

from posereid._lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "model": ["DEFAULT_JUDGE_DIR", "EVAL_SEED", "JudgeBatches", "JudgeTrainConfig", "MIN_JUDGE_SEED", "PoseJudge",
                  "PoseJudgeEstimator", "Predictor", "REPORT_JSON", "REPORT_MD", "SIZES", "SYNTH_JPEG_QUALITY",
                  "TARGET_FOUND", "TARGET_PCKH", "TRAINING_NAME", "TRAIN_SEED", "WARMUP_STEPS", "blur_images",
                  "decode_heatmaps", "degrade", "evaluate_judge", "focal_loss", "heldout_backgrounds", "heldout_people",
                  "judge_metrics", "keypoint_heatmaps", "render_judge_markdown", "resize_to_height",
                  "to_heatmap_coords", "train_judge", "training_batch", "write_judge_report"],
    },
)  # fmt: skip
