"""Pose vocabulary: flips, geometry, pose maps, torchvision integration."""

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from posereid.models import pose as P


def _pose(rng: np.random.Generator, h: int = 128, w: int = 64, n_missing: int = 3) -> np.ndarray:
    kps = np.stack([rng.integers(0, w, 18), rng.integers(0, h, 18)], -1).astype(np.float32)
    kps[rng.choice(18, n_missing, replace=False)] = -1
    return kps


def test_flip_twice_is_identity_and_swaps_labels():
    rng = np.random.default_rng(0)
    kps = _pose(rng)
    once = P.flip_keypoints(kps, 64)
    np.testing.assert_array_equal(P.flip_keypoints(once, 64), kps)
    # right shoulder (2) becomes left shoulder (5) mirrored
    if (kps[2] >= 0).all():
        np.testing.assert_allclose(once[5], [63 - kps[2, 0], kps[2, 1]])
    # missing joints stay missing (never mapped to the border)
    assert ((once < 0).all(-1) == (kps[list(P.FLIP_PERMUTATION)] < 0).all(-1)).all()
    assert (once[(once >= 0).all(-1)][:, 0] <= 63).all()


def test_flip_permutation_is_an_involution_and_pairs_names():
    perm = np.array(P.FLIP_PERMUTATION)
    np.testing.assert_array_equal(perm[perm], np.arange(18))
    for i, j in enumerate(perm):
        a, b = P.KEYPOINT_NAMES[i], P.KEYPOINT_NAMES[j]
        if i != j:
            assert a[2:] == b[2:] and {a[0], b[0]} == {"r", "l"}


def test_as_keypoints_rejects_bad_shape_and_normalises_missing():
    with pytest.raises(P.KeypointError, match="file.csv line 3"):
        P.as_keypoints(np.zeros((17, 2)), source="file.csv line 3")
    k = np.zeros((18, 2))
    k[4] = [-1, 5]
    k[5] = [np.nan, 3]
    out = P.as_keypoints(k)
    assert (out[4] == -1).all() and (out[5] == -1).all() and out.dtype == np.float32


def test_resize_crop_affine_keep_missing_and_drop_leavers():
    rng = np.random.default_rng(1)
    kps = _pose(rng)
    up = P.resize_keypoints(kps, (128, 64), (256, 128))
    back = P.resize_keypoints(up, (256, 128), (128, 64))
    vis = P.visible_mask(kps)
    np.testing.assert_allclose(back[vis], kps[vis], atol=1e-4)
    assert (back[~vis] == -1).all()
    crop = P.crop_keypoints(kps, top=10, left=5, height=50, width=30)
    inside = vis & (kps[:, 0] >= 5) & (kps[:, 0] < 35) & (kps[:, 1] >= 10) & (kps[:, 1] < 60)
    np.testing.assert_allclose(crop[inside], kps[inside] - [5, 10])
    assert (crop[~inside] == -1).all()
    shift = P.affine_keypoints(kps, np.array([[1, 0, 100], [0, 1, 0]]), (128, 64))
    assert (shift == -1).all()  # everything moved off the canvas


def test_normalize_pose_is_translation_and_scale_invariant():
    rng = np.random.default_rng(2)
    kps = _pose(rng, n_missing=0)
    v1, m1 = P.normalize_pose(kps)
    moved = kps * 2.0 + np.array([7.0, 3.0], dtype=np.float32)
    v2_, m2 = P.normalize_pose(moved)
    np.testing.assert_allclose(v1, v2_, atol=1e-4)
    assert m1.all() and v1.shape == (36,)


def test_pose_maps_peak_at_joint_and_empty_when_missing():
    kps = np.full((2, 18, 2), -1, np.float32)
    kps[0, 1] = [20, 30]
    kps[0, 2] = [10, 30]
    maps = P.render_pose_maps(kps, 64, 32)
    assert maps.shape == (2, P.POSE_CHANNELS, 64, 32)
    assert maps[0, 1, 30, 20] == pytest.approx(1.0)
    assert maps[0, 1].argmax() == 30 * 32 + 20
    assert maps[0, 0].abs().sum() == 0  # nose missing
    assert maps[1].abs().sum() == 0  # all missing
    limb = P.LIMBS.index((1, 2))
    assert maps[0, 18 + limb, 30, 15] == pytest.approx(1.0)  # midpoint of the neck→r_shoulder segment
    assert maps[0, 18 + limb, 10, 15] < 1e-3
    # the single-pose form matches the batch
    torch.testing.assert_close(P.render_pose_maps(kps[0], 64, 32), maps[0])


