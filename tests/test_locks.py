"""One run per output (issue 15 item 5): ``generate`` (per shard), ``train-generator``, ``filter`` and
``reid-gain`` hold a lock on their output; a second run stops at once naming the holder, a killed holder's
lock is taken over, and the shards of one folder still run in parallel.

One discipline for a generated folder (issue 27 items 2-3, :class:`GeneratedFolderLock`): ``filter`` has
the folder to itself, ``generate`` runs of one shard count share it, and a run of another shard count
stops; two incompatible runs started at the same moment end with one run and one refusal naming it.

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
    LOCK_NAME,
    GeneratedFolderLock,
    OutputLock,
    OutputLockedError,
    holder_path,
    is_lock_file,
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
        ("posereid filter", LOCK_NAME, _filter),
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
    assert [p.name for p in out.iterdir() if not is_lock_file(p.name)] == ["manifest.jsonl"]  # nothing done


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


# --------------------------------------------------------------------------------------------------
# One discipline for every writer of a generated folder (issue 27 items 2-3)
# --------------------------------------------------------------------------------------------------
def _mean_colour(images: torch.Tensor) -> torch.Tensor:
    """A deterministic stand-in for a re-ID model: the centred mean colour."""
    return images.mean(dim=(2, 3)) - 0.5


def _consistent(out: Path) -> int:
    """Images on disk = manifest lines = unique names (the issue's counts); returns the count."""
    lines = [json.loads(x)["name"] for p in manifest_paths(out) for x in p.read_text().splitlines()]
    images = sorted(
        p.name for d in ("bounding_box_train", "rejected") if (out / d).is_dir() for p in (out / d).iterdir()
    )
    assert len(images) == len(lines) == len(set(lines)), (len(images), len(lines), len(set(lines)))
    assert sorted(lines) == images
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    return len(images)


def _half_done(setup, out: Path) -> None:
    """An unsharded folder cut back to half its items, as a killed run leaves it (a resume does the rest)."""
    _, market, ann, gen = setup
    generate_offline(GenerateConfig(out, **_kwargs()), gen, market, ann)
    part = out / "manifest.jsonl"
    lines = part.read_text().splitlines(keepends=True)
    for line in lines[PLANNED // 2 :]:
        (out / "bounding_box_train" / json.loads(line)["name"]).unlink()
    part.write_text("".join(lines[: PLANNED // 2]))


def _racer(kind, setup, out, shard, barrier, started, go, results) -> None:
    """A ``generate`` (``kind`` "generate", shard ``shard``) or ``filter`` run that starts when every racer
    is ready and, once it holds the folder, waits for ``go`` inside its model; puts ``(pid, error)``."""
    torch.set_num_threads(1)
    _, market, ann, gen = setup

    def gated(fn):
        def call(*args, **kwargs):
            if not started.is_set():
                started.set()
                go.wait(60)
            return fn(*args, **kwargs)

        return call

    error = None
    try:
        barrier.wait(60)
        if kind == "filter":
            from posereid.augment.filter import IdentityFilter, filter_folder

            filter_folder(out, market, IdentityFilter(gated(_mean_colour)))
        else:
            gen.generate = gated(gen.generate)
            generate_offline(GenerateConfig(out, shard=shard, **_kwargs()), gen, market, ann)
    except OutputLockedError as exc:
        error = (str(exc), exc.holder and exc.holder.get("pid"))
    results.put((os.getpid(), error))


@pytest.mark.parametrize(
    "pair",
    [
        (("generate", (0, 1)), ("generate", (0, 2))),  # item 3: unsharded beside a shard of 2
        (("generate", (0, 2)), ("generate", (1, 3))),  # item 3: 2 shards beside 3 shards
        (("generate", (0, 1)), ("filter", None)),  # item 2
    ],
    ids=["1-vs-2-shards", "2-vs-3-shards", "generate-vs-filter"],
)
def test_incompatible_writers_started_together_one_runs_one_stops(setup, tmp_path, pair):
    """Two writers that must not share a folder, started at the same moment: one holds the folder (held
    here inside its model) and the other stops at once with an error naming it; then the folder has
    images on disk = manifest lines = unique names (before: both ran; 12 lines for 8 images, or a filter's
    rewrite over lines generate appended)."""
    out = tmp_path / "out"
    if any(kind == "filter" for kind, _ in pair):
        _half_done(setup, out)
    barrier, go, results = FORK.Barrier(2), FORK.Event(), FORK.Queue()
    procs = []
    for kind, shard in pair:
        started = FORK.Event()
        proc = FORK.Process(target=_racer, args=(kind, setup, out, shard, barrier, started, go, results))
        proc.start()
        procs.append((proc, started))
    try:
        deadline = time.monotonic() + 60
        done = {}
        while True:  # both decided: holding the folder (inside its model), or refused
            while not results.empty():
                pid, error = results.get()
                done[pid] = error
            holding = [proc for proc, started in procs if started.is_set()]
            if len(holding) + len(done) >= 2:
                break
            assert time.monotonic() < deadline, "the racers never got going"
            time.sleep(0.05)
        assert len(holding) == 1, f"{len(holding)} incompatible writers hold {out} at once"
        winner = holding[0]
        (loser,) = [proc for proc, _ in procs if proc is not winner]
        loser.join(30)
        while loser.pid not in done:
            pid, error = results.get(timeout=30)
            done[pid] = error
        message, holder_pid = done[loser.pid]
        assert holder_pid == winner.pid
        assert f"{out} is in use by another `posereid " in message and f"pid {winner.pid}," in message
        assert "command: " in message and "lock file " in message
    finally:
        go.set()
        for proc, _ in procs:
            proc.join(120)
    assert winner.exitcode == 0 and loser.exitcode == 0
    _consistent(out)


def _gated_filter(setup, out, started, go) -> None:
    """A ``filter`` run whose re-ID model waits for ``go``: it holds the folder meanwhile."""
    from posereid.augment.filter import IdentityFilter, filter_folder

    torch.set_num_threads(1)

    def extractor(images):
        if not started.is_set():
            started.set()
            go.wait(60)
        return _mean_colour(images)

    filter_folder(out, setup[1], IdentityFilter(extractor))


def test_generate_stops_while_filter_runs_naming_it(setup, tmp_path, capsys):
    """Item 2, filter first: ``posereid generate`` on a folder being filtered stops (exit 1, one line
    naming the filter's host, pid and command); the filter's rewrite keeps every image listed, and the
    generate run afterwards completes the folder (before: generate appended 6 lines the filter then wrote
    over)."""
    out = tmp_path / "out"
    _half_done(setup, out)
    go, started = FORK.Event(), FORK.Event()
    proc = FORK.Process(target=_gated_filter, args=(setup, out, started, go))
    proc.start()
    try:
        _wait(started, proc)
        capsys.readouterr()
        rc = cli_main(_cli(setup, out))
        err = capsys.readouterr().err.strip().splitlines()
    finally:
        go.set()
        proc.join(120)
    assert proc.exitcode == 0
    assert rc == 1 and len(err) == 1, err
    assert err[0].startswith(f"posereid generate: error: {out} is in use by another `posereid filter` ")
    assert f"host {socket.gethostname()}, pid {proc.pid}," in err[0] and "command: " in err[0]
    assert f"lock file {out / LOCK_NAME}" in err[0]
    assert _consistent(out) == PLANNED // 2  # the filter's rewrite lost no line
    assert cli_main(_cli(setup, out)) == 0  # and afterwards generate completes the folder
    _check_folder(out, PLANNED)


def test_filter_stops_while_generate_runs_naming_it(setup, tmp_path, monkeypatch, capsys):
    """Item 2, generate first: ``posereid filter`` on a folder being generated stops (exit 1, one line
    naming the generate run and its shard lock) without touching it; filtered afterwards, every image is
    scored (before: 28 of 40 images were never scored and the summary read like a finished filter)."""
    import posereid.augment.filter as F

    monkeypatch.setattr(F, "load_extractor", lambda *a, **k: _mean_colour)
    out = tmp_path / "out"
    _half_done(setup, out)
    go = FORK.Event()
    first, started = _start(setup, out, None, go)
    argv = ["filter", "--dir", str(out), "--data", str(setup[1]), "--reid-checkpoint", "x", "--device", "cpu"]
    try:
        _wait(started, first)
        before = sorted(p.read_bytes() for p in manifest_paths(out))
        capsys.readouterr()
        rc = cli_main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert sorted(p.read_bytes() for p in manifest_paths(out)) == before  # untouched
    finally:
        go.set()
        first.join(120)
    assert first.exitcode == 0
    assert rc == 1 and len(err) == 1, err
    assert err[0].startswith(f"posereid filter: error: {out} is in use by another `posereid generate` ")
    assert f"host {socket.gethostname()}, pid {first.pid}," in err[0] and "command: " in err[0]
    assert f"lock file {out / shard_lock_name((0, 1))}" in err[0]
    _check_folder(out, PLANNED)
    summary = F.filter_folder(out, setup[1], F.IdentityFilter(_mean_colour))
    assert summary.scored == PLANNED and summary.unlisted_images == 0


def test_generate_with_another_shard_count_stops_naming_the_running_shard(setup, tmp_path, capsys):
    """Item 3: ``generate --shard 0/3`` while shard 1/2 runs stops naming it and its count; shard 0/2 runs
    beside it; the folder then holds each image once (before: 12 manifest lines for 8 images)."""
    out = tmp_path / "out"
    go = FORK.Event()
    first, started = _start(setup, out, (1, 2), go)
    try:
        _wait(started, first)
        capsys.readouterr()
        rc = cli_main(_cli(setup, out, "--shard", "0/3"))
        err = capsys.readouterr().err.strip().splitlines()
        rc_unsharded = cli_main(_cli(setup, out))
        err_unsharded = capsys.readouterr().err
        assert cli_main(_cli(setup, out, "--shard", "0/2")) == 0  # the same count runs beside it
    finally:
        go.set()
        first.join(120)
    assert first.exitcode == 0
    assert rc == 1 and len(err) == 1, err
    assert (
        f"{out} is in use by another `posereid generate` (host {socket.gethostname()}, pid {first.pid},"
        in err[0]
    )
    assert f"lock file {out / shard_lock_name((1, 2))}" in err[0] and "as 2 shard(s), this run as 3" in err[0]
    assert (
        rc_unsharded == 1
        and f"pid {first.pid}," in err_unsharded
        and "as 2 shard(s), this run as 1" in err_unsharded
    )
    _check_folder(out, PLANNED)
    assert not list(out.glob("manifest.shard-*-of-3.jsonl")) and not (out / "manifest.jsonl").exists()


def test_generated_folder_lock_modes(tmp_path):
    """The discipline in one process: shards of one count share the folder, other counts and an exclusive
    writer are refused naming the holder, and everything is free again once released."""
    out = tmp_path / "gen"
    a = GeneratedFolderLock(out, what="posereid generate", shard=(0, 2)).acquire()
    b = GeneratedFolderLock(out, what="posereid generate", shard=(1, 2)).acquire()
    with pytest.raises(OutputLockedError, match=r"shard\(s\), this run as 3") as info:
        GeneratedFolderLock(out, what="posereid generate", shard=(2, 3)).acquire()
    assert info.value.holder["pid"] == os.getpid() and info.value.lock_file.name.startswith(".lock-shard-")
    with pytest.raises(OutputLockedError, match=r"another `posereid generate` .*2 generate runs in all"):
        GeneratedFolderLock(out, what="posereid filter").acquire()
    with pytest.raises(OutputLockedError, match=r"lock file .*\.lock-shard-1-of-2\)"):
        GeneratedFolderLock(out, what="posereid generate", shard=(1, 2)).acquire()
    a.release()
    b.release()
    with GeneratedFolderLock(out, what="posereid filter") as f:
        assert f.is_held
        with pytest.raises(OutputLockedError, match=r"another `posereid filter` .*lock file .*\.lock\)"):
            GeneratedFolderLock(out, what="posereid generate", shard=(0, 3)).acquire()
        with pytest.raises(OutputLockedError, match=r"another `posereid filter`"):
            GeneratedFolderLock(out, what="posereid filter").acquire()
    with GeneratedFolderLock(out, what="posereid generate", shard=(0, 3)):
        pass
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".holder")) == sorted(
        [".lock", ".lock-gate", ".lock-shard-0-of-2", ".lock-shard-1-of-2", ".lock-shard-0-of-3"]
    )
