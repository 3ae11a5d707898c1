"""One run per output (issue 15 item 5): ``generate`` (per shard), ``train-generator``, ``filter`` and
``reid-gain`` hold a lock on their output; a second run stops at once naming the holder, a killed holder's
lock is taken over, and the shards of one folder still run in parallel.

Concurrent runs are real processes: forked children (no re-import cost) whose generator waits on an event
inside its first ``generate`` call, i.e. while the run holds its lock and is doing the work, and a plain
``python -c`` process for the kill test.
"""

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from posereid.augment.generate import GenerateConfig, generate_offline, manifest_paths
from posereid.experiments.cli import main as cli_main
from posereid.models.locks import (
    FILTER_LOCK_NAME,
    LOCK_NAME,
    OutputLock,
    OutputLockedError,
    holder_path,
    output_lock,
    read_holder,
    shard_lock_name,
)

PER_IMAGE = 2
TRAIN_IMAGES = 6  # synth-market --train-ids 3 --cameras 2 --per-camera 1
PLANNED = TRAIN_IMAGES * PER_IMAGE
FORK = multiprocessing.get_context("fork")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from posereid.models.contract import load_generator
    from posereid.models.pidm import PIDMPipeline

    tmp = tmp_path_factory.mktemp("locks")
    market = tmp / "market"
    argv = ["synth-market", str(market), "--train-ids", "3", "--test-ids", "2", "--cameras", "2"]
    argv += ["--per-camera", "1", "--height", "32", "--width", "16", "--no-progress"]
    assert cli_main(argv) == 0
    torch.manual_seed(0)
    PIDMPipeline.from_preset("tiny").save_pretrained(tmp / "ckpt")
    gen = load_generator(tmp / "ckpt", device="cpu")  # the weights the CLI loads: same run config
    return tmp, market, market / "market-annotation-train.csv", gen


def _kwargs(**kw):
    return dict(per_image=PER_IMAGE, steps=1, batch_size=4, progress=False, **kw)


def _cli(setup, out: Path, *extra: str) -> list[str]:
    tmp, market, ann, _ = setup
    return [
        "generate", "--generator", str(tmp / "ckpt"), "--data", str(market), "--annotations", str(ann),
        "--per-image", str(PER_IMAGE), "--out", str(out), "--steps", "1", "--batch-size", "4",
        "--no-progress", "--device", "cpu", *extra,
    ]  # fmt: skip


def _gated_child(gen, market, ann, out, shard, started, go) -> None:
    """A ``generate`` run whose first generator call waits for ``go``: it holds its lock meanwhile."""
    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool
    real = gen.generate

    def generate(*args, **kwargs):
        if not started.is_set():
            started.set()
            go.wait(60)
        return real(*args, **kwargs)

    gen.generate = generate
    generate_offline(GenerateConfig(out, shard=shard, **_kwargs()), gen, market, ann)


def _start(setup, out: Path, shard, go):
    _, market, ann, gen = setup
    started = FORK.Event()
    proc = FORK.Process(target=_gated_child, args=(gen, market, ann, out, shard, started, go))
    proc.start()
    return proc, started


def _wait(started, proc) -> None:
    deadline = time.monotonic() + 60
    while not started.wait(0.05):
        assert proc.is_alive() and time.monotonic() < deadline, "the first run never started generating"