def test_torchvision_flip_on_posekeypoints_swaps_left_right():
    rng = np.random.default_rng(3)
    kps = _pose(rng)
    img = tv_tensors.Image(torch.rand(3, 128, 64))
    pk = P.PoseKeypoints(torch.from_numpy(kps), canvas_size=(128, 64))
    out_img, out_k = v2.RandomHorizontalFlip(p=1.0)(img, pk)
    assert isinstance(out_k, P.PoseKeypoints)
    np.testing.assert_allclose(out_k.numpy(), P.flip_keypoints(kps, 64))
    torch.testing.assert_close(out_img, img.flip(-1))


def test_torchvision_resize_and_crop_keep_missing_missing():
    rng = np.random.default_rng(4)
    kps = _pose(rng)
    pk = P.PoseKeypoints(torch.from_numpy(kps), canvas_size=(128, 64))
    img = tv_tensors.Image(torch.rand(3, 128, 64))
    _, out = v2.Compose([v2.Resize((256, 128)), v2.CenterCrop((200, 100))])(img, pk)
    miss = (torch.from_numpy(kps) < 0).all(-1)
    assert (out[miss] == -1).all()
    vis_out = (out >= 0).all(-1)
    assert (out[vis_out][:, 0] < 100).all() and (out[vis_out][:, 1] < 200).all()


def test_every_geometric_v2_transform_keeps_missing_missing_and_drops_leavers():
    """Pad / affine shift the visible joints exactly; a joint pushed off the canvas becomes missing; a
    missing joint (-1) is never turned into a real point by the transform's arithmetic."""
    kps = np.full((18, 2), -1, np.float32)
    kps[1], kps[8], kps[10] = [32, 20], [30, 80], [60, 120]
    pk = P.PoseKeypoints(torch.from_numpy(kps), canvas_size=(128, 64))
    padded = v2.functional.pad(pk, [5, 7])  # left/right 5, top/bottom 7
    assert tuple(padded.canvas_size) == (142, 74) and isinstance(padded, P.PoseKeypoints)
    np.testing.assert_allclose(padded[[1, 8, 10]].numpy(), kps[[1, 8, 10]] + [5, 7])
    assert (padded[0] == -1).all()
    moved = v2.functional.affine(pk, angle=0.0, translate=[6, 0], scale=1.0, shear=[0.0, 0.0])
    np.testing.assert_allclose(moved[[1, 8]].numpy(), kps[[1, 8]] + [6, 0], atol=1e-4)
    assert (moved[10] == -1).all()  # x = 66 left the 64-wide canvas
    missing = [j for j in range(18) if j not in (1, 8, 10)]
    for out in (padded, moved, v2.functional.vertical_flip(pk), v2.functional.rotate(pk, 3.0)):
        assert (out[missing] == -1).all()


def test_draw_skeleton_draws_limbs():
    kps = np.full((18, 2), -1, np.float32)
    kps[1] = [32, 20]
    kps[8] = [32, 80]
    img = P.draw_skeleton(None, kps, size=(128, 64))
    arr = np.asarray(img)
    assert arr[50, 32].sum() > 0 and arr[50, 5].sum() == 0


def test_joint_rounding_onto_border_is_clamped_not_half_missing():
    kps = np.full((18, 2), -1, np.float32)
    kps[1] = [0.2, 10]
    kps[2] = [63.0, 127.0]
    out = P.resize_keypoints(kps, (128, 64), (64, 32))  # 0.2 -> -0.15: rounds onto pixel 0
    assert (out[1] >= 0).all() and out[1, 0] == 0
    assert (out[2] >= 0).all() and out[2, 0] <= 31 and out[2, 1] <= 63
    vis = P.visible_mask(out)
    assert ((out[~vis] == -1).all()) and vis.sum() == 2


def test_torchvision_resize_matches_resize_keypoints_pixel_centres():
    rng = np.random.default_rng(5)
    kps = _pose(rng)
    pk = P.PoseKeypoints(torch.from_numpy(kps), canvas_size=(128, 64))
    img = tv_tensors.Image(torch.rand(3, 128, 64))
    _, out = v2.Resize((256, 128))(img, pk)
    assert tuple(out.canvas_size) == (256, 128) and isinstance(out, P.PoseKeypoints)
    np.testing.assert_allclose(out.numpy(), P.resize_keypoints(kps, (128, 64), (256, 128)), atol=1e-5)
    # a crop then resize is the crop's shift followed by the same pixel-centre rescale
    _, rc = v2.RandomResizedCrop((64, 32), scale=(0.99, 1.0), ratio=(0.5, 0.5))(img, pk)
    assert tuple(rc.canvas_size) == (64, 32)
    vis = P.visible_mask(rc.numpy())
    assert (rc.numpy()[~vis] == -1).all() and (rc.numpy()[vis] >= 0).all()
