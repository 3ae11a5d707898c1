"""torchreid integration: datasets with synthetic images, registry, corrupt files, offline models,
checkpoints, the batch hook and the feature extractor."""

from __future__ import annotations

import signal
import urllib.request
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from posereid.reid_integration.market1501 import ImageReadError, MarketWriter, load_image
from posereid.reid_integration.torchreid_plugin import (
    BatchAugmentSoftmaxEngine,
    PosereidMarketDataset,
    ReidFeatureExtractor,
    SyntheticPidError,
    build_reid_model,
    build_reid_transforms,
    denormalize,
    load_reid_checkpoint,
    load_torchreid_checkpoint,
    normalize,
    register_posereid_dataset,
    registered_posereid_dataset,
    save_reid_checkpoint,
    scan_reid_lists,
    unregister_posereid_dataset,
)
from posereid.reid_integration.train import PosereidDataManager

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import torchreid.reid.data as trdata
    from torchreid.reid.utils import save_checkpoint as tr_save_checkpoint

PIDS = (3, 8, 12, 20)
COLOURS = {3: (220, 30, 30), 8: (30, 200, 40), 12: (30, 40, 220), 20: (230, 220, 30)}


def _img(rng, colour, hw=(32, 16)):
    noise = rng.normal(0, 20, (*hw, 3))
    return np.clip(np.asarray(colour)[None, None] + noise, 0, 255).astype(np.uint8)


