"""Generator quality (``posereid evaluate-generator``): does it keep the person and follow the pose?

``pairs`` (which test pairs, loaded), ``metrics`` (SSIM/LPIPS/FID, realism, masks, PCKh, identity), ``scoring``
(:class:`QualityScorer`), ``evaluate`` (:class:`EvaluateConfig` and :func:`evaluate_generator`, the API),
``report`` (markdown/JSON, sheet, sweep plot), ``gate`` (:func:`gate_generator`: the generator gate on the
user's own data), ``compare`` (:func:`compare_quality`: several reports side by side, e.g. seen vs unseen
people, and the gap in each share of the ceiling) and the commands ``cli``, ``gate_cli`` and ``compare_cli``.
The public names are re-exported here, resolved on first access, so importing the package pulls in neither
torchmetrics nor the generator.
"""

from posereid._lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "pairs": ["ANNOTATIONS_NAME", "PAIRS_NAME", "EvalPairs", "load_eval_pairs"],
        "metrics": ["FID_WEIGHTS_FILENAMES", "CallableFeatures", "FidScorer", "IdentityScores", "JudgeFeatures", "Lpips",
                    "MissingWeightsError", "body_mask", "bundled_lpips_linear", "default_weights_dir", "detect_keypoints",
                    "find_fid_weights", "gaussian_blur", "identity_fidelity", "laplacian_energy",
                    "lpips_backbone_filename", "pose_fidelity", "pose_normaliser", "sharpness_ratio", "ssim_scores",
                    "torch_fidelity_available"],
        "scoring": ["FRECHET_SPACES", "Backends", "FeatureFn", "QualityScorer"],
        "evaluate": ["CEILING", "FLOOR", "LPIPS_NETS", "POSE_ESTIMATORS", "TRAINED", "EvaluateConfig", "evaluate_generator",
                     "generate_for_pairs", "is_synthetic_data", "untrained_like"],
        "gate": ["DEFAULT_PAIRS", "IDENTITY_METRIC", "MIN_IDENTITY_GAP", "NEAR_FLOOR_MARGIN", "SHARPNESS_BAND",
                 "STYLE_MARGIN", "VERDICTS", "GateResult", "GateScores", "gate_generator", "gate_verdict",
                 "select_pairs", "write_gate_json"],
        "compare": ["BASES", "COMPARE_METRICS", "COMPARE_NAME", "DEFAULT_GAP_THRESHOLD", "IDENTITY_METRICS",
                    "POSE_METRICS", "REPORT_NAME", "REQUIRED_METRICS", "QualityComparison", "QualityReport",
                    "ReportError", "ReportRow", "RowComparison", "compare_quality", "default_labels",
                    "load_quality_report", "match_rows", "render_quality_comparison", "report_file", "report_rows",
                    "setting_label", "share", "write_quality_comparison"],
        "report": ["METRICS", "parse_guidance", "parse_sweep", "render_markdown", "to_jsonable", "write_sheet",
                   "write_sweep_plot"],
    },
)  # fmt: skip
