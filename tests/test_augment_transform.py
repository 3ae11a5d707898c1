"""PoseTransferAugment: a torchvision v2 transform that renders people in new poses (tiny untrained model)."""

import numpy as np
import PIL.Image
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from posereid.augment.pose_bank import PoseBank
from posereid.augment.transform import PoseTransferAugment
from posereid.models.pidm import PIDMPipeline
from posereid.models.pose import PoseKeypoints, resize_keypoints

STEPS = 2
GEN_HW = (32, 16)


def _poses(n: int, seed: int = 0) -> np.ndarray:
    """Plausible standing poses in the 128x64 frame (all joints visible), jittered."""
    base = np.array(
        [
            [32, 20], [32, 30], [22, 31], [20, 45], [19, 58], [42, 31], [44, 45], [45, 58], [26, 62],
            [26, 85], [26, 108], [38, 62], [38, 85], [38, 108], [30, 18], [34, 18], [27, 19], [37, 19],
        ],
        dtype=np.float32,
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    return np.stack([base + rng.integers(-4, 5, size=base.shape) for _ in range(n)]).astype(np.float32)


@pytest.fixture(scope="module")
def gen() -> PIDMPipeline:
    torch.manual_seed(0)
    return PIDMPipeline.from_preset("tiny").eval()


@pytest.fixture(scope="module")
def bank() -> PoseBank:
    return PoseBank(_poses(12))


def _aug(gen, bank, **kw) -> PoseTransferAugment:
    kw.setdefault("steps", STEPS)
    return PoseTransferAugment(gen, bank, **kw)


def _direct(gen, bank, images: torch.Tensor, params: dict, source_kps=None) -> torch.Tensor:
    """What the generator itself gives for the transform's draws (its images at the generator size)."""
    sel = np.flatnonzero(params["apply"])
    target = torch.from_numpy(bank.get(params["pose_index"][sel], size=GEN_HW))
    return gen.generate(
        images[sel],
        target,
        source_kps,
        steps=STEPS,
        guidance=(2.0, 2.0),
        seeds=[int(s) for s in params["seeds"][sel]],
    )


def test_p0_is_identity_on_every_input_type(gen, bank):
    aug = _aug(gen, bank, p=0.0, seed=0)
    pil = PIL.Image.new("RGB", (16, 32), (10, 200, 30))
    img = tv_tensors.Image(torch.rand(3, 32, 16))
    batch = torch.rand(4, 3, 32, 16)
    kps = PoseKeypoints(torch.from_numpy(_poses(1)[0] / 4), canvas_size=(32, 16))
    assert aug(pil) is pil
    assert aug(batch) is batch
    out_img, out_kps, pid = aug(img, kps, 7)
    assert out_img is img and out_kps is kps and pid == 7


def test_p1_batch_is_the_generators_output_in_one_call(gen, bank, monkeypatch):
    aug = _aug(gen, bank, p=1.0, seed=3)
    batch = tv_tensors.Image(torch.rand(5, 3, *GEN_HW))
    calls = []
    real = gen.generate

    def counting(*a, **k):
        calls.append(a[0].shape[0])
        return real(*a, **k)

    monkeypatch.setattr(gen, "generate", counting)
    out = aug(batch)
    monkeypatch.undo()
    assert calls == [5]  # the batch fast path: ONE generate call for all selected items
    assert isinstance(out, tv_tensors.Image) and out.shape == batch.shape and out.dtype == batch.dtype
    params = aug.last_params
    assert params["apply"].all()
    expected = _direct(gen, bank, batch.as_subclass(torch.Tensor), params)
    torch.testing.assert_close(out.as_subclass(torch.Tensor), expected, atol=1e-4, rtol=0)
    # every item was replaced
    assert ((out - batch).abs().flatten(1).mean(1) > 0.05).all()


def test_partial_p_replaces_only_selected_items(gen, bank):
    aug = _aug(gen, bank, p=0.5, seed=11)
    batch = torch.rand(8, 3, *GEN_HW)
    out = aug(batch)
    apply = aug.last_params["apply"]
    assert 0 < apply.sum() < 8, "seed 11 should select some but not all items"
    for i in range(8):
        if apply[i]:
            assert (out[i] - batch[i]).abs().mean() > 0.05
        else:
            assert torch.equal(out[i], batch[i])
    # the selected items are the generator's images for their seeds (independent of batch composition)
    expected = _direct(gen, bank, batch, aug.last_params)
    torch.testing.assert_close(out[torch.from_numpy(apply)], expected, atol=2e-3, rtol=0)


def test_inside_compose_on_pil_tensor_and_batch_with_labels(gen, bank):
    aug = _aug(gen, bank, p=1.0, seed=0)
    pipeline = v2.Compose(
        [
            aug,
            v2.RandomHorizontalFlip(p=0.5),
            v2.Resize((64, 32)),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.RandomErasing(p=0.5),
        ]
    )
    # PIL input at a size other than the generator's (it is resized there and back)
    pil = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 64, 3), dtype=np.uint8))
    sample = {"img": pil, "pid": 17, "camid": 2, "impath": "0017_c3s1_000001_01.jpg", "meta": {"k": [1, 2]}}
    out = pipeline(sample)
    assert out["pid"] == 17 and out["camid"] == 2 and out["impath"] == sample["impath"]
    assert out["meta"] == {"k": [1, 2]}
    assert isinstance(out["img"], tv_tensors.Image) and out["img"].shape == (3, 64, 32)
    # the same PIL through the augmentation alone stays PIL at its own size
    alone = _aug(gen, bank, p=1.0, seed=0)(pil)
    assert isinstance(alone, PIL.Image.Image) and alone.size == pil.size and alone.mode == "RGB"
    assert np.abs(np.asarray(alone, np.float32) - np.asarray(pil, np.float32)).mean() > 10
    # (3, H, W) tensor + label tuple
    img, label = pipeline(torch.rand(3, 128, 64), 5)
    assert label == 5 and img.shape == (3, 64, 32)
    # (B, 3, H, W) batch + label tensor (a pure tensor beside an explicit image passes through)
    pids = torch.tensor([1, 2, 3])
    out_b, out_pids = pipeline(tv_tensors.Image(torch.rand(3, 3, 128, 64)), pids)
    assert out_b.shape == (3, 3, 64, 32) and out_pids is pids