def _check_folder(out: Path, planned: int) -> None:
    """images on disk = manifest lines = planned, no name twice, nothing half-written."""
    lines = [json.loads(x) for p in manifest_paths(out) for x in p.read_text().splitlines()]
    names = [e["name"] for e in lines]
    twice = [n for n, c in Counter(names).items() if c > 1]
    images = sorted(p.name for p in (out / "bounding_box_train").iterdir())
    assert not twice, f"{len(twice)} manifest line(s) written twice, e.g. {twice[0]}"
    assert len(lines) == len(images) == planned and sorted(names) == images
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def test_two_concurrent_generate_runs_do_the_work_once(setup, tmp_path, capsys):
    """The issue's case: a second ``posereid generate`` on a folder another run is writing stops at once
    (exit 1, one line naming the first run's host, pid and lock file); the folder ends with
    images = manifest lines = planned, no line twice (it ended with every line twice)."""
    out = tmp_path / "out"
    go = FORK.Event()
    first, started = _start(setup, out, None, go)
    try:
        _wait(started, first)
        capsys.readouterr()
        t0 = time.monotonic()
        rc = cli_main(_cli(setup, out))  # the second run, while the first is generating
        waited = time.monotonic() - t0
        err = capsys.readouterr().err.strip().splitlines()
    finally:
        go.set()
        first.join(120)
    assert first.exitcode == 0
    _check_folder(out, PLANNED)
    assert rc == 1 and len(err) == 1, err
    msg = err[0]
    assert (
        msg.startswith("posereid generate: error: ")
        and f"{out} is in use by another `posereid generate`" in msg
    )
    assert f"host {socket.gethostname()}, pid {first.pid}," in msg and "started 20" in msg
    assert f"lock file {out / shard_lock_name((0, 1))}" in msg and "--shard" in msg
    assert waited < 30  # it stopped, it did not generate
    assert not holder_path(out / shard_lock_name((0, 1))).exists()  # released with the run
    with output_lock(out, shard_lock_name((0, 1)), what="test"):  # and free again
        pass


def test_two_shards_run_in_parallel_and_each_shard_once(setup, tmp_path, capsys):
    """Shards 0/2 and 1/2 hold their own locks and generate at the same time; a third run of a shard
    that is running stops; together they write each image once."""
    out = tmp_path / "sharded"
    go = FORK.Event()
    runs = [_start(setup, out, (i, 2), go) for i in range(2)]
    try:
        for proc, started in runs:
            _wait(started, proc)  # both inside their generator call at once: in parallel
        holders = [read_holder(out / shard_lock_name((i, 2))) for i in range(2)]
        assert [h and h["pid"] for h in holders] == [proc.pid for proc, _ in runs]
        assert all(h["what"] == "posereid generate" for h in holders)
        capsys.readouterr()
        rc = cli_main(_cli(setup, out, "--shard", "1/2"))
        err = capsys.readouterr().err
    finally:
        go.set()
        for proc, _ in runs:
            proc.join(120)
    assert [proc.exitcode for proc, _ in runs] == [0, 0]
    _check_folder(out, PLANNED)
    assert sorted(p.name for p in manifest_paths(out)) == [
        "manifest.shard-0-of-2.jsonl",
        "manifest.shard-1-of-2.jsonl",
    ]
    assert rc == 1 and f"pid {runs[1][0].pid}," in err and shard_lock_name((1, 2)) in err


