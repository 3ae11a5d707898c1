"""The generator: pose vocabulary, keypoint extraction, denoiser, samplers, training and checkpoints."""

from posereid._lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "pose": [
            "FLIP_PERMUTATION", "KEYPOINT_NAMES", "KeypointError", "LIMBS", "MISSING", "NUM_KEYPOINTS",
            "NUM_LIMBS", "POSE_CHANNELS", "PoseKeypoints", "affine_keypoints", "as_keypoints", "crop_keypoints",
            "default_sigma", "draw_skeleton", "drop_outside", "flip_keypoints", "missing_pose", "normalize_pose",
            "render_pose_maps", "resize_keypoints", "skeleton_tensor", "visible_mask",
        ],
        "pose_estimation": ["BLAZEPOSE_TO_COCO18", "INSTALL_HINT", "MissingExtraError", "PoseEstimator", "landmarks_to_coco18"],
        "generator": ["CONFIG_NAME", "EMA_WEIGHTS_NAME", "WEIGHTS_NAME", "CheckpointMismatchError", "PoseTransferGenerator", "check_state_dict"],
        "appearance": ["AppearanceEncoder", "BackboneNotFoundError", "load_local_backbone"],
        "sampling": [
            "GuidanceFormula", "SAMPLERS", "SamplerName", "guided_denoiser", "initial_noise", "make_generators",
            "make_sampler", "sample_loop",
        ],
        "training": [
            "ImageLoadError", "NonFiniteLossError", "PosePairDataset", "PoseRecord", "TrainConfig", "TrainResult",
            "derive_seed", "list_checkpoints", "plot_loss_curve", "save_sample_grid", "train_generator",
        ],
        "io_utils": ["atomic_save", "atomic_write", "file_sha256", "is_temp_file"],
    },
)  # fmt: skip