def test_same_seed_same_output_and_counter_advances(gen, bank):
    batch = torch.rand(4, 3, *GEN_HW)
    a, b = _aug(gen, bank, p=0.7, seed=5), _aug(gen, bank, p=0.7, seed=5)
    first_a, first_b = a(batch), b(batch)
    assert torch.equal(first_a, first_b)
    second_a = a(batch)
    assert not torch.equal(first_a, second_a)  # call 1's draws differ from call 0's
    a.reset()
    assert torch.equal(a(batch), first_a)
    other = _aug(gen, bank, p=0.7, seed=6)(batch)
    assert not torch.equal(other, first_a)
    # a torch.Generator works too
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(_aug(gen, bank, p=1.0, seed=g1)(batch), _aug(gen, bank, p=1.0, seed=g2)(batch))
    # seed=None follows torch's global RNG
    torch.manual_seed(1)
    x1 = _aug(gen, bank, p=1.0)(batch)
    torch.manual_seed(1)
    assert torch.equal(_aug(gen, bank, p=1.0)(batch), x1)


def test_pose_keypoints_are_replaced_by_the_target_and_used_as_source(gen, bank):
    aug = _aug(gen, bank, p=1.0, seed=2)
    hw = (64, 32)
    src_pose = resize_keypoints(_poses(1, seed=9)[0], (128, 64), hw)
    img = tv_tensors.Image(torch.rand(3, *hw))
    kps = PoseKeypoints(torch.from_numpy(src_pose), canvas_size=hw)
    out_img, out_kps, pid = aug(img, kps, 3)
    assert pid == 3
    assert type(out_kps) is PoseKeypoints and tuple(out_kps.canvas_size) == hw
    expected = bank.get(aug.last_params["pose_index"], size=hw)[0]
    np.testing.assert_allclose(out_kps.numpy(), expected, atol=1e-5)
    assert not np.allclose(out_kps.numpy(), src_pose)
    # the source pose went to the generator (rescaled to its frame)
    small = torch.nn.functional.interpolate(
        img[None].as_subclass(torch.Tensor), size=GEN_HW, mode="bilinear", antialias=True, align_corners=False
    )
    src_small = torch.from_numpy(resize_keypoints(src_pose, hw, GEN_HW))[None]
    with_src = _direct(gen, bank, small, aug.last_params, source_kps=src_small)
    without = _direct(gen, bank, small, aug.last_params)

    # the transform's image is the generator's, resized back: exactly that with the source pose, not without
    def back(x: torch.Tensor) -> torch.Tensor:
        return v2.functional.resize(x, list(hw), antialias=True).clamp(0, 1)[0]

    got = out_img.as_subclass(torch.Tensor)
    torch.testing.assert_close(got, back(with_src), atol=1e-5, rtol=0)
    assert (got - back(without)).abs().max() > 1e-3
    # batch: (B, 18, 2) keypoints, only selected rows replaced
    aug_half = _aug(gen, bank, p=0.5, seed=11)
    poses = torch.from_numpy(resize_keypoints(_poses(8, seed=4), (128, 64), hw))
    _, out_b = aug_half(tv_tensors.Image(torch.rand(8, 3, *hw)), PoseKeypoints(poses, canvas_size=hw))
    apply = aug_half.last_params["apply"]
    np.testing.assert_array_equal(out_b.numpy()[~apply], poses.numpy()[~apply])
    np.testing.assert_allclose(
        out_b.numpy()[apply], bank.get(aug_half.last_params["pose_index"], size=hw)[apply], atol=1e-5
    )


