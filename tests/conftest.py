"""Fixtures shared by several test files."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def synth_market(tmp_path_factory):
    """A tiny synthetic Market folder at 64x32 (3 train and 3 test identities), one per test module:
    some modules damage an image in it."""
    from posereid.experiments.synthetic import SynthConfig, write_synthetic_market

    root = tmp_path_factory.mktemp("market")
    cfg = SynthConfig(
        n_train_ids=3, n_test_ids=3, per_camera=2, cameras=2, n_distractors=1, n_junk=1, height=64, width=32,
        max_pairs_per_id=4,
    )  # fmt: skip
    write_synthetic_market(root, cfg, progress=False)
    return root
