"""Synthetic people, the re-ID gain protocol, generator quality, benchmarks, reports and the CLI.

Subpackages: ``synthetic``, ``reid_gain``, ``quality``, ``bench``; modules: ``data`` (the Market input of
a run, parsed once), ``demo`` (the demo: :class:`DemoOptions`, :class:`DemoPlan`, its stages),
``identity_loss`` (the one place a re-ID checkpoint becomes a generator's identity loss: ``IdentityLoss``,
used by ``train-generator --identity-model`` and the ablation's +id rows), ``train_generator`` and
``demo_cli`` (commands), ``cli`` (the console script).
"""

from posereid._lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "synthetic.params": ["Camera", "Identity", "PoseParams", "VIEWS", "make_cameras", "sample_camera",
                             "sample_identity", "sample_pose"],
        "synthetic.people": ["render_background", "render_person"],
        "synthetic.dataset": ["SynthConfig", "SynthSample", "iter_synthetic", "plan_synthetic", "read_synthetic_meta",
                              "render_grid", "write_synthetic_market"],
        "reid_gain.config": ["ARMS", "DEFAULT_ARMS", "GainConfig", "ProtocolMismatchError"],
        "reid_gain.protocol": ["run_gain"],
        "reid_gain.subset": ["select_subset"],
        "quality.pairs": ["EvalPairs", "load_eval_pairs"],
        "quality.scoring": ["QualityScorer"],
        "quality.evaluate": ["EvaluateConfig", "evaluate_generator", "generate_for_pairs", "untrained_like"],
        "quality.metrics": [
            "FidScorer", "IdentityScores", "Lpips", "MissingWeightsError", "body_mask", "identity_fidelity",
            "pose_fidelity", "ssim_scores",
        ],
        "data": ["MarketSource", "market_pose_records"],
        "cli": ["main"],
    },
)  # fmt: skip