def test_uint8_in_uint8_out_and_values_match_float_path(gen, bank):
    u8 = torch.randint(0, 256, (2, 3, *GEN_HW), dtype=torch.uint8)
    out = _aug(gen, bank, p=1.0, seed=4)(u8)
    assert out.dtype == torch.uint8 and out.shape == u8.shape
    ref = _aug(gen, bank, p=1.0, seed=4)(u8.float() / 255)
    assert (out.float() - ref * 255).abs().max() <= 1.0


def test_bad_inputs_raise_clear_errors(gen, bank):
    aug = _aug(gen, bank, p=1.0, seed=0)
    with pytest.raises(ValueError, match=r"\(3, H, W\) or \(B, 3, H, W\)"):
        aug(torch.rand(2, 2, 3, 32, 16))
    with pytest.raises(ValueError, match="3-channel"):
        aug(torch.rand(1, 32, 16))
    with pytest.raises(ValueError, match="p must be in"):
        PoseTransferAugment(gen, bank, p=1.5)
    kps17 = tv_tensors.KeyPoints(torch.zeros(17, 2), canvas_size=GEN_HW)
    with pytest.raises(ValueError, match="not COCO-18"):
        aug(tv_tensors.Image(torch.rand(3, *GEN_HW)), kps17)


def test_batch_transform_hook_for_the_torchreid_engine(gen, bank):
    imgs, pids = torch.rand(3, 3, 64, 32), torch.tensor([4, 4, 9])
    out = _aug(gen, bank, p=1.0, seed=8).batch_transform(imgs, pids)
    assert isinstance(out, torch.Tensor) and out.shape == imgs.shape
    assert torch.equal(out, _aug(gen, bank, p=1.0, seed=8)(imgs))


