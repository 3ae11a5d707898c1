"""Generators: pose vocabulary, keypoint extraction, the generator contract and loader, shared diffusion
parts (guidance, samplers, training loop, checkpoints) and one folder per family (``pidm/``)."""

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
        "contract": ["FAMILIES", "SHIPPED_GENERATOR", "PoseTransferGenerator", "PoseTransferSampler", "UnknownGeneratorError", "checkpoint_family", "family_class", "is_checkpoint_dir", "load_generator", "register_family"],
        "pipeline": [
            "CHECKPOINT_DEFAULTED", "SAMPLING_DEFAULTS", "Component", "GeneratorPipeline", "SamplingOptions", "autocast_context", "init_fields",
            "load_scheduler", "sampling_options", "save_scheduler",
        ],
        "parts": ["TIMESTEP_SAMPLINGS", "build_unet", "check_training_fields"],
        "pidm": ["PIDMModel", "PIDMPipeline"],
        "pcdms": ["PCDMsInpainter", "PCDMsPipeline", "PCDMsPrior", "PCDMsRefiner"],
        "cfld": ["CFLDModel", "CFLDPipeline"],
        "few_step": [
            "FEW_STEP", "FEW_STEP_FOLDER", "StepSizeEmbedding", "TrajectoryDataset", "record_trajectories",
        ],
        "refine": ["RefinedGenerator", "Refiner", "load_refiner", "load_sampler", "refiner_seeds"],
        "checkpoint": [
            "CONFIG_NAME", "EMA_WEIGHTS_NAME", "MODEL_INDEX_NAME", "SCHEDULER_CONFIG_NAME", "WEIGHTS_NAME",
            "CheckpointError", "CheckpointMismatchError", "CheckpointMixin", "check_finite", "check_state_dict",
            "load_weights", "read_json", "require_local_weights", "save_component", "save_weights",
            "write_model_index",
        ],
        "guidance": ["GuidanceFormula", "check_guidance", "condition_dropout", "guided_denoiser"],
        "appearance": ["AppearanceEncoder", "BackboneNotFoundError", "load_local_backbone"],
        "sampling": [
            "FLOW_SAMPLERS", "NonFiniteSampleError", "SAMPLERS", "SamplerName", "diffusion_loss", "diffusion_target",
            "initial_noise", "is_flow", "make_generators", "make_sampler", "model_timesteps", "noisy_sample",
            "prediction_type", "sample_loop", "sample_timesteps", "training_scheduler",
        ],
        "training": [
            "ImageLoadError", "NonFiniteLossError", "PosePairDataset", "PoseRecord", "ResumeMismatchError", "TrainConfig",
            "TrainResult", "check_resume_config",
            "derive_seed", "list_checkpoints", "plot_loss_curve", "save_sample_grid", "train_generator",
        ],
        "runtime": ["resolve_device"],
        "images": ["pil_to_tensor01", "tensor01_to_pil", "tensor01_to_uint8"],
        "locks": [
            "FILTER_LOCK_NAME", "GATE_NAME", "LOCK_NAME", "GeneratedFolderLock", "OutputLock", "OutputLockedError",
            "held_elsewhere", "is_lock_file", "output_lock", "read_holder", "shard_lock_files", "shard_lock_name",
        ],
        "texture_attention": [
            "HybridGranularityProcessor", "LevelTokensProcessor", "SourceAttnProcessor", "assign_levels", "use_level_tokens",
        ],
        "io_utils": ["atomic_save", "atomic_write", "file_sha256", "is_temp_file"],
    },
)  # fmt: skip
