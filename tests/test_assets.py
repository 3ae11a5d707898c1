"""The shipped assets: what ``posereid/assets`` holds, and that the shipped generator and pose judge give
exactly what they gave when these hashes were recorded (before the generator asset's two weight copies
became one, the EMA one)."""

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

#: sha256 of the weights the loader gives (as :func:`generator_sha256` serialises them): the asset's EMA
#: weights, which were ``ema.safetensors`` beside a plain copy and are now its only weights file
GENERATOR_WEIGHTS_SHA256 = "281809439f6c9e91a2a89466606dacdaea239c1bd8abfd82e1e2933580bc7180"
#: sha256 of the float32 bytes of the two images and of the judge's keypoints on them, recorded with the
#: asset of commit f548a37 (torch 2.14, one CPU thread); float results differ between CPU kernels, so one
#: pair per ATen CPU capability
RECORDED_TORCH = "2.14"
RECORDED = {
    "AVX512": (
        "b73b8f3e0bec7500e57ab1692920164a9a073ef4e7e9c6aab20409d5564097c6",
        "09bed530d67f45ddd4f0b7c216ae2ae0a3d4587b600d2188e9c0b819d2e8b8a6",
    ),
    "AVX2": (
        "a3e5308e9b0a9988dc64fe43309d6882ca51562616b752b199fa2dbd557242ad",
        "a85a99876b0436853b4bfa447834807a6ab5819517fb5b57827f20a484140689",
    ),
}
#: elsewhere (another torch or kernel set): the per-image means and the judge's first person, to a tolerance
IMAGE_MEANS = (0.5515069, 0.6825673)
FIRST_PERSON = [[16.31, 5.80], [15.66, 12.41], [12.39, 13.43], [11.46, 22.03], [11.07, 30.60], [19.94, 12.44],
                [-1.0, -1.0], [21.80, 30.80], [14.91, 30.28], [14.56, 45.06], [14.90, 57.30], [18.00, 30.43],
                [18.41, 45.03], [17.55, 57.58], [15.10, 4.87], [16.88, 5.06], [13.75, 5.37], [18.45, 5.40]]  # fmt: skip


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
    """Two images of the shipped generator: fixed smooth sources, a fixed skeleton (one shifted), 2 steps."""
    gen = load_generator(GENERATOR)
    assert generator_sha256(gen) == GENERATOR_WEIGHTS_SHA256  # the EMA weights, also on any machine
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
    the package; the generator asset holds its EMA weights once, as the plain weights file."""
    assert not list(PACKAGE.rglob("results")), "measured reports belong in the top-level results/"
    assert not list(PACKAGE.rglob("studies"))
    assert sorted(p.name for p in GENERATOR.glob("*.safetensors")) == ["diffusion_pytorch_model.safetensors"]
    weights = (GENERATOR / "diffusion_pytorch_model.safetensors").read_bytes()
    assert hashlib.sha256(weights).hexdigest() == GENERATOR_WEIGHTS_SHA256