# --------------------------------------------------------------------------------------------------
# The Python API as users call it (issue 27 item 8): what it cannot use is refused, naming the argument
# --------------------------------------------------------------------------------------------------
def test_scalar_guidance_means_both_weights(gen, bank):
    batch = torch.rand(2, 3, *GEN_HW)
    aug = _aug(gen, bank, p=1.0, seed=5, guidance=3.0)
    assert aug.guidance == (3.0, 3.0)
    assert torch.equal(aug(batch), _aug(gen, bank, p=1.0, seed=5, guidance=(3.0, 3.0))(batch))
    assert _aug(gen, bank, guidance=np.float32(1.5)).guidance == (1.5, 1.5)
    assert _aug(gen, bank, guidance=[1, 2]).guidance == (1.0, 2.0)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(guidance=(1, 2, 3)), ValueError, r"guidance must be a number w .* got 3 values"),
        (dict(guidance=(2.0,)), ValueError, "guidance must be"),
        (dict(guidance="2"), TypeError, "guidance must be"),
        (dict(guidance=("a", 1)), TypeError, "guidance must be"),
        (dict(guidance=float("nan")), ValueError, "guidance weights must be finite"),
        (dict(guidance=(1.0, float("inf"))), ValueError, "guidance weights must be finite"),
        (dict(p=float("nan")), ValueError, r"p must be in \[0, 1\]"),
        (dict(p="0.5"), TypeError, "p must be a number"),
        (dict(p=True), TypeError, "p must be a number"),
        (dict(steps=2.5), TypeError, "steps must be an integer"),
        (dict(steps=0), ValueError, "steps must be an integer >= 1"),
        (dict(refiner_steps=0), ValueError, "refiner_steps"),
        (dict(sampler="nope"), ValueError, "sampler must be one of"),
        (dict(sampler=3), ValueError, "sampler must be one of"),
        (dict(sampling="random"), ValueError, "sampling must be one of"),
        (dict(source_keypoints=True), ValueError, "source_keypoints"),
        (dict(seed=-1), ValueError, "seed must be an integer >= 0"),
        (dict(seed=1.5), TypeError, "seed must be an integer"),
        (dict(seed="0"), TypeError, "seed must be an integer"),
    ],
)
def test_bad_arguments_are_refused_naming_the_argument(gen, bank, kwargs, error, match):
    with pytest.raises(error, match=match):
        _aug(gen, bank, **kwargs)


def test_bad_generator_or_bank_is_a_type_error(gen, bank):
    with pytest.raises(TypeError, match="pose_bank must be a PoseBank"):
        PoseTransferAugment(gen, _poses(4))
    with pytest.raises(TypeError, match="generator must be a PoseTransferGenerator"):
        PoseTransferAugment("ckpt/", bank)


_IMG = (3, *GEN_HW)


@pytest.mark.parametrize("p", [1.0, 0.0])
@pytest.mark.parametrize(
    "image, error, match",
    [
        (
            torch.randint(0, 256, _IMG, dtype=torch.int64),
            TypeError,
            r"uint8 .* or floating point .* torch\.int64",
        ),
        (torch.randint(0, 2, _IMG, dtype=torch.bool), TypeError, r"torch\.bool"),
        (torch.randint(0, 256, (2, *_IMG), dtype=torch.int32), TypeError, r"torch\.int32"),
        (torch.rand(3, 0, 32), ValueError, r"empty image of shape \(3, 0, 32\)"),
        (torch.rand(2, 3, 32, 0), ValueError, "empty image"),
        (torch.rand(_IMG) * 255, ValueError, r"must lie in \[0, 1\], got values in \[0\.\d*, 25\d"),
        (torch.rand(_IMG) * 2 - 1, ValueError, r"must lie in \[0, 1\], got values in \[-0\.9"),
        (tv_tensors.Image(torch.rand(2, *_IMG) * 255), ValueError, r"must lie in \[0, 1\]"),
        (torch.full(_IMG, float("nan")), ValueError, "NaN"),
        (np.zeros((32, 16, 3), np.uint8), TypeError, "NumPy array is not an image"),
        (np.zeros((2, 3, 32, 16), np.float32), TypeError, "NumPy array is not an image"),
        (PIL.Image.new("RGB", (0, 5)), ValueError, "empty PIL image"),
    ],
    ids=[
        "int64",
        "bool",
        "int32-batch",
        "zero-height",
        "zero-width",
        "0-255",
        "-1-1",
        "tv-0-255",
        "nan",
        "numpy-hwc",
        "numpy-batch",
        "empty-pil",
    ],  # fmt: skip
)
def test_bad_images_are_refused_whatever_p(gen, bank, image, error, match, p):
    """Refused before any draw, at p=0 too: what a call accepts does not depend on the dice."""
    aug = _aug(gen, bank, p=p, seed=0)
    with pytest.raises(error, match=match):
        aug(image)
    assert aug.calls == 0


