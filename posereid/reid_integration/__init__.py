"""Market-1501 I/O, keypoint annotation, the torchreid plugin, re-ID training and fast evaluation."""

from posereid._lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "market1501": [
            "IMAGE_EXTENSIONS", "ImageReadError", "Market1501", "MarketFormatError", "MarketRecord",
            "MarketWriter", "PatnAnnotations", "RELEASE_DIR", "SPLIT_DIRS", "check_image",
            "format_int_list", "format_market_name", "format_patn_row", "load_image", "parse_market_name",
            "parse_patn_row", "read_pairs_csv", "read_patn_csv", "resolve_data_dir", "write_pairs_csv",
            "write_patn_csv",
        ],
        "annotate": [
            "AnnotateLockedError", "AnnotateSummary", "PARTIAL_SUFFIX", "annotate_folder", "list_images",
            "lock_path", "partial_path",
        ],
        "evaluate": ["IdentityCentroids", "compute_distance_matrix", "evaluate_features", "evaluate_rank"],
        "torchreid_plugin": [
            "BatchAugmentEngine", "BatchAugmentSoftmaxEngine", "BatchAugmentTripletEngine", "IMAGENET_MEAN",
            "IMAGENET_STD", "PosereidMarketDataset", "ReidFeatureExtractor", "ReidLists", "SyntheticPidError",
            "build_reid_model", "build_reid_transforms", "denormalize", "load_reid_checkpoint",
            "load_state_dict_file", "load_torchreid_checkpoint", "normalize", "register_posereid_dataset",
            "registered_posereid_dataset", "save_reid_checkpoint", "scan_reid_lists", "unregister_posereid_dataset",
        ],
        "soft_labels": [
            "OnlineSoftTargets", "SYNTHETIC_KEYS", "SoftLabelSoftmaxEngine", "SoftTargets", "load_teacher",
            "soft_label_loss", "soft_targets_for_paths", "synthetic_flags", "teacher_soft_targets",
        ],
        "soft_settings": [
            "SOFT_AGREE", "check_soft_temperature", "check_soft_weight", "describe_soft_weight", "soft_weight_arg",
        ],
        "train": ["PosereidDataManager", "ReidTrainConfig", "build_lr_scheduler", "extract_loader_features", "train_reid"],
    },
)  # fmt: skip
