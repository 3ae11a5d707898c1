"""A census of bad inputs across the command line and the Python API (issue 27, "Reliability, round 2").

Each case builds one bad (or legitimate but unusual) input in a temp folder on tiny models (the three
generator families' ``tiny`` presets, saved with ``save_pretrained``; a 64x32 ``synth-market`` folder),
runs it, and returns a verdict:

* **as promised**: a clear one-line error that names the file or argument and the problem (exit code 1 or
  2, no traceback without ``-v``; for the Python API a ``TypeError`` / ``ValueError`` whose message names
  the argument), or, where the input is legitimate, correct behaviour (two sources never share one output
  name; images on disk = manifest lines = unique names; ...);
* **not as promised**: anything else: silent acceptance of a wrong input, wrong or duplicated output, a
  traceback, a hang (every subprocess has a timeout), a bare library error that names neither file nor
  argument.

Command-line cases run ``python -m posereid.experiments.cli`` in a subprocess (which inherits
``PYTHONPATH``, so the census can be pointed at another checkout of ``posereid``); Python API cases run in
this process. The concurrency cases (issue 27 items 2 and 3) start two commands on one folder together and
then count images, manifest lines and unique names. Usage::

    python -m studies.bad_inputs --out DIR [--only NAME,...] [--keep]

writes ``DIR/bad_inputs.md`` (one table row per case: case, issue item, verdict, what happened) and
``DIR/bad_inputs.json``, and prints ``N tried, M as promised``. Item ``r1`` marks a promise of the earlier
reliability round that should still hold; ``1``-``10`` are the items of issue 27.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: seconds any one command may run before it counts as a hang
TIMEOUT = 120
#: address-space cap of every command (a huge model config must fail, not take the machine's memory)
MEMORY_LIMIT = 12 * 2**30
TRAIN_CSV = "market-annotation-train.csv"
TRAIN_DIR = "bounding_box_train"
FIRST = "0001_c1s1_000007_01.jpg"  # synth-market's first train image
OTHER = "0002_c1s1_000007_01.jpg"  # a train image of another identity
#: a tqdm bar in captured stderr
BAR_RE = re.compile(r"\d+%\|.*\|")


# --------------------------------------------------------------------------------------------------
# Verdicts and cases
# --------------------------------------------------------------------------------------------------
@dataclass
class Verdict:
    ok: bool
    what: str


@dataclass
class Case:
    name: str
    item: str
    description: str
    fn: Callable[[Ctx], Verdict]


CASES: list[Case] = []


def case(item: str, description: str) -> Callable[[Callable[[Ctx], Verdict]], Callable[[Ctx], Verdict]]:
    """Register a case: ``item`` is the issue item it probes (``r1``: an earlier round's promise)."""

    def wrap(fn: Callable[[Ctx], Verdict]) -> Callable[[Ctx], Verdict]:
        CASES.append(Case(fn.__name__, item, description, fn))
        return fn

    return wrap


def short(text: str, n: int = 100) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


# --------------------------------------------------------------------------------------------------
# Running commands
# --------------------------------------------------------------------------------------------------
@dataclass
class Run:
    rc: int | None
    out: str
    err: str
    seconds: float
    timed_out: bool = False

    def error_line(self, command: str) -> str | None:
        """The last ``posereid <command>: error: ...`` line (argparse's usage errors have the same start)."""
        lines = [ln for ln in self.err.splitlines() if ln.startswith(f"posereid {command}: error:")]
        return lines[-1] if lines else None

    def last_line(self) -> str:
        lines = [ln for ln in (self.err + "\n" + self.out).splitlines() if ln.strip()]
        return lines[-1] if lines else ""


def _limits(fsize: int | None = None) -> Callable[[], None]:
    def apply() -> None:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return apply


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def command(*args: object) -> list[str]:
    return [sys.executable, "-m", "posereid.experiments.cli", *(str(a) for a in args)]


def cli(*args: object, timeout: float = TIMEOUT, fsize: int | None = None, cwd: Path | None = None) -> Run:
    """Run ``posereid ARGS`` in a subprocess and capture everything."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
        preexec_fn=_limits(fsize), cwd=cwd, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
        return Run(proc.returncode, out, err, time.perf_counter() - t0)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return Run(None, out, err, time.perf_counter() - t0, timed_out=True)


class Background:
    """A command started now and collected later (the concurrency cases)."""

    def __init__(self, *args: object, log: Path) -> None:
        self.t0 = time.perf_counter()
        self.log = log
        self._out = open(log.with_suffix(".out"), "w")  # noqa: SIM115 - closed in wait()
        self._err = open(log.with_suffix(".err"), "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            command(*args), stdout=self._out, stderr=self._err, text=True, env=_env(), preexec_fn=_limits(),
            start_new_session=True,
        )  # fmt: skip
        self.ended: float | None = None

    def running(self) -> bool:
        if self.proc.poll() is None:
            return True
        if self.ended is None:
            self.ended = time.perf_counter()
        return False

    def wait(self, timeout: float = 3 * TIMEOUT) -> Run:
        timed_out = False
        try:
            self.proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - self.t0)))
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if self.ended is None:
            self.ended = time.perf_counter()
        self._out.close()
        self._err.close()
        return Run(
            None if timed_out else self.proc.returncode,
            self.log.with_suffix(".out").read_text(errors="replace"),
            self.log.with_suffix(".err").read_text(errors="replace"),
            self.ended - self.t0,
            timed_out,
        )


def _needle_found(needle: str | tuple[str, ...], text: str) -> bool:
    alts = (needle,) if isinstance(needle, str) else needle
    return any(a.lower() in text.lower() for a in alts)


def _needle_text(needle: str | tuple[str, ...]) -> str:
    return needle if isinstance(needle, str) else "|".join(needle)


def one_line(
    ctx: Ctx, run: Run, cmd: str, *needles: str | tuple[str, ...], rcs: tuple[int, ...] = (1, 2)
) -> Verdict:
    """As promised: exit code in ``rcs``, no traceback, a ``posereid CMD: error:`` line naming each needle
    (a tuple: any of its alternatives)."""
    if run.timed_out:
        return Verdict(False, f"hung: killed after {run.seconds:.0f} s")
    problems = []
    line = run.error_line(cmd)
    if run.rc not in rcs:
        problems.append(f"exit {run.rc}")
    if "Traceback" in run.err or "Traceback" in run.out:
        problems.append("traceback")
    if line is None:
        problems.append("no error line")
    else:
        missing = [_needle_text(n) for n in needles if not _needle_found(n, ctx.unnamed(line))]
        if missing:
            problems.append(f"names no {', '.join(missing)}")
    shown = ctx.strip(line.removeprefix(f"posereid {cmd}: error: ") if line else run.last_line())
    head = f"exit {run.rc}" + (f" ({'; '.join(problems)})" if problems else "")
    return Verdict(not problems, f"{head}: {shown}")


def api_refuses(
    ctx: Ctx,
    fn: Callable[[], Any],
    *needles: str | tuple[str, ...],
    types: tuple[type, ...] = (TypeError, ValueError),
) -> Verdict:
    """As promised: ``fn()`` raises one of ``types`` whose message names each needle."""
    try:
        result = fn()
    except types as exc:
        msg = str(exc)
        missing = [_needle_text(n) for n in needles if not _needle_found(n, ctx.unnamed(msg))]
        head = f"{type(exc).__name__}" + (f" (names no {', '.join(missing)})" if missing else "")
        return Verdict(not missing, f"{head}: {ctx.strip(msg)}")
    except Exception as exc:  # noqa: BLE001 - the wrong kind of error is a finding
        return Verdict(False, f"{type(exc).__name__} (not TypeError/ValueError): {ctx.strip(str(exc))}")
    return Verdict(False, f"accepted: {ctx.strip(_describe(result))}")


def _describe(value: Any) -> str:
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        return f"returned a {value.dtype} tensor {tuple(value.shape)}"
    if isinstance(value, np.ndarray):
        return f"returned a {value.dtype} ndarray {value.shape}"
    return f"returned {type(value).__name__}"


# --------------------------------------------------------------------------------------------------
# Shared inputs, built once per census
# --------------------------------------------------------------------------------------------------
class Ctx:
    """The census's temp root and the inputs several cases share (each built on first use)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.current: str | None = None
        self._cache: dict[str, Any] = {}

    def unnamed(self, text: str) -> str:
        """``text`` without the current case's folder name (for needle checks)."""
        return text.replace(f"{os.sep}{self.current}{os.sep}", os.sep) if self.current else text

    def strip(self, text: str) -> str:
        return str(text).replace(str(self.root) + os.sep, "").replace(str(self.root), "TMP")

    def dir(self, name: str) -> Path:
        self.current = name  # needles are not looked for in it (a folder named after the case)
        d = self.root / "cases" / name
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        return d

    def _once(self, key: str, build: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    # ---- data
    def market_template(self, seed: int = 0, train_ids: int = 3) -> Path:
        def build() -> Path:
            out = self.root / f"market-{seed}-{train_ids}"
            r = cli("synth-market", out, "--train-ids", train_ids, "--test-ids", 2, "--per-camera", 1,
                    "--cameras", 2, "--distractors", 0, "--junk", 0, "--height", 64, "--width", 32,
                    "--seed", seed, "--no-progress")  # fmt: skip
            if r.rc != 0:
                raise RuntimeError(f"synth-market failed: {r.err[-500:]}")
            return out

        return self._once(f"market{seed}-{train_ids}", build)

    def market(self, where: Path, seed: int = 0, train_ids: int = 3) -> Path:
        """A private copy of the synthetic market (cases modify it)."""
        return Path(shutil.copytree(self.market_template(seed, train_ids), where / "market"))

    # ---- models
    def ckpt(self, family: str) -> Path:
        def build() -> Path:
            import torch

            from posereid.models.contract import family_class

            torch.manual_seed(0)
            path = self.root / f"ckpt-{family}"
            family_class(family).from_preset("tiny").save_pretrained(path)
            return path

        return self._once(f"ckpt-{family}", build)

    def ckpt_copy(self, family: str, where: Path, name: str | None = None) -> Path:
        return Path(shutil.copytree(self.ckpt(family), where / (name or f"ckpt-{family}")))

    def generator(self) -> Any:
        def build() -> Any:
            from posereid.models.contract import load_generator

            return load_generator(self.ckpt("pidm"), device="cpu")

        return self._once("generator", build)

    def bank(self) -> Any:
        def build() -> Any:
            from posereid.augment.pose_bank import PoseBank

            market = self.market_template()
            return PoseBank.from_market(market, market / TRAIN_CSV)

        return self._once("bank", build)

    def augment(self, **kw: Any) -> Any:
        from posereid.augment.transform import PoseTransferAugment

        return PoseTransferAugment(self.generator(), self.bank(), **{"p": 1.0, "steps": 1, "seed": 0, **kw})

    def reid_ckpt(self) -> Path:
        def build() -> Path:
            import torch

            from posereid.reid_integration import torchreid_plugin as tp

            torch.manual_seed(0)
            path = self.root / "reid.safetensors"
            if hasattr(tp, "build_reid_model"):
                model = tp.build_reid_model("osnet_x0_25", 3)
            else:  # pragma: no cover - older trees
                model = tp.build_model("osnet_x0_25", 3, pretrained=False, use_gpu=False)
            tp.save_reid_checkpoint(
                path, model, meta={"model": "osnet_x0_25", "num_classes": 3, "height": 64, "width": 32}
            )
            return path

        return self._once("reid", build)

    def trained(self) -> Path:
        """A ``train-generator`` run of 4 steps with a checkpoint at each, on its own copy of the market
        (:meth:`train_market`; resume cases copy the run and change that folder's contents in place)."""

        def build() -> Path:
            market = self.train_market()
            out = self.root / "train-base"
            r = cli(*train_args(market, out, steps=4))
            if r.rc != 0:
                raise RuntimeError(f"train-generator failed: {r.err[-500:]}")
            return out

        return self._once("trained", build)

    def train_market(self) -> Path:
        def build() -> Path:
            return Path(shutil.copytree(self.market_template(), self.root / "train-market"))

        return self._once("train_market", build)

    def generated(self) -> Path:
        """A folder written by ``generate`` (2 per source image)."""

        def build() -> Path:
            market = self.market_template()
            out = self.root / "generated"
            r = cli(*gen_args(self, market, out))
            if r.rc != 0:
                raise RuntimeError(f"generate failed: {r.err[-500:]}")
            return out

        return self._once("generated", build)


def gen_args(ctx: Ctx, market: Path, out: Path, *extra: object, per_image: int = 2, steps: int = 1,
             generator: Path | None = None, csv: Path | None = None) -> list[object]:  # fmt: skip
    return ["generate", "--generator", generator or ctx.ckpt("pidm"), "--data", market,
            "--annotations", csv or market / TRAIN_CSV, "--per-image", per_image, "--out", out,
            "--steps", steps, "--no-progress", "--device", "cpu", *extra]  # fmt: skip


def train_args(
    market: Path, out: Path, *extra: object, steps: int = 2, csv: Path | None = None
) -> list[object]:
    return ["train-generator", "--data", market, "--annotations", csv or market / TRAIN_CSV, "--family", "pidm",
            "--preset", "tiny", "--out", out, "--steps", steps, "--batch-size", 2, "--checkpoint-every", 1,
            "--sample-every", 0, "--num-workers", 0, "--no-progress", *extra]  # fmt: skip


def sample_args(ctx: Ctx, generator: Path, out: Path) -> list[object]:
    market = ctx.market_template()
    return ["sample", "--generator", generator, "--source", market / TRAIN_DIR / FIRST,
            "--target-pose-from", OTHER, "--annotations", market / TRAIN_CSV, "--out", out, "--steps", 1]  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Generated folders: what is on disk against what the manifests list
# --------------------------------------------------------------------------------------------------
@dataclass
class FolderCount:
    images: int
    lines: int
    unique: int
    shared: int  # output names listed with two different sources
    unscored: int  # manifest lines without a filter score

    @property
    def consistent(self) -> bool:
        return self.images == self.lines == self.unique and not self.shared

    def __str__(self) -> str:
        s = f"{self.images} images, {self.lines} manifest lines, {self.unique} unique names"
        return s + (f", {self.shared} name(s) with 2 sources" if self.shared else "")


def count_folder(out: Path) -> FolderCount:
    images = sum(
        1 for sub in (TRAIN_DIR, "rejected") if (out / sub).is_dir() for p in (out / sub).iterdir()
        if p.suffix.lower() in (".jpg", ".jpeg", ".png")
    )  # fmt: skip
    sources: dict[str, set[str]] = {}
    lines = unscored = 0
    for part in sorted(out.glob("manifest*.jsonl")):
        for raw in part.read_text(errors="replace").splitlines():
            if not raw.strip():
                continue
            lines += 1
            try:
                e = json.loads(raw)
            except json.JSONDecodeError:
                continue
            sources.setdefault(str(e.get("name")), set()).add(str(e.get("source")))
            unscored += e.get("filter_score") is None
    shared = sum(len(s) > 1 for s in sources.values())
    return FolderCount(images, lines, len(sources), shared, unscored)


def add_image(market: Path, name: str, like: str = OTHER) -> None:
    """A train image ``name`` (a copy of ``like``, another person) with ``like``'s annotation row."""
    shutil.copy(market / TRAIN_DIR / like, market / TRAIN_DIR / name)
    csv = market / TRAIN_CSV
    row = next(ln for ln in csv.read_text().splitlines() if ln.startswith(like + ":"))
    with open(csv, "a", encoding="utf-8") as fh:
        fh.write(name + row[len(like) :] + "\n")


def edit_json(path: Path, **fields: Any) -> None:
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data, indent=2))