def test_a_call_without_an_image_is_refused(gen, bank):
    aug = _aug(gen, bank, p=1.0, seed=0)
    with pytest.raises(TypeError, match="no image in the input"):
        aug(7)
    with pytest.raises(TypeError, match="NumPy array is not an image"):
        aug(np.zeros((32, 16, 3), np.uint8), 7)


def test_documented_conversions_stay(gen, bank):
    """uint8, PIL and float in [0, 1] (a resampling overshoot within the tolerance included) still work;
    a NumPy label beside an image passes through."""
    aug = _aug(gen, bank, p=1.0, seed=2)
    over = torch.rand(2, *_IMG) * 1.005 - 0.002
    out = aug(over)
    assert out.shape == over.shape and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    assert aug(torch.rand(2, *_IMG).half()).dtype == torch.float16
    assert aug(torch.randint(0, 256, _IMG, dtype=torch.uint8)).dtype == torch.uint8
    pil, label = aug(PIL.Image.new("L", (16, 32), 99), np.array([3]))
    assert isinstance(pil, PIL.Image.Image) and pil.mode == "RGB" and label.tolist() == [3]


def test_batch_transform_needs_one_pid_per_image(gen, bank):
    aug = _aug(gen, bank, p=1.0, seed=8)
    imgs = torch.rand(2, *_IMG)
    with pytest.raises(ValueError, match="one id per image, got 3 for a batch of 2"):
        aug.batch_transform(imgs, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="one id per image"):
        aug.batch_transform(imgs, torch.tensor(1))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\) tensor, got shape \(3, 32, 16\)"):
        aug.batch_transform(imgs[0], None)
    with pytest.raises(TypeError, match=r"\(B, 3, H, W\) tensor, got list"):
        aug.batch_transform([imgs[0]], None)
    assert aug.batch_transform(imgs, [4, 9]).shape == imgs.shape


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(ratio=float("nan")), ValueError, "ratio must be a finite number >= 0, got nan"),
        (dict(ratio=float("inf")), ValueError, "ratio must be a finite number"),
        (dict(ratio=-0.5), ValueError, "ratio must be a finite number >= 0"),
        (dict(ratio="0.5"), TypeError, "ratio must be a finite number"),
        (dict(seed=-1), ValueError, "seed must be an integer >= 0"),
        (dict(seed=0.5), TypeError, "seed must be an integer"),
        (dict(transform="resize"), TypeError, "transform must be callable"),
    ],
)
def test_dataset_refuses_bad_arguments_naming_them(gen, bank, kwargs, error, match):
    from posereid.augment.dataset import PoseAugmentedDataset

    base = [(f"/data/{i + 1:04d}_c1s1_000000_01.jpg", i, 0) for i in range(4)]
    assert len(PoseAugmentedDataset(base, generator_augment=_aug(gen, bank), ratio=0.5)) == 6
    with pytest.raises(error, match=match):
        PoseAugmentedDataset(base, generator_augment=_aug(gen, bank), **kwargs)
    with pytest.raises(TypeError, match="synthetic_dir must be a folder path"):
        PoseAugmentedDataset(base, synthetic_dir=3)