_HOLD = """
import sys, time
from posereid.models.locks import output_lock, shard_lock_name
with output_lock(sys.argv[1], shard_lock_name((0, 1)), what="posereid generate"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_killed_runs_lock_is_taken_over(setup, tmp_path):
    """``kill -9`` leaves the lock file and the holder record; the next run takes the lock over (the
    kernel dropped it with the process: no pid check, which could not see another host) and does the work."""
    _, market, ann, gen = setup
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_HOLD), str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(OutputLockedError, match=rf"pid {proc.pid}, .*--shard") as info:
            generate_offline(
                GenerateConfig(out, **_kwargs()), gen, market, ann
            )  # another process holds it: refused
        assert info.value.holder["pid"] == proc.pid and info.value.lock_file == out / shard_lock_name((0, 1))
        assert not (out / "bounding_box_train").exists()  # refused before writing anything
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    lock = out / shard_lock_name((0, 1))
    assert lock.exists() and read_holder(lock)["pid"] == proc.pid  # left behind by the dead run
    summary = generate_offline(GenerateConfig(out, **_kwargs()), gen, market, ann)
    assert summary.generated == summary.planned == PLANNED
    _check_folder(out, PLANNED)
    assert lock.exists() and not holder_path(lock).exists()


def _train_generator(setup, out: Path) -> None:
    from posereid.models.pidm import PIDMPipeline
    from posereid.models.training import PosePairDataset, PoseRecord, TrainConfig, train_generator
    from posereid.reid_integration.market1501 import read_patn_csv

    _, market, ann, _ = setup
    rows = read_patn_csv(ann, image_hw=None)
    records = [PoseRecord(market / "bounding_box_train" / n, int(n[:4]), k, name=n) for n, k in rows.items()]
    model = PIDMPipeline.from_preset("tiny")
    dataset = PosePairDataset(records, model.image_size)
    config = TrainConfig(steps=1, batch_size=2, sample_every=0, tensorboard=False, checkpoint_every=0)
    train_generator(model, dataset, config, out, progress=False)


def _filter(setup, out: Path) -> None:
    from posereid.augment.filter import filter_folder

    # the lock comes first: the identity filter is never used
    filter_folder(out, setup[1], identity_filter=None)


def _reid_gain(setup, out: Path) -> None:
    from posereid.experiments.reid_gain import GainConfig, run_gain

    # a folder that is not there: without the lock this fails fast instead of running the protocol
    run_gain(GainConfig(data=out / "no-such-market", out=out, progress=False, device="cpu"))


@pytest.mark.parametrize(
    ("command", "name", "run"),
    [
        ("posereid train-generator", LOCK_NAME, _train_generator),
        ("posereid filter", FILTER_LOCK_NAME, _filter),
        ("posereid reid-gain", LOCK_NAME, _reid_gain),
    ],
)
def test_other_commands_refuse_a_held_output(setup, tmp_path, command, name, run):
    """While a run of the command holds an output, another run on it stops before doing anything, naming
    the holder (here this process) and the lock file."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.jsonl").write_text("")
    with output_lock(out, name, what=command):  # another run of the command holds the output
        with pytest.raises(OutputLockedError) as info:
            run(setup, out)
    msg = str(info.value)
    assert msg.startswith(
        f"{out} is in use by another `{command}` (host {socket.gethostname()}, pid {os.getpid()},"
    )
    assert f"lock file {out / name}): wait for it to finish" in msg
    assert sorted(p.name for p in out.iterdir()) == sorted([name, "manifest.jsonl"])  # nothing done


def test_helper_waits_records_and_releases(tmp_path):
    out = tmp_path / "out"
    held = output_lock(out, what="posereid x").acquire()
    record = read_holder(out / LOCK_NAME)
    assert (
        record["pid"] == os.getpid()
        and record["host"] == socket.gethostname()
        and record["what"] == "posereid x"
    )
    assert "python" in record["command"] and record["started"][:2] == "20"
    second = OutputLock(out / LOCK_NAME, what="posereid y", advice="try later", timeout=0.2)
    t0 = time.monotonic()
    with pytest.raises(OutputLockedError, match=r"in use by another `posereid x` .*: try later$"):
        second.acquire()  # a timeout waits that long first
    assert time.monotonic() - t0 >= 0.15 and not second.is_held
    releaser = threading.Timer(0.3, held.release)
    releaser.start()
    waiting = OutputLock(out / LOCK_NAME, what="posereid y", timeout=30)
    with waiting:  # waits for the holder to finish, then records itself
        assert read_holder(out / LOCK_NAME)["what"] == "posereid y"
    releaser.join()
    assert (out / LOCK_NAME).exists() and not holder_path(out / LOCK_NAME).exists()
    with pytest.raises(RuntimeError, match="already held"):
        with waiting, waiting:
            pass
    assert not waiting.is_held


def test_annotate_uses_the_shared_lock(setup, tmp_path):
    from posereid.reid_integration.annotate import AnnotateLockedError, annotate_folder, lock_path

    out = tmp_path / "ann.csv"
    with OutputLock(lock_path(out), what="posereid annotate"):
        with pytest.raises(AnnotateLockedError) as info:
            annotate_folder(
                setup[1] / "query", out, estimator=lambda im: np.full((18, 2), -1.0), progress=False
            )
    assert isinstance(info.value, OutputLockedError) and isinstance(info.value, OSError)
    assert f"in use by another `posereid annotate` (host {socket.gethostname()}, pid {os.getpid()}," in str(
        info.value
    )
    assert info.value.lock_file == lock_path(out) and not out.exists()
