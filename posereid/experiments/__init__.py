"""Synthetic people, the re-ID gain protocol, generator quality, benchmarks, reports and the CLI."""

from posereid._lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "synthetic": [
            "Camera", "Identity", "PoseParams", "SynthConfig", "SynthSample", "VIEWS", "iter_synthetic",
            "make_cameras", "plan_synthetic", "read_synthetic_meta", "render_background", "render_grid",
            "render_person", "sample_camera", "sample_identity", "sample_pose", "write_synthetic_market",
        ],
        "reid_gain": ["ARMS", "DEFAULT_ARMS", "GainConfig", "ProtocolMismatchError", "run_gain", "select_subset"],
        "quality": ["EvalPairs", "QualityScorer", "evaluate_generator", "generate_for_pairs", "load_eval_pairs", "untrained_like"],
        "quality_metrics": [
            "FidScorer", "IdentityScores", "Lpips", "MissingWeightsError", "body_mask", "identity_fidelity",
            "pose_fidelity", "ssim_scores",
        ],
        "train_generator": ["market_pose_records"],
        "cli": ["main"],
    },
)  # fmt: skip
