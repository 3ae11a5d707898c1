"""The re-ID gain protocol: does training on pose-transfer images help a re-ID model, honestly measured?

``config`` (:class:`GainConfig`, the arms), ``subset`` (the nested train subsets), ``protocol`` (the
stages, one re-ID cell, :func:`run_gain`), ``gate`` (:class:`GainGate`: the generator gate before the generator
arms), ``report`` (results CSV, summary, table, plot), ``compare``
(several runs in one table and plot) and ``cli`` (``posereid reid-gain`` and ``reid-gain-compare``). The
public names are re-exported here, resolved on first access.
"""

from posereid._lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "config": ["ARMS", "BASELINE_FIELDS", "BASELINES", "DEFAULT_ARMS", "DEFAULT_FRACTIONS", "DEFAULT_SEEDS", "GainConfig", "GainOutOfTimeError", "NOISE_ARM", "NOISE_FILTERED_ARM",
                   "NOISE_SOFT_ARM", "ORACLE_ARM", "ProtocolMismatchError", "SOFT_ARM", "arm_extra", "is_filtered", "is_soft", "find_annotations", "fraction_tag", "parse_fractions", "with_unrecorded"],
        "subset": ["Subset", "materialize_subset", "select_subset", "subset_order"],
        "protocol": ["OracleUnavailableError", "check_oracle", "ensure_filter_model", "ensure_filtered", "ensure_generator", "ensure_identity_model", "IDENTITY_MODEL_SEED_OFFSET", "ensure_noise", "ensure_oracle",
                     "ensure_synthetic", "ensure_teacher", "generator_dir", "import_baselines", "new_generator", "market_source", "noise_dir", "oracle_dir", "planned_cells",
                     "prepare_fraction", "run_cell", "run_gain", "batch_share", "synthetic_dir", "teacher_checkpoint", "validate_run", "cell_dir"],
        "gate": ["GATED_ARMS", "GATE_JSON", "GainGate", "GeneratorGateError"],
        "compare": ["GainRun", "arm_settings", "compare_table", "distinct_labels", "first_cells", "lend_oracle", "load_run",
                    "plot_compare", "plot_series", "run_label",
                    "variant_table", "write_comparison"],
        "report": ["CSV_FIELDS", "Interval", "Share", "cell_key", "format_interval", "markdown_table", "paired_interval",
                   "format_share_of_means", "plot_results", "read_results", "read_run", "summary_delta", "recovered_share", "share_of_mean_gains", "summarize", "verdict", "write_reports",
                   "write_results"],
    },
)  # fmt: skip
