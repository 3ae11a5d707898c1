"""Synthetic people and Market-1501-format datasets of them.

``params`` (appearance, pose and camera parameters and their samplers), ``people`` (the renderer),
``dataset`` (the dataset writer, its metadata, the oracle views, the preview grid) and ``cli`` (``synth-market`` /
``synth-grid``). The public names are re-exported here, resolved on first access.
"""

from posereid._lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "params": ["VIEWS", "VIEW_YAW", "Camera", "Identity", "PoseParams", "make_cameras", "sample_camera",
                   "sample_identity", "sample_pose"],
        "people": ["render_background", "render_person"],
        "dataset": ["IDENTITIES_JSON", "META_CSV", "ORACLE_JSON", "SynthConfig", "SynthSample", "SyntheticMetadataError",
                    "find_synthetic_metadata", "hidden_train_views", "iter_synthetic", "oracle_name", "plan_synthetic",
                    "read_synthetic_meta", "render_grid", "write_oracle_views", "write_synthetic_market"],
    },
)  # fmt: skip
