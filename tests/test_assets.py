"""The shipped assets: what ``posereid/assets`` holds, and that the shipped generator and pose judge give
exactly what they gave when these hashes were recorded (the few-step generator of results/few_step, 2 of its
jumps)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import posereid
from posereid.augment import generator_sha256
from posereid.models import load_generator

PACKAGE = Path(posereid.__file__).resolve().parent
GENERATOR = PACKAGE / "assets" / "generator-small"

#: sha256 of the weights the loader gives (as :func:`generator_sha256` serialises them: the UNet and
#: appearance encoder, and the few-step embedding ``few_step.*``)
GENERATOR_STATE_SHA256 = "58645cf58746a0fb47398cb7808d4b3c02f8f7d467fd506520dab35f5c85b364"
#: sha256 of the asset's main weights file (the EMA weights of the fine-tune, its only copy)
GENERATOR_WEIGHTS_SHA256 = "21816c8de81ac9d2e460b03e38a72b8b51b100e4209fbc59c3ed87c363708ce6"
#: sha256 of the float32 bytes of the two images and of the judge's keypoints on them, recorded with the
#: asset of this file's commit (torch 2.14, one CPU thread); float results differ between CPU kernels, so one
#: pair per ATen CPU capability (only the one of the recording machine so far)
RECORDED_TORCH = "2.14"
RECORDED = {
    "AVX512": (
        "429ac6ebe2ddbe76fd9a504a851a3edd6db845c175ac793a6e6a0c269f9acf28",
        "aad56c8bf333fb5dfc8cdaee90321ba838c87458eecef6ef9efbcc09b8bf532a",
    ),
}
#: elsewhere (another torch or kernel set): the per-image means and the judge's first person, to a tolerance
IMAGE_MEANS = (0.5157289, 0.6713121)
FIRST_PERSON = [[16.34, 5.58], [15.89, 13.20], [19.70, 13.71], [20.25, 22.90], [21.61, 30.50], [12.03, 13.59],
                [11.30, 23.15], [10.26, 30.54], [16.33, 30.51], [14.76, 44.35], [15.78, 57.72], [15.69, 30.59],
                [17.91, 44.40], [15.58, 57.69], [15.06, 5.01], [16.35, 5.03], [18.37, 6.42], [13.78, 6.01]]  # fmt: skip


def _sha256(a: torch.Tensor | np.ndarray) -> str:
    arr = a.numpy() if isinstance(a, torch.Tensor) else a
    return hashlib.sha256(np.ascontiguousarray(arr, dtype=np.float32).tobytes()).hexdigest()


def _exact_here() -> tuple[str, str] | None:
    """The recorded hashes when this machine computes like the recording one, else ``None``."""
    same_torch = torch.__version__.startswith(RECORDED_TORCH + ".")
    return RECORDED.get(torch.backends.cpu.get_cpu_capability()) if same_torch else None


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """The hashes were recorded with one CPU thread (the reduction order depends on the thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def generated(one_thread: None) -> torch.Tensor:
    """Two images of the shipped generator: fixed smooth sources, a fixed skeleton (one shifted), 2 few-step
    jumps."""
    gen = load_generator(GENERATOR)
    assert generator_sha256(gen) == GENERATOR_STATE_SHA256  # the EMA weights, also on any machine
    coarse = torch.rand(2, 3, 8, 4, generator=torch.Generator().manual_seed(0))
    source = torch.nn.functional.interpolate(coarse, size=(64, 32), mode="bilinear", align_corners=False)
    skeleton = torch.tensor(
        [[16, 6], [16, 14], [12, 14], [10, 22], [10, 30], [20, 14], [22, 22], [22, 30], [14, 32], [14, 44],
         [14, 58], [18, 32], [18, 44], [18, 58], [14, 4], [18, 4], [12, 6], [20, 6]],
        dtype=torch.float32,
    )  # fmt: skip
    target = torch.stack([skeleton, skeleton + torch.tensor([3.0, 0.0])])
    source_kps = torch.stack([skeleton - torch.tensor([2.0, 0.0]), skeleton])
    return gen.generate(source, target, source_kps, steps=2, seeds=[0, 1])


def test_shipped_generator_gives_the_recorded_images(generated: torch.Tensor) -> None:
    assert generated.shape == (2, 3, 64, 32) and generated.dtype == torch.float32
    exact = _exact_here()
    if exact:
        assert _sha256(generated) == exact[0]
    else:
        assert generated.mean(dim=(1, 2, 3)).tolist() == pytest.approx(IMAGE_MEANS, abs=1e-3)


def test_shipped_judge_gives_the_recorded_keypoints(generated: torch.Tensor) -> None:
    from posereid.experiments.quality.judge import PoseJudgeEstimator

    with PoseJudgeEstimator.from_pretrained() as judge:
        kps = judge.detect(generated)
    assert kps.shape == (2, 18, 2)
    exact = _exact_here()
    if exact:
        assert _sha256(kps) == exact[1]
    else:
        assert kps[0] == pytest.approx(np.array(FIRST_PERSON, np.float32), abs=0.05)


def test_package_ships_the_library_and_one_copy_of_the_generator_weights() -> None:
    """Measured reports live in the repository's ``results/`` and one-off studies in ``studies/``, not in
    the package; the generator asset holds each model's EMA weights once, as the plain weights file."""
    assert not list(PACKAGE.rglob("results")), "measured reports belong in the top-level results/"
    assert not list(PACKAGE.rglob("studies"))
    for folder in (GENERATOR, GENERATOR / "few_step"):
        assert sorted(p.name for p in folder.glob("*.safetensors")) == ["diffusion_pytorch_model.safetensors"]
    weights = (GENERATOR / "diffusion_pytorch_model.safetensors").read_bytes()
    assert hashlib.sha256(weights).hexdigest() == GENERATOR_WEIGHTS_SHA256
