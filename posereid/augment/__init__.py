"""The three ways synthetic people reach re-ID training: an online transform, a dataset wrapper and
offline generation, plus pose banks and the identity-consistency filter."""

from posereid._lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "pose_bank": ["PoseBank", "SAMPLINGS", "VIEWS", "estimate_view", "valid_pose_mask"],
        "transform": ["PoseTransferAugment"],
        "sampling_settings": [
            "PLAIN_SAMPLING", "check_sampling", "checkpoint_sampling", "describe_sampling", "fill_from_own",
            "own_sampling",
            "refiner_sampler", "resolve_sampling",
        ],
        "dataset": ["PoseAugmentedDataset"],
        "generate": [
            "CONFIG_FILE", "GenerateConfig", "GenerateConfigError", "GenerateSummary", "MANIFEST_NAME", "PlanItem",
            "REJECTED_DIR", "SYNTHETIC_SEQ", "TRAIN_DIR", "generate_offline", "generator_sha256", "manifest_paths",
            "parse_synthetic_name", "plan_draws", "read_manifest", "read_manifest_file", "synthetic_name",
            "write_manifest_file",
        ],
        "filter": ["FilterError", "FilterSummary", "IdentityFilter", "filter_folder", "load_extractor", "select"],
    },
)  # fmt: skip