def model_dir(ckpt: Path, family: str) -> Path:
    """The folder of the family's main model (PCDMs: its inpainter)."""
    return ckpt / "inpainter" if family == "pcdms" else ckpt


def class_file(ckpt: Path) -> Path:
    """The file that names a checkpoint's pipeline class (``model_index.json`` where there is one)."""
    return ckpt / "model_index.json" if (ckpt / "model_index.json").is_file() else ckpt / "config.json"


def rewrite_weights(path: Path, change: Callable[[Any], Any]) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    save_file({k: change(v) for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


# ==================================================================================================
# 1. Two source images, one output name
# ==================================================================================================
ODD_NAMES = {
    "7-digit frame": "0001_c1s1_0000007_01.jpg",
    "2-digit sequence": "0001_c1s01_000007_01.jpg",
    "full-width digit": "0001_c1s1_00000\uff17_01.jpg",
}


def _parse(ctx: Ctx, name: str) -> Verdict:
    from posereid.reid_integration.market1501 import parse_market_name

    return api_refuses(ctx, lambda: parse_market_name(name), name)


@case("1", "parse_market_name of a 7-digit frame (0001_c1s1_0000007_01.jpg) is refused")
def name_7digit_frame(ctx: Ctx) -> Verdict:
    return _parse(ctx, ODD_NAMES["7-digit frame"])


@case("1", "parse_market_name of a 2-digit sequence (c1s01) is refused")
def name_2digit_sequence(ctx: Ctx) -> Verdict:
    return _parse(ctx, ODD_NAMES["2-digit sequence"])


@case("1", "parse_market_name of a full-width digit (00000７) is refused")
def name_fullwidth_digit(ctx: Ctx) -> Verdict:
    return _parse(ctx, ODD_NAMES["full-width digit"])


@case("1", "parse_market_name of a 5-digit frame (0001_c1s1_00007_01.jpg) is refused (fixed widths)")
def name_5digit_frame(ctx: Ctx) -> Verdict:
    return _parse(ctx, "0001_c1s1_00007_01.jpg")


@case("1", "parse_market_name(format_market_name(2, 1, 1, 451, 3)) round-trips (legitimate name)")
def name_roundtrip(ctx: Ctx) -> Verdict:
    from posereid.reid_integration.market1501 import format_market_name, parse_market_name

    name = format_market_name(2, 1, 1, 451, 3)
    got = parse_market_name(name)
    return Verdict(got == (2, 1, 1, 451, 3) and name == "0002_c1s1_000451_03.jpg", f"{name} -> {got}")


@case("1", "Market1501 on a folder with a 7-digit-frame name beside the 6-digit one: skipped or refused")
def market_scan_7digit(ctx: Ctx) -> Verdict:
    from posereid.reid_integration.market1501 import Market1501

    market = ctx.market(ctx.dir("market_scan_7digit"))
    odd = ODD_NAMES["7-digit frame"]
    add_image(market, odd)
    try:
        m = Market1501(market)
    except ValueError as exc:
        return Verdict(odd in str(exc), f"refused: {ctx.strip(str(exc))}")
    names = {r.name for r in m.train}
    if odd in names:
        return Verdict(False, f"accepted {odd} as a train image ({len(names)} train images)")
    return Verdict(
        True, f"skipped and counted ({sum(m.skipped.values())} skipped); {len(names)} train images"
    )


def _generate_with_odd_name(ctx: Ctx, label: str) -> Verdict:
    d = ctx.dir("gen_" + re.sub(r"\W+", "_", label))
    market = ctx.market(d)
    odd = ODD_NAMES[label]
    add_image(market, odd)
    r = cli(*gen_args(ctx, market, d / "out"))
    c = count_folder(d / "out")
    if r.timed_out or "Traceback" in r.err:
        return Verdict(False, "hung" if r.timed_out else "traceback")
    if r.rc in (1, 2) and r.error_line("generate"):
        v = one_line(ctx, r, "generate", odd)
        return Verdict(v.ok and c.consistent, v.what)
    summary = short(r.out.strip().splitlines()[-1] if r.out.strip() else r.last_line(), 45)
    return Verdict(r.rc == 0 and c.consistent, f"exit {r.rc}, {c}; {summary}")


@case("1", "generate with a 7-digit-frame source beside the 6-digit one: no output name shared")
def generate_7digit_frame(ctx: Ctx) -> Verdict:
    return _generate_with_odd_name(ctx, "7-digit frame")


@case("1", "generate with a c1s01 source beside c1s1: no output name shared")
def generate_2digit_sequence(ctx: Ctx) -> Verdict:
    return _generate_with_odd_name(ctx, "2-digit sequence")


@case("1", "generate with a full-width-digit source beside the ASCII one: no output name shared")
def generate_fullwidth_digit(ctx: Ctx) -> Verdict:
    return _generate_with_odd_name(ctx, "full-width digit")


# ==================================================================================================
# 2-3. Two commands on one generated folder at once
# ==================================================================================================
def _refused(run: Run, cmd: str) -> bool:
    line = run.error_line(cmd) or ""
    return run.rc == 1 and bool(re.search(r"lock|running|holder|held|in use|pid", line, re.I))


@case("2", "filter and generate on one folder at once: one stops naming the other; images = lines = names")
def filter_during_generate(ctx: Ctx) -> Verdict:
    d = ctx.dir("filter_during_generate")
    market, out = ctx.market(d), d / "out"
    reid = ctx.reid_ckpt()
    gen = Background(*gen_args(ctx, market, out, per_image=8, steps=5), log=d / "generate")
    deadline = time.perf_counter() + 90
    while time.perf_counter() < deadline and gen.running():
        if (out / "manifest.jsonl").is_file() and (out / "manifest.jsonl").stat().st_size > 0:
            break
        time.sleep(0.2)
    overlap = gen.running()
    filt = Background("filter", "--dir", out, "--data", market, "--reid-checkpoint", reid, "--threshold", -2,
                      "--device", "cpu", log=d / "filter")  # fmt: skip
    rf = filt.wait()
    overlap = overlap and gen.running()
    rg = gen.wait()
    c = count_folder(out)
    if rg.timed_out or rf.timed_out:
        return Verdict(False, f"hung (generate {rg.rc}, filter {rf.rc})")
    refused = _refused(rf, "filter") or _refused(rg, "generate")
    ok = c.consistent and (refused or (rf.rc == 0 and c.unscored == 0)) and "Traceback" not in rf.err + rg.err
    who = (
        "filter refused"
        if _refused(rf, "filter")
        else "generate refused"
        if _refused(rg, "generate")
        else "both ran"
    )
    return Verdict(
        ok and overlap, f"{who} (overlap {'yes' if overlap else 'NO'}); {c}, {c.unscored} unscored"
    )


@case("3", "generate --shard 0/1 and --shard 0/2 on one folder at once: images = manifest lines = names")
def shards_concurrent(ctx: Ctx) -> Verdict:
    d = ctx.dir("shards_concurrent")
    market, out = ctx.market(d), d / "out"
    a = Background(*gen_args(ctx, market, out, "--shard", "0/1", per_image=5, steps=5), log=d / "a")
    b = Background(*gen_args(ctx, market, out, "--shard", "0/2", per_image=5, steps=5), log=d / "b")
    ra, rb = a.wait(), b.wait()
    c = count_folder(out)
    if ra.timed_out or rb.timed_out:
        return Verdict(False, "hung")
    refused = _refused(ra, "generate") or _refused(rb, "generate")
    ok = c.consistent and "Traceback" not in ra.err + rb.err
    return Verdict(ok, f"exits {ra.rc}/{rb.rc}{' (one refused)' if refused else ''}; {c}")


@case("3", "generate --shard 0/1, then --shard 0/2 on the same folder (in sequence): images = lines = names")
def shards_sequential(ctx: Ctx) -> Verdict:
    d = ctx.dir("shards_sequential")
    market, out = ctx.market(d), d / "out"
    ra = cli(*gen_args(ctx, market, out, "--shard", "0/1"))
    rb = cli(*gen_args(ctx, market, out, "--shard", "0/2"))
    c = count_folder(out)
    tb = "Traceback" in ra.err + rb.err
    ok = not tb and ra.rc == 0 and rb.rc in (0, 1) and c.consistent
    line = rb.error_line("generate")
    return Verdict(ok, f"exits {ra.rc}/{rb.rc}; {c}" + (f"; {ctx.strip(line)}" if line else ""))


@case("r1", "two generate runs of the same shard on one folder at once: the second stops naming the first")
def same_shard_concurrent(ctx: Ctx) -> Verdict:
    d = ctx.dir("same_shard_concurrent")
    market, out = ctx.market(d), d / "out"
    a = Background(*gen_args(ctx, market, out, per_image=5, steps=5), log=d / "a")
    b = Background(*gen_args(ctx, market, out, per_image=5, steps=5), log=d / "b")
    ra, rb = a.wait(), b.wait()
    c = count_folder(out)
    refused = _refused(ra, "generate") or _refused(rb, "generate")
    ok = refused and c.consistent and "Traceback" not in ra.err + rb.err
    return Verdict(ok, f"exits {ra.rc}/{rb.rc}{' (one refused)' if refused else ''}; {c}")


@case("3", "PoseAugmentedDataset counts each image once in the folder of the concurrent shards case")
def dataset_after_concurrent_shards(ctx: Ctx) -> Verdict:
    out = ctx.root / "cases" / "shards_concurrent" / "out"
    if not out.is_dir():
        shards_concurrent(ctx)
    from posereid.augment.dataset import PoseAugmentedDataset
    from posereid.reid_integration.market1501 import Market1501

    market = ctx.root / "cases" / "shards_concurrent" / "market"
    base = [(str(r.path), r.pid, r.camid) for r in Market1501(market).train]
    try:
        ds = PoseAugmentedDataset(base, synthetic_dir=out, ratio=1.0)
    except ValueError as exc:
        return Verdict(True, f"refused: {ctx.strip(str(exc))}")
    paths = [p for p, _, _ in ds.synthetic]
    dup = len(paths) - len(set(paths))
    return Verdict(dup == 0, f"{len(paths)} synthetic entries, {dup} counted twice")


# ==================================================================================================
# 4, 6. train-generator: resume with other data, --max-minutes
# ==================================================================================================
def _resume(
    ctx: Ctx, name: str, *extra: object, change: Callable[[Path], None] | None = None,
    needles: tuple[str | tuple[str, ...], ...] = (),
) -> Verdict:  # fmt: skip
    """A copy of the 4-step run as a kill after step 2 leaves it (no final/, checkpoints 3-4 gone), resumed
    with the same command and the same ``--data`` / ``--annotations`` paths after ``change`` rewrote what
    they hold (the folder is restored afterwards)."""
    d = ctx.dir(name)
    out = Path(shutil.copytree(ctx.trained(), d / "run"))
    shutil.rmtree(out / "final")
    for late in ("step-0000003", "step-0000004"):
        shutil.rmtree(out / "checkpoints" / late, ignore_errors=True)
    market = ctx.train_market()
    backup = Path(shutil.copytree(market, d / "market-backup"))
    try:
        if change is not None:
            change(market)
        r = cli(*train_args(market, out, *extra, steps=4))
    finally:
        shutil.rmtree(market)
        backup.rename(market)
    return one_line(ctx, r, "train-generator", *needles)


@case("4", "train-generator resumes with the same --data path now holding other images (2 identities, not 3)")
def resume_other_data(ctx: Ctx) -> Verdict:
    other = ctx.market_template(seed=1, train_ids=2)

    def change(market: Path) -> None:
        shutil.rmtree(market)
        shutil.copytree(other, market)

    return _resume(ctx, "resume_other_data", change=change, needles=(("data", "images", "annotation"),))


@case("4", "train-generator resumes with the same --annotations path, one row moved 1 px: refused")
def resume_other_annotations(ctx: Ctx) -> Verdict:
    def change(market: Path) -> None:
        csv = market / TRAIN_CSV
        lines = csv.read_text().splitlines()
        name, ys, xs = lines[1].split(":")
        y = [int(v) for v in ys.strip("[] ").split(",")]
        y[0] += 1
        lines[1] = f"{name}:[{', '.join(map(str, y))}]:{xs}"
        csv.write_text("\n".join(lines) + "\n")

    return _resume(ctx, "resume_other_annotations", change=change, needles=("annotation",))


@case("r1", "train-generator resumes a checkpoint with another --lr: refused naming the setting")
def resume_other_lr(ctx: Ctx) -> Verdict:
    return _resume(ctx, "resume_other_lr", "--lr", "0.01", needles=("lr",))


@case("6", "train-generator --max-minutes that stops early: non-zero exit (no final/ to chain on)")
def train_max_minutes(ctx: Ctx) -> Verdict:
    d = ctx.dir("train_max_minutes")
    r = cli(*train_args(ctx.market_template(), d / "run", "--max-minutes", "0.02", "--checkpoint-every", 0,
                        steps=100000))  # fmt: skip
    final = (d / "run" / "final").is_dir()
    if r.timed_out or "Traceback" in r.err:
        return Verdict(False, "hung" if r.timed_out else "traceback")
    said = short(r.out.strip().splitlines()[0] if r.out.strip() else "", 50)
    return Verdict(r.rc not in (0, None), f"exit {r.rc}, final/ {'written' if final else 'absent'}; {said}")


@case("10", "train-generator --no-progress draws no progress bar")
def train_no_progress(ctx: Ctx) -> Verdict:
    d = ctx.dir("train_no_progress")
    r = cli(*train_args(ctx.market_template(), d / "run", steps=1))
    bars = {m.split("|")[0].split(":")[0].strip() for m in BAR_RE.findall(r.err)}
    return Verdict(r.rc == 0 and not bars, f"exit {r.rc}, bars: {', '.join(sorted(bars)) or 'none'}")


@case("r1", "generate --no-progress draws no progress bar")
def generate_no_progress(ctx: Ctx) -> Verdict:
    d = ctx.dir("generate_no_progress")
    r = cli(*gen_args(ctx, ctx.market_template(), d / "out"))
    bars = {m.split("|")[0].split(":")[0].strip() for m in BAR_RE.findall(r.err)}
    return Verdict(r.rc == 0 and not bars, f"exit {r.rc}, bars: {', '.join(sorted(bars)) or 'none'}")


# ==================================================================================================
# 5, 7, 10. Checkpoints
# ==================================================================================================
def _sample(ctx: Ctx, ckpt: Path, *needles: str | tuple[str, ...]) -> Verdict:
    r = cli(*sample_args(ctx, ckpt, ckpt.parent / "o.png"))
    return one_line(ctx, r, "sample", *needles)


def _config_case(ctx: Ctx, name: str, family: str, needles: tuple, **fields: Any) -> Verdict:
    ckpt = ctx.ckpt_copy(family, ctx.dir(name))
    edit_json(model_dir(ckpt, family) / "config.json", **fields)
    return _sample(ctx, ckpt, *needles)


def _scheduler_case(ctx: Ctx, name: str, family: str) -> Verdict:
    ckpt = ctx.ckpt_copy(family, ctx.dir(name))
    edit_json(model_dir(ckpt, family) / "scheduler_config.json", num_train_timesteps=-5)
    return _sample(ctx, ckpt, "scheduler_config.json", "num_train_timesteps")


@case("7", "pidm checkpoint with image_size [-64, 32]: one line naming config.json and image_size")
def ckpt_pidm_negative_size(ctx: Ctx) -> Verdict:
    return _config_case(
        ctx, "ckpt_pidm_negative_size", "pidm", ("config.json", "image_size"), image_size=[-64, 32]
    )


@case("7", "cfld checkpoint with image_size [-64, 32]: one line naming config.json and image_size")
def ckpt_cfld_negative_size(ctx: Ctx) -> Verdict:
    return _config_case(
        ctx, "ckpt_cfld_negative_size", "cfld", ("config.json", "image_size"), image_size=[-64, 32]
    )


@case("7", "pcdms checkpoint with inpainter image_size [-64, 32]: one line naming config.json and image_size")
def ckpt_pcdms_negative_size(ctx: Ctx) -> Verdict:
    return _config_case(
        ctx, "ckpt_pcdms_negative_size", "pcdms", ("config.json", "image_size"), image_size=[-64, 32]
    )


@case("7", "cfld checkpoint with image_size [0, 0] (was a division by zero): one line naming file and field")
def ckpt_cfld_zero_size(ctx: Ctx) -> Verdict:
    return _config_case(ctx, "ckpt_cfld_zero_size", "cfld", ("config.json", "image_size"), image_size=[0, 0])


@case("7", "pidm checkpoint with image_size [0, 0]: one line naming config.json and image_size")
def ckpt_pidm_zero_size(ctx: Ctx) -> Verdict:
    return _config_case(ctx, "ckpt_pidm_zero_size", "pidm", ("config.json", "image_size"), image_size=[0, 0])


@case("7", "pidm scheduler num_train_timesteps -5: one line naming scheduler_config.json and the field")
def ckpt_pidm_scheduler_negative(ctx: Ctx) -> Verdict:
    return _scheduler_case(ctx, "ckpt_pidm_scheduler_negative", "pidm")


@case("7", "cfld scheduler num_train_timesteps -5: one line naming scheduler_config.json and the field")
def ckpt_cfld_scheduler_negative(ctx: Ctx) -> Verdict:
    return _scheduler_case(ctx, "ckpt_cfld_scheduler_negative", "cfld")


@case("7", "pcdms inpainter scheduler num_train_timesteps -5: one line naming the file and the field")
def ckpt_pcdms_scheduler_negative(ctx: Ctx) -> Verdict:
    return _scheduler_case(ctx, "ckpt_pcdms_scheduler_negative", "pcdms")


@case("7", "pidm checkpoint with huge block_out_channels (2^20 each; was an allocator error): file and field")
def ckpt_pidm_huge_channels(ctx: Ctx) -> Verdict:
    return _config_case(
        ctx, "ckpt_pidm_huge_channels", "pidm", ("config.json", "block_out_channels"),
        block_out_channels=[2**20, 2**20, 2**20],
    )  # fmt: skip


@case("7", "cfld checkpoint with huge block_out_channels (2^20 each): one line naming file and field")
def ckpt_cfld_huge_channels(ctx: Ctx) -> Verdict:
    return _config_case(
        ctx, "ckpt_cfld_huge_channels", "cfld", ("config.json", "block_out_channels"),
        block_out_channels=[2**20, 2**20, 2**20],
    )  # fmt: skip


@case("7", "cfld checkpoint with layers_per_block 1.5: one line naming config.json and layers_per_block")
def ckpt_cfld_fractional_layers(ctx: Ctx) -> Verdict:
    return _config_case(
        ctx, "ckpt_cfld_fractional_layers", "cfld", ("config.json", "layers_per_block"), layers_per_block=1.5
    )


@case("7", "pidm checkpoint with layers_per_block 1.5: one line naming config.json and layers_per_block")
def ckpt_pidm_fractional_layers(ctx: Ctx) -> Verdict:
    return _config_case(
        ctx, "ckpt_pidm_fractional_layers", "pidm", ("config.json", "layers_per_block"), layers_per_block=1.5
    )


def _int32_case(ctx: Ctx, name: str, family: str) -> Verdict:
    import torch

    ckpt = ctx.ckpt_copy(family, ctx.dir(name))
    weights = model_dir(ckpt, family) / "diffusion_pytorch_model.safetensors"
    rewrite_weights(weights, lambda t: t.to(torch.int32) if t.is_floating_point() else t)
    return _sample(ctx, ckpt, "diffusion_pytorch_model.safetensors", ("int32", "dtype", "float"))


@case("7", "pidm weights stored as int32: refused naming the weights file and the dtype")
def ckpt_pidm_int32(ctx: Ctx) -> Verdict:
    return _int32_case(ctx, "ckpt_pidm_int32", "pidm")


@case("7", "cfld weights stored as int32: refused naming the weights file and the dtype")
def ckpt_cfld_int32(ctx: Ctx) -> Verdict:
    return _int32_case(ctx, "ckpt_cfld_int32", "cfld")


@case(
    "7", "a truncated diffusion_pytorch_model.safetensors beside a good ema.safetensors: named, not ignored"
)
def ckpt_damaged_raw_beside_ema(ctx: Ctx) -> Verdict:
    d = ctx.dir("ckpt_damaged_raw_beside_ema")
    ckpt = Path(shutil.copytree(ctx.trained() / "final", d / "final"))
    raw = ckpt / "diffusion_pytorch_model.safetensors"
    if not (ckpt / "ema.safetensors").is_file():
        return Verdict(False, "setup: the trained checkpoint has no ema.safetensors")
    raw.write_bytes(raw.read_bytes()[:100])
    r = cli(*sample_args(ctx, ckpt, d / "o.png"))
    if r.rc == 0:
        warned = [ln for ln in r.err.splitlines() if raw.name in ln]
        what = ctx.strip(warned[-1]) if warned else "loaded the EMA weights without a word"
        return Verdict(bool(warned) and "Traceback" not in r.err, f"exit 0: {what}")
    return one_line(ctx, r, "sample", raw.name)


@case("7", "pidm weights with a NaN: refused naming the weights file")
def ckpt_nan_weights(ctx: Ctx) -> Verdict:
    ckpt = ctx.ckpt_copy("pidm", ctx.dir("ckpt_nan_weights"))

    def poison(t: Any) -> Any:
        if t.is_floating_point() and t.numel() and not getattr(poison, "done", False):
            t = t.clone()
            t.view(-1)[0] = float("nan")
            poison.done = True  # type: ignore[attr-defined]
        return t

    rewrite_weights(ckpt / "diffusion_pytorch_model.safetensors", poison)
    return _sample(ctx, ckpt, "diffusion_pytorch_model.safetensors")


@case("r1", "truncated weights file: one line naming it")
def ckpt_truncated(ctx: Ctx) -> Verdict:
    ckpt = ctx.ckpt_copy("pidm", ctx.dir("ckpt_truncated"))
    w = ckpt / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    return _sample(ctx, ckpt, w.name)


@case("r1", "a pickle where the safetensors weights should be: one line naming the file")
def ckpt_pickle(ctx: Ctx) -> Verdict:
    ckpt = ctx.ckpt_copy("pidm", ctx.dir("ckpt_pickle"))
    w = ckpt / "diffusion_pytorch_model.safetensors"
    w.write_bytes(b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94.")
    return _sample(ctx, ckpt, w.name)


@case("r1", "config.json image_size 'big': one line naming config.json")
def ckpt_config_string_size(ctx: Ctx) -> Verdict:
    return _config_case(ctx, "ckpt_config_string_size", "pidm", ("config.json",), image_size="big")


@case("r1", "a checkpoint naming an unknown pipeline class: one line listing the known families")
def ckpt_unknown_class(ctx: Ctx) -> Verdict:
    ckpt = ctx.ckpt_copy("pidm", ctx.dir("ckpt_unknown_class"))
    edit_json(class_file(ckpt), _class_name="Mystery")
    return _sample(ctx, ckpt, "Mystery", "pidm")


@case("r1", "--generator pointing at a missing folder: one line naming it")
def ckpt_missing(ctx: Ctx) -> Verdict:
    d = ctx.dir("ckpt_missing")
    return _sample(ctx, d / "nowhere", "nowhere")


@case("10", 'pcdms model_index.json trained_stages "inpaint" (a string): one line, not letter by letter')
def ckpt_trained_stages_string(ctx: Ctx) -> Verdict:
    ckpt = ctx.ckpt_copy("pcdms", ctx.dir("ckpt_trained_stages_string"))
    edit_json(ckpt / "model_index.json", trained_stages="inpaint")
    r = cli(*sample_args(ctx, ckpt, ckpt.parent / "o.png"))
    v = one_line(ctx, r, "sample", "trained_stages")
    if r.rc == 0:
        return Verdict(True, "exit 0: read as the one stage 'inpaint'")
    if re.search(r"'i', 'n'", r.err):
        return Verdict(False, "listed letter by letter: " + v.what)
    return v


@case("5", "generate --refiner with a pcdms checkpoint whose refine stage was never trained: refused")
def refiner_untrained(ctx: Ctx) -> Verdict:
    d = ctx.dir("refiner_untrained")
    ckpt = ctx.ckpt_copy("pcdms", d, "pcdms_inpaint_only")
    edit_json(ckpt / "model_index.json", trained_stages=["inpaint"])
    r = cli(*gen_args(ctx, ctx.market_template(), d / "out", "--refiner", ckpt))
    return one_line(ctx, r, "generate", "refine")


@case("r1", "generate --refiner with a cfld checkpoint (no refiner): one line saying so")
def refiner_wrong_family(ctx: Ctx) -> Verdict:
    d = ctx.dir("refiner_wrong_family")
    r = cli(*gen_args(ctx, ctx.market_template(), d / "out", "--refiner", ctx.ckpt("cfld")))
    return one_line(ctx, r, "generate", "refiner")


# ==================================================================================================
# 8. The Python API as users call it
# ==================================================================================================
def _image(dtype: str = "uint8", shape: tuple[int, ...] = (3, 64, 32)) -> Any:
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g)
    return {
        "uint8": (x * 255).to(torch.uint8), "float01": x, "float255": x * 255.0, "float11": x * 2 - 1,
        "int64": (x * 255).to(torch.int64), "bool": x > 0.5,
    }[dtype]  # fmt: skip


@case("8", "PoseTransferAugment(guidance=2.0): refused naming guidance, or read as (2.0, 2.0)")
def api_guidance_scalar(ctx: Ctx) -> Verdict:
    try:
        aug = ctx.augment(guidance=2.0)
    except (TypeError, ValueError) as exc:
        named = "guidance" in str(exc)
        return Verdict(
            named, f"{type(exc).__name__}{'' if named else ' (names no guidance)'}: {ctx.strip(str(exc))}"
        )
    out = aug(_image("uint8"))
    return Verdict(tuple(aug.guidance) == (2.0, 2.0), f"accepted as {tuple(aug.guidance)}; {_describe(out)}")


@case("8", "PoseTransferAugment(guidance=(1, 2, 3)): refused naming guidance")
def api_guidance_triple(ctx: Ctx) -> Verdict:
    return api_refuses(ctx, lambda: ctx.augment(guidance=(1.0, 2.0, 3.0)), "guidance")


@case("8", "PoseTransferAugment on an int64 image tensor: refused naming the dtype")
def api_int64_image(ctx: Ctx) -> Verdict:
    return api_refuses(ctx, lambda: ctx.augment()(_image("int64")), "int64")


@case("8", "PoseTransferAugment on a (3, 0, 32) tensor: refused naming the shape")
def api_empty_image(ctx: Ctx) -> Verdict:
    return api_refuses(
        ctx, lambda: ctx.augment()(_image("float01", (3, 0, 32))), ("(3, 0, 32)", "empty", "size")
    )


@case("8", "PoseTransferAugment on a float image in [0, 255]: refused naming the range, not clamped")
def api_float_0_255(ctx: Ctx) -> Verdict:
    return api_refuses(ctx, lambda: ctx.augment()(_image("float255")), ("[0, 1]", "range", "255"))


@case("8", "PoseTransferAugment on a float image in [-1, 1]: refused naming the range, not clamped")
def api_float_minus1_1(ctx: Ctx) -> Verdict:
    return api_refuses(ctx, lambda: ctx.augment()(_image("float11")), ("[0, 1]", "range", "negative"))


@case("8", "PoseTransferAugment on a NumPy array at p=1: refused naming the type, not passed through")
def api_numpy_image(ctx: Ctx) -> Verdict:
    arr = _image("uint8").permute(1, 2, 0).numpy()
    return api_refuses(ctx, lambda: ctx.augment()(arr), ("ndarray", "numpy"))


@case("8", "PoseTransferAugment on a bool tensor: refused naming the dtype")
def api_bool_image(ctx: Ctx) -> Verdict:
    return api_refuses(ctx, lambda: ctx.augment()(_image("bool")), "bool")


@case("8", "batch_transform with 3 pids for 2 images: refused naming pids")
def api_batch_pids_mismatch(ctx: Ctx) -> Verdict:
    import torch

    imgs = _image("float01", (2, 3, 64, 32))
    return api_refuses(ctx, lambda: ctx.augment().batch_transform(imgs, torch.tensor([1, 2, 3])), "pid")


@case("8", "PoseAugmentedDataset(ratio=nan): refused naming ratio")
def api_dataset_ratio_nan(ctx: Ctx) -> Verdict:
    return _dataset_ratio(ctx, math.nan)


@case("8", "PoseAugmentedDataset(ratio=inf): refused naming ratio")
def api_dataset_ratio_inf(ctx: Ctx) -> Verdict:
    return _dataset_ratio(ctx, math.inf)


@case("r1", "PoseAugmentedDataset(ratio=-0.5): refused naming ratio")
def api_dataset_ratio_negative(ctx: Ctx) -> Verdict:
    return _dataset_ratio(ctx, -0.5)


def _base(market: Path) -> list[tuple[str, int, int]]:
    from posereid.reid_integration.market1501 import Market1501

    return [(str(r.path), r.pid, r.camid) for r in Market1501(market).train]


def _dataset_ratio(ctx: Ctx, ratio: float) -> Verdict:
    from posereid.augment.dataset import PoseAugmentedDataset

    base = _base(ctx.market_template())
    return api_refuses(
        ctx, lambda: PoseAugmentedDataset(base, synthetic_dir=ctx.generated(), ratio=ratio), "ratio"
    )


@case("8", "PoseBank.load of a truncated .npz: refused naming the file")
def api_posebank_truncated(ctx: Ctx) -> Verdict:
    from posereid.augment.pose_bank import PoseBank

    d = ctx.dir("api_posebank_truncated")
    path = d / "bank.npz"
    ctx.bank().save(path)
    path.write_bytes(path.read_bytes()[:200])
    return api_refuses(ctx, lambda: PoseBank.load(path), "bank.npz")


@case("r1", "PoseBank.load of a bank naming an absolute path: refused naming the file and entry")
def api_posebank_absolute_name(ctx: Ctx) -> Verdict:
    from posereid.augment.pose_bank import PoseBank

    d = ctx.dir("api_posebank_absolute_name")
    bank = PoseBank(ctx.bank().keypoints[:2], ["a.jpg", "b.jpg"], image_hw=ctx.bank().image_hw, min_visible=0)
    bank.names[1] = "/abs/b.jpg"
    bank.save(d / "bank.npz")
    return api_refuses(ctx, lambda: PoseBank.load(d / "bank.npz"), "bank.npz", "/abs/b.jpg")


@case("r1", "PoseTransferAugment(p=1.5): refused naming p")
def api_p_out_of_range(ctx: Ctx) -> Verdict:
    return api_refuses(ctx, lambda: ctx.augment(p=1.5), "p ")


@case("r1", "PoseTransferAugment(sampling='random'): refused naming sampling")
def api_bad_sampling(ctx: Ctx) -> Verdict:
    return api_refuses(ctx, lambda: ctx.augment(sampling="random"), "sampling")


@case("r1", "PoseTransferAugment on a uint8 (3, H, W) tensor (documented): a changed uint8 image, same shape")
def api_uint8_ok(ctx: Ctx) -> Verdict:
    import torch

    x = _image("uint8")
    y = ctx.augment()(x)
    ok = (
        isinstance(y, torch.Tensor)
        and y.dtype == torch.uint8
        and y.shape == x.shape
        and not torch.equal(x, y)
    )
    return Verdict(ok, _describe(y) + ("" if ok else "; expected a changed uint8 image"))


@case("r1", "PoseTransferAugment on a float image in [0, 1] (documented): float in [0, 1], same shape")
def api_float01_ok(ctx: Ctx) -> Verdict:
    import torch

    x = _image("float01")
    y = ctx.augment()(x)
    ok = y.dtype == torch.float32 and y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    return Verdict(
        ok and not torch.equal(x, y), _describe(y) + f" in [{float(y.min()):.2f}, {float(y.max()):.2f}]"
    )


@case("r1", "PoseTransferAugment on a PIL image (documented): a PIL image of the same size")
def api_pil_ok(ctx: Ctx) -> Verdict:
    from PIL import Image

    im = Image.fromarray(_image("uint8").permute(1, 2, 0).numpy())
    out = ctx.augment()(im)
    ok = isinstance(out, Image.Image) and out.size == im.size
    return Verdict(ok, f"returned {type(out).__name__} {getattr(out, 'size', '')}")


@case("r1", "PoseTransferAugment on a (2, 3, H, W) uint8 batch (documented): same shape and dtype")
def api_batch_ok(ctx: Ctx) -> Verdict:
    import torch

    x = _image("uint8", (2, 3, 64, 32))
    y = ctx.augment().batch_transform(x, torch.tensor([1, 2]))
    return Verdict(y.shape == x.shape and y.dtype == x.dtype, _describe(y))


# ==================================================================================================
# 9-10. reid-gain, reid-gain-compare, train-reid, long names, full disks
# ==================================================================================================
def gain_args(market: Path, out: Path, *extra: object) -> list[object]:
    return ["reid-gain", "--data", market, "--out", out, "--fractions", "1.0", "--seeds", "0", "--reid-steps", 2,
            "--reid-model", "osnet_x0_25", "--reid-batch-size", 4, "--height", 64, "--width", 32, "--device",
            "cpu", "--no-progress", *extra]  # fmt: skip


@case("9", "reid-gain refused at validation (missing --annotations), then the corrected rerun is not refused")
def gain_refused_then_rerun(ctx: Ctx) -> Verdict:
    d = ctx.dir("gain_refused_then_rerun")
    market, out = ctx.market(d), d / "gain"
    r1 = cli(*gain_args(market, out, "--arms", "plain", "--annotations", d / "missing.csv"))
    wrote = (out / "gain_config.json").is_file()
    r2 = cli(*gain_args(market, out, "--arms", "plain", "--annotations", market / TRAIN_CSV, "--max-minutes",
                        "0.001"))  # fmt: skip
    refused = "other settings" in r2.err
    ok = r1.rc in (1, 2) and r2.rc in (0, 3) and not refused and "Traceback" not in r1.err + r2.err
    what = f"1st exit {r1.rc} (gain_config.json {'written' if wrote else 'not written'}); rerun exit {r2.rc}"
    if refused:
        what += ": 'holds results made with other settings'"
    return Verdict(ok, what)


@case("r1", "reid-gain --max-minutes 0.001 with 2 cells planned: the second never starts, exit 3")
def gain_max_minutes(ctx: Ctx) -> Verdict:
    d = ctx.dir("gain_max_minutes")
    market = ctx.market(d)
    args = gain_args(market, d / "gain", "--arms", "plain", "--max-minutes", "0.001")
    args[args.index("--seeds") + 1] = "0,1"
    r = cli(*args)
    said = r.out.strip().splitlines()[0] if r.out.strip() else r.last_line()
    return Verdict(r.rc == 3 and "Traceback" not in r.err, f"exit {r.rc}: {short(ctx.strip(said), 80)}")


@case(
    "9", "reid-gain --baselines-from a run with fewer seeds: the report does not say trained cells were read"
)
def gain_baselines_fewer_seeds(ctx: Ctx) -> Verdict:
    d = ctx.dir("gain_baselines_fewer_seeds")
    market = ctx.market(d)
    ra = cli(*gain_args(market, d / "first", "--arms", "strong"))
    if ra.rc != 0:
        return Verdict(False, f"setup: first run exit {ra.rc}: {ctx.strip(ra.last_line())}")
    args = gain_args(market, d / "second", "--arms", "strong", "--baselines-from", d / "first")
    args[args.index("--seeds") + 1] = "0,1"
    rb = cli(*args)
    if rb.rc != 0:
        return one_line(ctx, rb, "reid-gain", "--baselines-from")
    md = (d / "second" / "results.md").read_text()
    claims_read = "not trained again" in md
    qualified = re.search(r"trained (here|in this run|by this run)|\btrained: |\b1 of 2\b", md) is not None
    read = re.search(r"(\d+) baseline, oracle and floor cell\(s\) read", rb.err)
    n_read = read.group(1) if read else "?"
    ok = not claims_read or qualified
    return Verdict(
        ok,
        f"{n_read} of 2 cells read; results.md {'claims all were read' if claims_read and not qualified else 'says which were trained here' if qualified else 'does not claim all read'}",
    )


def _fake_run(where: Path, rows: Iterable[tuple[str, int, float]], steps: int = 20000) -> Path:
    """A ``reid-gain --out`` folder with the given ``(arm, seed, mAP)`` rows at fraction 1.0."""
    where.mkdir(parents=True)
    settings = {
        "subset_seed": 0, "reid_steps": 2, "reid_model": "osnet_x0_25", "reid_batch_size": 4,
        "reid_lr": 0.00035, "height": 64, "width": 32, "generator_family": "pidm", "generator_preset": "tiny",
        "generator_options": {}, "generator_steps": steps, "generator_batch_size": 16, "generator_lr": 0.0001,
        "generator": None, "generator_data": "kept", "per_image": 1, "sampler": "dpmsolver++", "steps": 20,
        "guidance": [2.0, 2.0], "pose_sampling": "uniform", "annotation_hw": None, "filter_checkpoint": None,
        "filter_score": "margin", "filter_threshold": 0.0, "synthetic_ratio": None, "data": str(where),
        "annotations_sha256": None,
    }  # fmt: skip
    (where / "gain_config.json").write_text(json.dumps(settings, indent=2))
    head = ("fraction,arm,seed,mAP,rank1,rank5,rank10,images,identities,synthetic_images,steps,batch_size,"
            "wall_s,reid_model,generator")  # fmt: skip
    lines = [head] + [
        f"1.0,{arm},{seed},{m:.4f},50.0000,100.0000,100.0000,6,3,{6 if 'synthetic' in arm else 0},2,4,1.0,osnet_x0_25,"
        for arm, seed, m in rows
    ]
    (where / "results.csv").write_text("\n".join(lines) + "\n")
    return where


def _fake_rows(gain: float, nan_seed: int | None = None) -> list[tuple[str, int, float]]:
    rows = []
    for seed in (0, 1):
        rows.append(("strong", seed, 50.0 + seed))
        rows.append(("strong+synthetic", seed, math.nan if seed == nan_seed else 50.0 + seed + gain))
    return rows


@case("9", "reid-gain-compare of a run whose results.csv has mAP=nan: refused naming the file")
def compare_nan_map(ctx: Ctx) -> Verdict:
    d = ctx.dir("compare_nan_map")
    a = _fake_run(d / "gain_one", _fake_rows(1.0))
    b = _fake_run(d / "gain_two", _fake_rows(2.0, nan_seed=1), steps=500)
    r = cli("reid-gain-compare", a, b, "--out", d / "cmp")
    return one_line(ctx, r, "reid-gain-compare", ("results.csv", "gain_two"), ("nan", "mAP"))


@case("9", "reid-gain-compare of two runs with the same settings: they get different labels")
def compare_same_labels(ctx: Ctx) -> Verdict:
    d = ctx.dir("compare_same_labels")
    a = _fake_run(d / "gain_one", _fake_rows(1.0))
    b = _fake_run(d / "gain_two", _fake_rows(2.0))
    r = cli("reid-gain-compare", a, b, "--out", d / "cmp")
    if r.rc != 0:
        return one_line(ctx, r, "reid-gain-compare", "label")
    md = (d / "cmp" / "comparison.md").read_text() if (d / "cmp" / "comparison.md").is_file() else r.out
    # the generator column of the synthetic rows: the label a reader tells the runs apart by
    labels = [
        ln.split("|")[3].strip() for ln in md.splitlines() if ln.startswith("|") and "+synthetic |" in ln
    ]
    distinct = len(labels) >= 2 and len(set(labels)) == len(labels)
    shown = short(" / ".join(labels), 80)
    return Verdict(distinct, f"exit 0; labels {'distinct' if distinct else 'identical'}: {shown}")


@case("10", "reid-gain-compare --labels with the wrong count: usage error (exit 2) naming --labels")
def compare_labels_count(ctx: Ctx) -> Verdict:
    d = ctx.dir("compare_labels_count")
    a = _fake_run(d / "gain_one", _fake_rows(1.0))
    b = _fake_run(d / "gain_two", _fake_rows(2.0), steps=500)
    r = cli("reid-gain-compare", a, b, "--out", d / "cmp", "--labels", "x,y,z")
    return one_line(ctx, r, "reid-gain-compare", "--labels", rcs=(2,))


@case("10", "train-reid --out <an existing file>: refused before training, naming the file")
def train_reid_out_is_file(ctx: Ctx) -> Verdict:
    d = ctx.dir("train_reid_out_is_file")
    market = ctx.market(d)
    out = d / "results.txt"
    out.write_text("not a folder\n")
    r = cli("train-reid", "--data", market, "--out", out, "--steps", 2, "--model", "osnet_x0_25", "--batch-size",
            4, "--height", 64, "--width", 32, "--device", "cpu", "--workers", 0)  # fmt: skip
    v = one_line(ctx, r, "train-reid", "results.txt")
    trained = bool(re.search(r"rank1|mAP", r.err + r.out))
    if trained:
        return Verdict(False, "trained, then: " + v.what)
    return v


@case("10", "sample --out with a legal 253-character file name: written")
def long_output_name(ctx: Ctx) -> Verdict:
    d = ctx.dir("long_output_name")
    out = d / ("x" * 249 + ".png")
    r = cli(*sample_args(ctx, ctx.ckpt("pidm"), out))
    if r.rc == 0 and out.is_file():
        return Verdict(True, f"exit 0, {len(out.name)}-character file written")
    return Verdict(False, f"exit {r.rc}: {ctx.strip(short(r.error_line('sample') or r.last_line(), 90))}")


def _tiny_fs_works(where: Path) -> bool:
    """Whether a user namespace can mount a small tmpfs here (a real ENOSPC without root)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", f"mount -t tmpfs -o size=16k tmpfs {where}"],
        capture_output=True, check=False,
    )  # fmt: skip
    return probe.returncode == 0


@case("10", "generate into a full disk (a 32 KiB tmpfs, ENOSPC): one line naming the file it could not write")
def generate_disk_full(ctx: Ctx) -> Verdict:
    d = ctx.dir("generate_disk_full")
    mount = d / "small_disk"
    mount.mkdir()
    out = mount / "gen_full"
    args = gen_args(ctx, ctx.market_template(), out, per_image=4)
    if not _tiny_fs_works(mount):  # no user namespaces: a file size limit instead (EFBIG, not ENOSPC)
        r = cli(*args, fsize=3000)
        v = one_line(ctx, r, "generate", "gen_full")
        return Verdict(v.ok, "EFBIG stand-in: " + v.what)
    script = f"mount -t tmpfs -o size=32k tmpfs {mount} && exec " + " ".join(f"'{a}'" for a in command(*args))
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], capture_output=True, text=True,
        timeout=TIMEOUT, env=_env(), preexec_fn=_limits(), check=False,
    )  # fmt: skip
    r = Run(proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - t0)
    return one_line(ctx, r, "generate", "gen_full", "space")


# ==================================================================================================
# Earlier round (r1): frames, traversal, resume mismatch, NaN, fractions, one-line usage errors
# ==================================================================================================
@case("r1", "a PATN row with a keypoint outside the 64x32 images: one line naming the CSV and line")
def frame_keypoint_outside(ctx: Ctx) -> Verdict:
    d = ctx.dir("frame_keypoint_outside")
    market = ctx.market(d)
    csv = market / TRAIN_CSV
    lines = csv.read_text().splitlines()
    name, ys, xs = lines[2].split(":")
    x = [int(v) for v in xs.strip("[] ").split(",")]
    x[1] = 40
    lines[2] = f"{name}:{ys}:[{', '.join(map(str, x))}]"
    csv.write_text("\n".join(lines) + "\n")
    r = cli(*gen_args(ctx, market, d / "out"))
    return one_line(ctx, r, "generate", TRAIN_CSV, "line 3")


@case("r1", "train images of mixed sizes without --annotation-size: one line naming the flag")
def frame_mixed_sizes(ctx: Ctx) -> Verdict:
    from PIL import Image

    d = ctx.dir("frame_mixed_sizes")
    market = ctx.market(d)
    first = market / TRAIN_DIR / FIRST
    Image.open(first).convert("RGB").resize((64, 128)).save(first)
    r = cli(*gen_args(ctx, market, d / "out"))
    return one_line(ctx, r, "generate", "annotation-size")


@case("r1", "a PATN row with nan coordinates: read as missing joints, generate completes, no NaN written")
def frame_nan_keypoints(ctx: Ctx) -> Verdict:
    d = ctx.dir("frame_nan_keypoints")
    market = ctx.market(d)
    csv = market / TRAIN_CSV
    lines = csv.read_text().splitlines()
    name, ys, xs = lines[1].split(":")
    y = ys.strip("[] ").split(",")
    y[0] = " nan"
    lines[1] = f"{name}:[{','.join(y)}]:{xs}"
    csv.write_text("\n".join(lines) + "\n")
    r = cli(*gen_args(ctx, market, d / "out"))
    if r.rc != 0:
        return one_line(ctx, r, "generate", TRAIN_CSV, "line 2")
    text = "".join(p.read_text() for p in (d / "out").glob("manifest*.jsonl"))
    nan = "NaN" in text or "nan" in text.lower().replace("name", "")
    c = count_folder(d / "out")
    return Verdict(not nan and c.consistent, f"exit 0, {c}; NaN in manifest: {'yes' if nan else 'no'}")


@case("r1", "a PATN row named ../victim.jpg: one line naming the CSV, line and name")
def traversal_patn(ctx: Ctx) -> Verdict:
    d = ctx.dir("traversal_patn")
    market = ctx.market(d)
    csv = market / TRAIN_CSV
    lines = csv.read_text().splitlines()
    _, ys, xs = lines[1].split(":")
    lines.insert(2, f"../victim.jpg:{ys}:{xs}")
    csv.write_text("\n".join(lines) + "\n")
    r = cli(*gen_args(ctx, market, d / "out"))
    return one_line(ctx, r, "generate", TRAIN_CSV, "line 3", "../victim.jpg")


@case("r1", "filter on a manifest naming ../../victim/v1.jpg: one line naming the line; nothing moved")
def traversal_manifest(ctx: Ctx) -> Verdict:
    d = ctx.dir("traversal_manifest")
    gen = Path(shutil.copytree(ctx.generated(), d / "gen"))
    victim = d / "victim" / "v1.jpg"
    victim.parent.mkdir()
    shutil.copy(ctx.market_template() / TRAIN_DIR / FIRST, victim)
    manifest = gen / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    e = json.loads(lines[1])
    e["name"] = "../../victim/v1.jpg"
    lines[1] = json.dumps(e)
    manifest.write_text("\n".join(lines) + "\n")
    r = cli("filter", "--dir", gen, "--data", ctx.market_template(), "--reid-checkpoint", ctx.reid_ckpt(),
            "--threshold", 2, "--device", "cpu")  # fmt: skip
    v = one_line(ctx, r, "filter", "manifest.jsonl", "line 2")
    moved = (gen / "rejected").exists() or not victim.is_file()
    return Verdict(v.ok and not moved, v.what + ("; files moved" if moved else ""))


@case("r1", "pairs CSV naming ../../etc/x.jpg: refused naming the file and line")
def traversal_pairs(ctx: Ctx) -> Verdict:
    from posereid.reid_integration.market1501 import read_pairs_csv

    d = ctx.dir("traversal_pairs")
    p = d / "pairs.csv"
    p.write_text("from,to\na.jpg,b.jpg\na.jpg,../../etc/x.jpg\n")
    return api_refuses(ctx, lambda: read_pairs_csv(p), "pairs.csv", "line 3")


@case("r1", "generate rerun into the same folder with another --steps: refused naming the setting")
def resume_generate_other_steps(ctx: Ctx) -> Verdict:
    d = ctx.dir("resume_generate_other_steps")
    out = Path(shutil.copytree(ctx.generated(), d / "gen"))
    r = cli(*gen_args(ctx, ctx.market_template(), out, steps=2))
    return one_line(ctx, r, "generate", "steps")


@case("r1", "generate rerun with the same settings: everything already done, nothing duplicated")
def resume_generate_same(ctx: Ctx) -> Verdict:
    d = ctx.dir("resume_generate_same")
    out = Path(shutil.copytree(ctx.generated(), d / "gen"))
    r = cli(*gen_args(ctx, ctx.market_template(), out))
    c = count_folder(out)
    said = short(r.out.strip().splitlines()[-1] if r.out.strip() else r.last_line(), 50)
    return Verdict(r.rc == 0 and c.consistent, f"exit {r.rc}, {c}; {said}")


@case("r1", "a truncated source JPEG: skipped and counted (exit 1 summary naming the failure)")
def corrupt_source_skipped(ctx: Ctx) -> Verdict:
    d = ctx.dir("corrupt_source_skipped")
    market = ctx.market(d)
    victim = market / TRAIN_DIR / FIRST
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])
    r = cli(*gen_args(ctx, market, d / "out"))
    c = count_folder(d / "out")
    said = short(r.out.strip().splitlines()[-1] if r.out.strip() else r.last_line(), 60)
    ok = r.rc == 1 and "2 failed" in r.out and c.consistent and c.images == 10 and "Traceback" not in r.err
    return Verdict(ok, f"exit {r.rc}, {c}; {said}")


@case("r1", "a truncated source JPEG with --strict: one line naming the file")
def corrupt_source_strict(ctx: Ctx) -> Verdict:
    d = ctx.dir("corrupt_source_strict")
    market = ctx.market(d)
    victim = market / TRAIN_DIR / FIRST
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])
    r = cli(*gen_args(ctx, market, d / "out", "--strict"))
    return one_line(ctx, r, "generate", FIRST)


USAGE = [
    ("generate", ["--batch-size", "0"], "--batch-size"),
    ("generate", ["--per-image", "0"], "--per-image"),
    ("generate", ["--shard", "3/2"], "--shard"),
    ("generate", ["--guidance-pose", "nan"], "--guidance-pose"),
    ("train-generator", ["--lr", "inf"], "--lr"),
    ("train-generator", ["--batch-size", "0"], "--batch-size"),
    ("reid-gain", ["--fractions", "1.5"], "--fractions"),
    ("reid-gain", ["--fractions", "0"], "--fractions"),
    ("reid-gain", ["--fractions", "nan"], "--fractions"),
    ("reid-gain", ["--seeds", "0,x"], "--seeds"),
    ("evaluate-generator", ["--steps", "0"], "--steps"),
    ("sample", ["--guidance-appearance", "nan"], "--guidance-appearance"),
]


def _usage_case(command_name: str, argv: list[str], flag: str) -> None:
    name = "usage_" + re.sub(r"\W+", "_", f"{command_name} {argv[0]} {argv[1]}").strip("_")

    def run(ctx: Ctx) -> Verdict:
        d = ctx.dir(name)
        r = cli(command_name, *argv, "--data", d, "--out", d / "o")
        return one_line(ctx, r, command_name, f"argument {flag}", rcs=(2,))

    run.__name__ = name
    case("r1", f"{command_name} {' '.join(argv)}: usage error (exit 2) naming {flag}")(run)


for _cmd, _argv, _flag in USAGE:
    _usage_case(_cmd, _argv, _flag)


@case("r1", "an unknown command: exit 2 with the list of commands")
def usage_unknown_command(ctx: Ctx) -> Verdict:
    r = cli("genrate")
    ok = r.rc == 2 and "genrate" in r.err and "generate" in r.err and "Traceback" not in r.err
    return Verdict(ok, f"exit {r.rc}: {ctx.strip(short(r.last_line(), 80))}")


@case("r1", "generate --data pointing at a missing folder: one line naming it")
def missing_data_folder(ctx: Ctx) -> Verdict:
    d = ctx.dir("missing_data_folder")
    r = cli(*gen_args(ctx, d / "no_market", d / "out", csv=d / "no.csv"))
    return one_line(ctx, r, "generate", ("no_market", "no.csv"))


# --------------------------------------------------------------------------------------------------
# The census
# --------------------------------------------------------------------------------------------------
def run_census(ctx: Ctx, names: set[str] | None = None) -> list[dict[str, Any]]:
    results = []
    chosen = [c for c in CASES if names is None or c.name in names]
    for i, c in enumerate(chosen, 1):
        t0 = time.perf_counter()
        ctx.current = None
        try:
            v = c.fn(ctx)
        except Exception as exc:  # noqa: BLE001 - a case that cannot even run is reported, not fatal
            tb = traceback.format_exc(limit=-2).strip().splitlines()
            v = Verdict(
                False,
                f"case error {type(exc).__name__}: {ctx.strip(str(exc))} [{ctx.strip(tb[-3] if len(tb) > 2 else '')}]",
            )
        row = {
            "case": c.name, "item": c.item, "description": c.description, "as_promised": bool(v.ok),
            "what": short(v.what), "what_full": v.what, "seconds": round(time.perf_counter() - t0, 1),
        }  # fmt: skip
        results.append(row)
        mark = "ok " if v.ok else "NOT"
        print(f"[{i:3d}/{len(chosen)}] {mark} {c.name} ({row['seconds']} s): {row['what']}", flush=True)
    return results


def write_report(out: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    ok = sum(r["as_promised"] for r in rows)
    (out / "bad_inputs.json").write_text(
        json.dumps(
            {"meta": meta, "tried": len(rows), "as_promised": ok, "cases": rows}, indent=2, ensure_ascii=False
        )
        + "\n"
    )
    by_item: dict[str, list[int]] = {}
    for r in rows:
        t = by_item.setdefault(r["item"], [0, 0])
        t[0] += 1
        t[1] += r["as_promised"]
    order = sorted(by_item, key=lambda k: (k == "r1", int(k) if k.isdigit() else 0))
    lines = [
        "# Bad-input census (issue 27)",
        "",
        f"{len(rows)} tried, {ok} as promised. posereid from `{meta['posereid']}` (commit {meta['commit']}), "
        f"{meta['date']}, {meta['seconds']:.0f} s. Made by `python -m studies.bad_inputs` "
        "(see its docstring for the verdict rules).",
        *[
            f"Case(s) {', '.join(u['cases'])} rerun alone on {u['date']} (commit {u['commit']}) with `--update`."
            for u in meta.get("updates", [])
        ],
        "",
        "| item | tried | as promised |",
        "|---|---:|---:|",
        *[f"| {k} | {by_item[k][0]} | {by_item[k][1]} |" for k in order],
        "",
        "| case | item | verdict | what happened |",
        "|---|---|---|---|",
    ]
    for r in rows:
        verdict = "as promised" if r["as_promised"] else "**not as promised**"
        what = r["what"].replace("|", "\\|")
        lines.append(
            f"| `{r['case']}`: {r['description'].replace('|', '/')} | {r['item']} | {verdict} | {what} |"
        )
    (out / "bad_inputs.md").write_text("\n".join(lines) + "\n")


def _commit(path: Path) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m studies.bad_inputs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, help="folder for bad_inputs.md / bad_inputs.json")
    parser.add_argument("--only", help="comma list of case names (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder of the inputs")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument(
        "--update", action="store_true",
        help="with --only: rerun those cases and replace their rows in DIR/bad_inputs.json (the report is "
        "rewritten, and its meta lists the update)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.list:
        for c in CASES:
            print(f"{c.name:36} {c.item:>3}  {c.description}")
        return 0
    if args.out is None:
        parser.error("--out is required")
    import posereid

    where = Path(posereid.__file__).resolve().parent
    probe = subprocess.run(
        [sys.executable, "-c", "import posereid; print(posereid.__file__)"], capture_output=True, text=True,
        env=_env(), check=False,
    )  # fmt: skip
    sub = Path(probe.stdout.strip()).resolve().parent if probe.stdout.strip() else None
    print(f"posereid here: {where}; in subprocesses: {sub}", flush=True)
    if sub != where:
        print("error: subprocesses import another posereid (set PYTHONPATH)", file=sys.stderr)
        return 2
    names = set(args.only.split(",")) if args.only else None
    if args.update and not names:
        parser.error("--update needs --only")
    if names and (unknown := names - {c.name for c in CASES}):
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    root = Path(tempfile.mkdtemp(prefix="bad_inputs_"))
    t0 = time.perf_counter()
    commit = _commit(where)  # at the start: the checkout may move while the census runs
    try:
        rows = run_census(Ctx(root), names)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    meta = {
        "posereid": str(where), "commit": commit, "python": sys.version.split()[0],
        "date": time.strftime("%Y-%m-%d %H:%M"), "seconds": time.perf_counter() - t0,
    }  # fmt: skip
    if args.update:
        old = json.loads((args.out / "bad_inputs.json").read_text())
        new = {r["case"]: r for r in rows}
        rows = [new.pop(r["case"], r) for r in old["cases"]] + list(new.values())
        update = {k: meta[k] for k in ("commit", "date")} | {"cases": sorted(names or ())}
        meta = {**old["meta"], "updates": [*old["meta"].get("updates", []), update]}
    write_report(args.out, rows, meta)
    ok = sum(r["as_promised"] for r in rows)
    print(f"{len(rows)} tried, {ok} as promised")
    print(f"report: {args.out / 'bad_inputs.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