def make_market(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    w = MarketWriter(root)
    for pid in PIDS:
        for k in range(3):
            w.add("train", _img(rng, COLOURS[pid]), pid, 1 + k % 2)
        w.add("query", _img(rng, COLOURS[pid]), pid, 1)
        for cam in (2, 3):
            w.add("gallery", _img(rng, COLOURS[pid]), pid, cam)
    w.add("train", _img(rng, (0, 0, 0)), -1, 1)  # junk never enters train
    w.add("gallery", _img(rng, (128, 128, 128)), 0, 4)  # distractor stays in the gallery
    w.add("gallery", _img(rng, (9, 9, 9)), -1, 4)  # junk is dropped from the gallery
    return root


def make_synthetic(root: Path, pids=(3, 12), per_pid: int = 2, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    w = MarketWriter(root)
    for pid in pids:
        for _ in range(per_pid):
            w.add("train", _img(rng, COLOURS.get(pid, (50, 50, 50))), pid, 5)
    return root


@contextmanager
def time_limit(seconds: int):
    """Fail instead of hanging (torchreid's read_image loops forever on a corrupt JPEG)."""

    def _raise(*_):
        raise TimeoutError(f"took more than {seconds} s (hang?)")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def market(tmp_path):
    return make_market(tmp_path / "market")


def test_synthetic_images_join_source_identities(market, tmp_path):
    synth = make_synthetic(tmp_path / "synth")
    real = scan_reid_lists(market)
    both = scan_reid_lists(market, [synth])
    assert real.num_train_pids == both.num_train_pids == len(PIDS)  # no new identities
    assert len(real.train) == 12 and len(both.train) == 16 and both.num_synthetic == 4
    assert all(Path(p).name[:2] != "-1" for p, *_ in both.train)  # junk kept out of train
    assert {p for p, *_ in both.query} and all(pid > 0 for _, pid, _, _ in both.query)
    assert sorted(pid for _, pid, _, _ in both.gallery).count(0) == 1  # distractor kept, junk dropped
    assert len(both.gallery) == 9

    ds = PosereidMarketDataset(lists=both, mode="train")
    assert ds.num_train_pids == len(PIDS)
    for i, (path, label, camid, dsetid) in enumerate(ds.train):
        is_synth = Path(path).parent.parent == synth
        assert ds.is_synthetic(i) == is_synth
        pid = int(Path(path).name[:4])
        assert ds.pid_labels[label] == pid  # synthetic images carry their source pid's label
        assert dsetid == 0
        if is_synth:
            assert camid == 4  # camera 5 in the file name, 0-based here
    item = ds[next(i for i in range(len(ds)) if ds.is_synthetic(i))]
    assert item["synthetic"] is True and item["img"].size == (16, 32)


def test_synthetic_unknown_pid_is_a_clear_error(market, tmp_path):
    synth = make_synthetic(tmp_path / "bad", pids=(3, 99))
    with pytest.raises(SyntheticPidError, match=r"0099_c5s1.*pid 99.*not an identity"):
        scan_reid_lists(market, [synth])
    distractor = make_synthetic(tmp_path / "zero", pids=(0,))
    with pytest.raises(SyntheticPidError, match="pid 0"):
        scan_reid_lists(market, [distractor])


def test_registered_dataset_works_with_torchreid_datamanager(market, tmp_path):
    synth = make_synthetic(tmp_path / "synth")
    seen = []

    def train_tf(img):  # any callable on the PIL image (torchreid's transforms= only takes names)
        seen.append(img.size)
        return v2.functional.to_dtype(v2.functional.to_image(img), torch.float32, scale=True)

    name = "posereid_test_market"
    try:
        first = register_posereid_dataset(name, market, [synth], train_transform=lambda img: 1 / 0)
        again = register_posereid_dataset(name, market, [synth], train_transform=train_tf)  # replaces
        assert registered_posereid_dataset(name) is again is not first
        with pytest.raises(ValueError, match="built-in"):
            register_posereid_dataset("market1501", market)
        dm = trdata.ImageDataManager(
            root="unused",
            sources=name,
            height=32,
            width=16,
            batch_size_train=4,
            batch_size_test=8,
            workers=0,
            use_gpu=False,
        )
        assert dm.num_train_pids == len(PIDS)
        train_set = dm.train_loader.dataset
        assert len(train_set.train) == 16 and train_set.num_synthetic == 4
        batch = next(iter(dm.train_loader))
        assert batch["img"].shape == (4, 3, 32, 16) and seen
        assert batch["synthetic"].dtype == torch.bool
        assert len(dm.test_loader[name]["gallery"].dataset) == 9
    finally:
        unregister_posereid_dataset(name)
    assert registered_posereid_dataset(name) is None
    with pytest.raises(ValueError, match="unregistered"):
        trdata.datasets.init_image_dataset(name, root="unused", mode="train")


def test_corrupt_jpeg_rejected_up_front_without_hanging(market):
    bad = market / "bounding_box_test" / "0008_c4s1_000000_01.jpg"
    good_bytes = next((market / "bounding_box_test").glob("0003_*.jpg")).read_bytes()
    bad.write_bytes(good_bytes[: len(good_bytes) // 3])  # truncated JPEG
    with time_limit(20):
        with pytest.raises(ImageReadError, match="0008_c4s1_000000_01.jpg"):
            scan_reid_lists(market, strict=True)
        lists = scan_reid_lists(market)  # the default batch policy: skipped and counted
    assert lists.skipped["corrupt"] == 1 and lists.skipped["stray_file"] == 0
    assert str(bad) not in {p for p, *_ in lists.gallery} and len(lists.gallery) == 9
    # a file that goes bad after the scan raises at read time instead of looping like read_image
    ds = PosereidMarketDataset(lists=lists, mode="gallery")
    victim = Path(ds.data[0][0])
    victim.write_bytes(b"")
    with time_limit(20), pytest.raises(ImageReadError, match=victim.name):
        ds[0]


def test_models_build_offline(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:1]}")

    import gdown

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(torch.utils.model_zoo, "load_url", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(gdown, "download", no_network)

    osnet = build_reid_model("osnet_x0_25", 7)
    assert osnet.classifier.out_features == 7
    # a local torchvision-style ImageNet state dict initialises resnet50's backbone, not its classifier
    import torchvision

    tv = torchvision.models.resnet50(weights=None)
    torch.nn.init.constant_(tv.conv1.weight, 0.125)
    torch.save(tv.state_dict(), tmp_path / "resnet50_imagenet.pth")
    r50 = build_reid_model("resnet50", 5, pretrained=tmp_path / "resnet50_imagenet.pth")
    assert torch.all(r50.conv1.weight == 0.125)
    assert r50.classifier.out_features == 5
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        build_reid_model("osnet_x0_25", 7, pretrained=tmp_path / "nowhere.safetensors")


def test_checkpoint_round_trip_and_feature_extractor(tmp_path):
    torch.manual_seed(0)
    model = build_reid_model("osnet_x0_25", 4)
    meta = {
        "model": "osnet_x0_25",
        "num_classes": 4,
        "loss": "softmax",
        "height": 64,
        "width": 32,
        "rank1": np.float32(0.75),
    }
    path = save_reid_checkpoint(tmp_path / "ckpt" / "model.safetensors", model, meta=meta)
    assert not list(path.parent.glob("*.tmp-*"))
    sd, meta2 = load_reid_checkpoint(path)
    assert meta2["rank1"] == pytest.approx(0.75) and meta2["height"] == 64
    for k, v in model.state_dict().items():
        assert torch.equal(sd[k], v), k
    # the same file initialises a fresh model completely
    clone = build_reid_model("osnet_x0_25", 4, pretrained=path)
    assert all(torch.equal(a, b) for a, b in zip(clone.state_dict().values(), model.state_dict().values()))

    ext = ReidFeatureExtractor.from_checkpoint(path, device="cpu", batch_size=3)
    imgs = torch.rand(5, 3, 128, 64)  # resized to the checkpoint's 64x32
    f = ext(imgs)
    assert f.shape == (5, 512)
    torch.testing.assert_close(f.norm(dim=1), torch.ones(5))
    pil = [v2.functional.to_pil_image(im) for im in imgs]
    f_pil = ext(pil)
    assert torch.nn.functional.cosine_similarity(f, f_pil).min() > 0.99  # PIL path agrees (8-bit rounding)
    model.eval()
    x = torch.nn.functional.interpolate(imgs, size=(64, 32), mode="bilinear", antialias=True)
    ref = torch.nn.functional.normalize(model(normalize(x)), dim=1)
    torch.testing.assert_close(f, ref, rtol=1e-4, atol=1e-5)


def test_torchreid_checkpoint_read_safely(tmp_path):
    model = build_reid_model("osnet_x0_25", 4)
    opt = torch.optim.Adam(model.parameters())
    cmc = np.array([0.5, 0.75], dtype=np.float32)
    state = {"state_dict": model.state_dict(), "epoch": 3, "rank1": cmc[0], "optimizer": opt.state_dict()}
    tr_save_checkpoint(state, str(tmp_path))
    path = tmp_path / "model.pth.tar-3"
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path, weights_only=True)  # the trap: numpy scalar rank1
    ckpt = load_torchreid_checkpoint(path)
    assert float(ckpt["rank1"]) == 0.5 and ckpt["epoch"] == 3
    assert torch.equal(ckpt["state_dict"]["conv1.conv.weight"], model.state_dict()["conv1.conv.weight"])
    clone = build_reid_model("osnet_x0_25", 4, pretrained=path)
    assert torch.equal(clone.conv1.conv.weight, model.conv1.conv.weight)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state_dict": {}, "x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match="Weights only load failed"):
        load_torchreid_checkpoint(tmp_path / "evil.pth")


def test_batch_hook_sees_unit_images_and_model_sees_its_output(market):
    lists = scan_reid_lists(market)
    train_tf, test_tf = build_reid_transforms(32, 16)
    dm = PosereidDataManager(lists, train_transform=train_tf, test_transform=test_tf, batch_size=100, seed=0)
    assert dm.batch_size == 12  # capped to the tiny set, so one full batch per epoch
    torch.manual_seed(0)
    model = build_reid_model("osnet_x0_25", dm.num_train_pids)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    calls = {}

    def hook(imgs, pids):
        calls["in"], calls["pids"] = imgs.clone(), pids.clone()
        return 1.0 - imgs  # a visible change

    seen = {}
    model.register_forward_pre_hook(lambda mod, args: seen.__setitem__("x", args[0].detach().clone()))
    engine = BatchAugmentSoftmaxEngine(dm, model, opt, use_gpu=False, batch_transform=hook)
    data = next(iter(dm.train_loader))
    summary = engine.forward_backward(data)
    assert np.isfinite(summary["loss"])
    x = calls["in"]
    # the hook got the decoded pixels, not ImageNet-normalised values
    first = load_image(data["impath"][0])
    expected = v2.functional.to_dtype(v2.functional.to_image(first), torch.float32, scale=True)
    torch.testing.assert_close(x[0], expected, atol=1e-5, rtol=0)
    assert torch.equal(calls["pids"], data["pid"])
    torch.testing.assert_close(seen["x"], normalize(1.0 - x))
    torch.testing.assert_close(denormalize(seen["x"]), 1.0 - x, atol=1e-5, rtol=0)

    bad = BatchAugmentSoftmaxEngine(dm, model, opt, use_gpu=False, batch_transform=lambda i, p: i[:1])
    with pytest.raises(ValueError, match="batch_transform must return"):
        bad.forward_backward(data)
