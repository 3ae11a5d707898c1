"""The PIDM-style v2 ablation (issue 11, item 5): one row per recipe change, same data, seeds and budget.

Every row trains the ``small`` preset from scratch on the same synthetic train split for the same number of
optimizer steps (equal steps are equal CPU time up to the per-step cost, which ``bench`` measures on a quiet
machine), then scores the EMA weights with :func:`~posereid.experiments.quality.evaluate.evaluate_generator`
on the same 64 unseen test pairs (20 steps, guidance 2, the pose judge, the re-ID judge). The first run
also scores the floor (untrained) and the ceiling (real images). A budget fixed in steps keeps the rows
comparable when other work shares the CPU; wall times are recorded but not compared::

    python -m studies.ablation run   --work runs/ablation --data DATA \\
        --reid-checkpoint REID --rows baseline,v_pred --seeds 0,1 --steps 500 [--max-minutes M]
    python -m studies.ablation steps --work runs/ablation --row v_pred --seed 0
    python -m studies.ablation bench --rows baseline,v_pred --out BENCH.json
    python -m studies.ablation table --work runs/ablation --out results/generator_v2

``run`` resumes: a finished run (``result.json``) is skipped and a stopped training continues from its
last checkpoint, so ``--max-minutes`` and a rerun finish the grid.

Issue 24 ("the generated person is the source person") adds rows to today's PIDM ``flow`` and ``cfld``
rows, at their budgets (500 / 320 steps): ``+ref`` (reference attention: every self-attention layer also
attends to the source's features of its resolution), ``+id`` (the identity loss against a frozen re-ID
model, ``--identity-model``, as ``train-generator --identity-model``) and ``+ref+id``. The identity model
is recorded in each ``+id`` run (file name, sha256 prefix, weight) and listed under the table; score those
rows with an ``--independent-reid-checkpoint`` too, as the identity loss trains towards its own model::

    python -m studies.ablation bench --rows flow,flow+ref,...,cfld+ref+id --identity-model IDMODEL --out BENCH.json
    python -m studies.ablation run --work runs/ablation24 --data DATA --reid-checkpoint REID \
        --independent-reid-checkpoint JUDGE2 --identity-model IDMODEL --seeds 0,1 --equal-budget BENCH.json \
        --rows flow,flow+ref,flow+id,flow+ref+id,cfld,cfld+ref,cfld+id,cfld+ref+id

``--unseen-data SEED1_DATA --unseen-reid-checkpoint J1 --unseen-independent-reid-checkpoint J2`` also scores
every run on people and a style it never saw; the table then reports each row's identity and pose shares seen
vs unseen and flags a gap above 0.2 (memorising, not transferring).
``--equal-budget`` gives every row the quiet CPU-minutes of the PIDM flow row at 500 steps (the budget of
``results/generator_v2``): a row that costs more per step trains for fewer steps.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from posereid.argtypes import csv_list, non_negative_float, non_negative_int, positive_float, positive_int
from posereid.experiments.identity_loss import DEFAULT_IDENTITY_WEIGHT, IdentityLoss
from posereid.models.io_utils import atomic_write

logger = logging.getLogger(__name__)

#: row name → overrides of the ``small`` preset (model and schedule fields); every row names its
#: prediction type, so the rows stay what they were measured as when the preset's recipe changes
#: ("baseline" is the ε recipe the presets had before this ablation)
ROWS: dict[str, dict[str, Any]] = {
    "baseline": {"prediction_type": "epsilon"},
    "v_pred": {"prediction_type": "v_prediction"},
    "v_pred+zero_snr": {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True},
    "v_pred+min_snr5": {"prediction_type": "v_prediction", "snr_gamma": 5.0},
    "v_pred+src_drop": {"prediction_type": "v_prediction", "p_drop_source_pose": 0.3},
    "v_pred+per_level": {"prediction_type": "v_prediction", "texture_attention": "per_level"},
    "v_pred+cubic_t": {"prediction_type": "v_prediction", "timestep_sampling": "cubic"},
    "flow": {"prediction_type": "flow"},
}
#: rows with a family and step budget of their own. The other families at the CPU budget of a PIDM row of 500
#: steps (~5 quiet CPU-minutes): steps from their cost per step relative to PIDM's, measured in one quiet ``bench`` of 20 steps before the runs (CFLD: 1.04 vs
#: 0.67 s/step, so 320; the committed bench.json reads 1.22 vs 0.78); PCDMs splits its budget over its stages.
#: CFLD rows use the flow recipe the PIDM rows chose (a comparison of architectures; ``cfld-v_pred`` is the
#: recipe check, made with the earlier query init). The ``-q0.02`` rows are CFLDModel's earlier PRD query init
#: (0.02 instead of 1.0). PCDMs' row predates flow.
#: Issue 24's rows: today's PIDM ``flow`` and ``cfld`` rows + reference attention (``+ref``), + the identity
#: loss (``+id``, :data:`IDENTITY_ROWS`), + both, at the same budgets (PIDM 500 steps, CFLD 320).
_FLOW = {"prediction_type": "flow"}
_REF = {"reference_attention": True}
FAMILY_ROWS: dict[str, dict[str, Any]] = {
    "flow+ref": {"family": "pidm", "steps": 500, "overrides": {**_FLOW, **_REF}},
    "flow+id": {"family": "pidm", "steps": 500, "overrides": {**_FLOW}},
    "flow+ref+id": {"family": "pidm", "steps": 500, "overrides": {**_FLOW, **_REF}},
    "cfld": {"family": "cfld", "steps": 320, "overrides": {**_FLOW}},
    "cfld+ref": {"family": "cfld", "steps": 320, "overrides": {**_FLOW, **_REF}},
    "cfld+id": {"family": "cfld", "steps": 320, "overrides": {**_FLOW}},
    "cfld+ref+id": {"family": "cfld", "steps": 320, "overrides": {**_FLOW, **_REF}},
    "cfld-no_hga": {"family": "cfld", "steps": 320, "overrides": {**_FLOW, "use_hga": False}},
    "cfld-no_prd": {"family": "cfld", "steps": 320, "overrides": {**_FLOW, "use_prd": False}},
    "cfld-no_prd-no_hga": {
        "family": "cfld",
        "steps": 320,
        "overrides": {**_FLOW, "use_prd": False, "use_hga": False},
    },
    "cfld-q0.02": {"family": "cfld", "steps": 320, "overrides": {**_FLOW, "prd_query_std": 0.02}},
    "cfld-no_hga-q0.02": {
        "family": "cfld",
        "steps": 320,
        "overrides": {**_FLOW, "use_hga": False, "prd_query_std": 0.02},
    },
    "cfld-v_pred": {
        "family": "cfld",
        "steps": 320,
        "overrides": {"prediction_type": "v_prediction", "prd_query_std": 0.02},
    },
    "pcdms": {
        "family": "pcdms",
        "stage_steps": {"inpaint": 150, "prior": 300, "refine": 150},
        "overrides": {"prediction_type": "v_prediction"},  # the image stages; the prior predicts x0
    },
}
#: rows trained with the identity loss (``GeneratorPipeline.set_identity_loss``): ``run --identity-model``
IDENTITY_ROWS = frozenset({"flow+id", "flow+ref+id", "cfld+id", "cfld+ref+id"})
#: the issue-24 grid, in table order
ISSUE24_ROWS = ("flow", "flow+ref", "flow+id", "flow+ref+id", "cfld", "cfld+ref", "cfld+id", "cfld+ref+id")
#: ``train-generator --identity-weight``'s default, the weight the ``+id`` rows use unless told otherwise
IDENTITY_WEIGHT = DEFAULT_IDENTITY_WEIGHT
PRESET = "small"
#: training hyper-parameters shared by every row (the asset's, scaled to a short run)
TRAIN = dict(batch_size=16, lr=3e-4, ema_decay=0.999, checkpoint_every=100, keep_checkpoints=1)
METRICS = ("pckh", "rank1", "mAP", "ssim", "mask_ssim", "id_margin")
#: the independent re-ID judge's scores (``run --independent-reid-checkpoint``), when a run has them
INDEPENDENT_METRICS = ("rank1_independent", "mAP_independent")


def check_identity(rows: list[str], identity: IdentityLoss | None) -> None:
    """Refuse (``SystemExit``) ``+id`` rows without an identity model, or one whose file is missing."""
    wanting = [row for row in rows if row in IDENTITY_ROWS]
    if wanting and identity is None:
        raise SystemExit(
            f"rows {', '.join(wanting)} train with the identity loss: give --identity-model PATH (a re-ID "
            "checkpoint from train-reid, trained on the generator's own training images)"
        )
    if wanting and not identity.model.is_file():
        raise SystemExit(
            f"--identity-model {identity.model}: re-ID checkpoint not found (make one with train-reid)"
        )


def _warn_identity_judge(
    identity: IdentityLoss | None, rows: list[str], reid: Path, independent: Path | None
) -> None:
    """Warn when the ``+id`` rows are judged by the very re-ID model their loss trained towards, with no
    independent judge beside it: their first-judge rank-1 / mAP then measure the loss, not the identity."""
    if identity is None or not any(row in IDENTITY_ROWS for row in rows) or independent is not None:
        return
    from posereid.models.io_utils import file_sha256

    if reid.is_file() and file_sha256(reid) == file_sha256(identity.model):
        logger.warning(
            "--identity-model is the --reid-checkpoint judge: the +id rows trained towards it; add "
            "--independent-reid-checkpoint for identity scores the loss never saw"
        )


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path) as fh:
        fh.write(text)


def _overrides(row: str) -> dict[str, Any]:
    if row in FAMILY_ROWS:
        return dict(FAMILY_ROWS[row].get("overrides", {}))
    if row not in ROWS:
        raise SystemExit(f"unknown ablation row {row!r}; known: {', '.join([*ROWS, *FAMILY_ROWS])}")
    return dict(ROWS[row])


def _pipeline(row: str) -> Any:
    from posereid.models.contract import family_class

    return family_class(FAMILY_ROWS.get(row, {}).get("family", "pidm"))


def _row_model(row: str, identity: IdentityLoss | None) -> Any:
    """A fresh ``small`` generator of ``row``, with ``identity``'s loss set on an ``IDENTITY_ROWS`` row (when
    given): what :func:`train_row` trains and :func:`bench_rows` times."""
    model = _pipeline(row).from_preset(PRESET, **_overrides(row))
    if row in IDENTITY_ROWS and identity is not None:
        model = identity.apply(model)
    return model


def run_dir(work: Path, row: str, seed: int) -> Path:
    return work / f"{row}-s{seed}"


def train_row(
    work: Path,
    data: Path,
    row: str,
    seed: int,
    steps: int,
    max_minutes: float | None,
    identity: IdentityLoss | None = None,
    *,
    exact_steps: bool = False,
) -> bool:
    """Train one (row, seed) to ``steps``; ``False`` when ``max_minutes`` ran out first (rerun resumes).
    An ``IDENTITY_ROWS`` row trains with ``identity``'s loss (required for those rows). A family row trains
    for its own budget (``FAMILY_ROWS[row]["steps"]``) unless ``exact_steps`` (an equal-budget run)."""
    from accelerate.utils import set_seed

    from posereid.experiments.data import market_pose_records
    from posereid.models.training import (
        PosePairDataset,
        TrainConfig,
        stage_done,
        train_generator,
        train_stages,
    )

    out = run_dir(work, row, seed)
    spec = FAMILY_ROWS.get(row, {})
    stage_steps = spec.get("stage_steps") or {"": steps if exact_steps else spec.get("steps", steps)}
    if all(stage_done(out / stage, n) for stage, n in stage_steps.items()) and (out / "final").is_dir():
        return True
    records = market_pose_records(data, data / "market-annotation-train.csv")
    check_identity([row], identity)
    set_seed(seed)
    pipeline = _pipeline(row)
    model = _row_model(row, identity)
    id_loss = identity.description() if row in IDENTITY_ROWS else None
    dataset = PosePairDataset(records, model.image_size, seed=seed)
    configs = {
        stage: TrainConfig(
            steps=n,
            warmup_steps=max(1, n // 10),
            sample_every=0,
            seed=seed,
            max_minutes=max_minutes,
            identity_loss=id_loss,
            **TRAIN,
        )
        for stage, n in stage_steps.items()
    }
    t0 = time.perf_counter()
    if "stage_steps" in spec:
        result = train_stages(
            lambda prev: model if prev is None else pipeline.from_pretrained(prev).train(), dataset, configs, out,
            progress=False,
        )  # fmt: skip
    else:
        result = train_generator(model, dataset, configs[""], out, progress=False)
    wall = json.loads((out / "wall.json").read_text())["train_wall_s"] if (out / "wall.json").is_file() else 0
    _write_text(out / "wall.json", json.dumps({"train_wall_s": wall + time.perf_counter() - t0}))
    return result is None or not result.out_of_time


def _score(
    out: Path,
    row: str,
    data: Path,
    reid: Path,
    independent_reid: Path | None,
    folder: str,
    *,
    references: bool,
    n_pairs: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A trained run's EMA weights scored on ``data``'s test pairs, the same way for every dataset (20 steps,
    guidance 2, seed 0; report in ``out/folder``): the report and ``{"trained", and with ``references`` the real
    images' "ceiling" and the untrained generator's "floor"}``."""
    from posereid.experiments.quality.evaluate import evaluate_generator
    from posereid.models.contract import load_generator

    gen = load_generator(out / "final", device="cpu")
    report = evaluate_generator(
        gen, data, reid_checkpoint=reid, steps=20, guidance=(2.0, 2.0), n_pairs=n_pairs, seed=0,
        out_dir=out / folder, include_ceiling=references, include_floor=references, generator_name=row,
        independent_reid_checkpoint=independent_reid,
    )  # fmt: skip
    systems = report["systems"]
    scores = {"trained": systems["trained"]}
    if references:
        scores.update(ceiling=systems["real (ceiling)"], floor=systems["untrained (floor)"])
    return report, scores


def evaluate_row(
    work: Path,
    data: Path,
    reid: Path,
    row: str,
    seed: int,
    *,
    references: bool,
    n_pairs: int,
    identity: IdentityLoss | None = None,
    independent_reid: Path | None = None,
) -> dict[str, Any]:
    """Score a trained (row, seed) on the test pairs; writes and returns ``result.json``'s content.

    ``identity``: recorded for an ``IDENTITY_ROWS`` row (what it trained against). ``independent_reid``: a
    second re-ID judge (``*_independent`` scores), which the identity loss never saw."""
    from posereid.models.io_utils import file_sha256

    out = run_dir(work, row, seed)
    trained_with = None
    if row in IDENTITY_ROWS:
        check_identity([row], identity)
        trained_with = identity.record()
        # the identity loss trained towards this model: its own rank-1 / mAP are not an independent measure
        trained_with["is_first_judge"] = reid.is_file() and file_sha256(reid)[:12] == trained_with["sha256"]
        config_file = out / "train_config.json"
        recorded = json.loads(config_file.read_text()).get("identity_loss") if config_file.is_file() else None
        if recorded is not None and recorded != identity.description():
            raise SystemExit(
                f"{out} was trained with the identity loss {recorded!r}, not {identity.description()!r}: "
                "give the --identity-model / --identity-weight it was trained with"
            )
    report, scores = _score(
        out, row, data, reid, independent_reid, "eval", references=references, n_pairs=n_pairs
    )
    result = {
        "row": row, "seed": seed, "overrides": ROWS.get(row, FAMILY_ROWS.get(row)), "preset": PRESET,
        "steps": _trained_steps(out, row),
        "train_wall_s": json.loads((out / "wall.json").read_text())["train_wall_s"],
        "identity_loss": trained_with, **scores,
    }  # fmt: skip
    if "reid_judges" in report:
        result["reid_judges"] = report["reid_judges"]
    _write_text(out / "result.json", json.dumps(result, indent=1))
    return result


@dataclass(frozen=True)
class Unseen:
    """People the generators never saw (a dataset rendered with another seed: other people and style) and its
    own re-ID judges (trained on its real train images), to tell transfer from memorising."""

    data: Path
    reid: Path
    independent_reid: Path | None = None


def evaluate_unseen(
    work: Path, row: str, seed: int, unseen: Unseen, *, references: bool, n_pairs: int
) -> dict[str, Any]:
    """Score a trained (row, seed) on ``unseen``'s test pairs as :func:`evaluate_row` does on the training data's
    (``eval_unseen/``) and add the scores to its ``result.json`` under ``"unseen"`` (with the real images and
    the untrained generator there when ``references``); returns that entry."""

    out = run_dir(work, row, seed)
    result = json.loads((out / "result.json").read_text())
    _, scores = _score(
        out,
        row,
        unseen.data,
        unseen.reid,
        unseen.independent_reid,
        "eval_unseen",
        references=references,
        n_pairs=n_pairs,
    )
    entry: dict[str, Any] = {"data": str(unseen.data), **scores}
    result["unseen"] = entry
    _write_text(out / "result.json", json.dumps(result, indent=1))
    return entry


def _trained_steps(out: Path, row: str) -> int | dict[str, int]:
    """Optimizer steps run (per stage for a staged family)."""
    from posereid.models.training import list_checkpoints

    def last(folder: Path) -> int:
        done = list_checkpoints(folder)
        return done[-1][0] if done else -1

    stages = FAMILY_ROWS.get(row, {}).get("stage_steps")
    return {stage: last(out / stage) for stage in stages} if stages else last(out)


def source_pose_row(work: Path, data: Path, row: str, seed: int, n_pairs: int) -> list[dict]:
    """PCKh / SSIM with and without source keypoints (the item-2 mismatch) for one trained run."""
    from studies.source_pose_check import check

    out = run_dir(work, row, seed)
    path = out / "source_pose.json"
    if path.is_file():
        return json.loads(path.read_text())
    rows = check(str(out / "final"), str(data), n_pairs=n_pairs)
    _write_text(path, json.dumps(rows, indent=1))
    return rows


def steps_sweep(
    work: Path, data: Path, reid: Path, row: str, seed: int, steps: list[int], n_pairs: int
) -> dict:
    """Scores at fewer sampler steps (the steps column: fewest within 2 % of the 20-step scores)."""
    from posereid.experiments.quality.evaluate import evaluate_generator
    from posereid.models.contract import load_generator

    out = run_dir(work, row, seed)
    path = out / "steps.json"
    if path.is_file():
        return json.loads(path.read_text())
    gen = load_generator(out / "final", device="cpu")
    scores = {}
    for n in steps:
        rep = evaluate_generator(
            gen, data, reid_checkpoint=reid, steps=n, guidance=(2.0, 2.0), n_pairs=n_pairs, seed=0,
            out_dir=out / f"eval-steps{n}", include_ceiling=False, include_floor=False, generator_name=row,
        )  # fmt: skip
        scores[str(n)] = rep["systems"]["trained"]
    _write_text(path, json.dumps(scores, indent=1))
    return scores


def _loop_seconds_per_step(row: str, records: list, train_steps: int, identity: IdentityLoss | None) -> float:
    """Seconds per step of the real training loop (:func:`train_row`'s: the data set, EMA, gradient clipping,
    scheduler and logging included) on ``records`` (the data's pose records): the time of a ``train_steps + 5``-step run less that of a
    5-step run (each fresh, in a temporary folder), so set-up and the final save cancel."""
    import tempfile

    from posereid.models.training import PosePairDataset, TrainConfig, train_generator

    wall = {}
    for n in (5, train_steps + 5):
        torch.manual_seed(0)
        model = _row_model(row, identity)
        dataset = PosePairDataset(records, model.image_size, seed=0)
        cfg = TrainConfig(steps=n, warmup_steps=1, sample_every=0, seed=0, tensorboard=False,
                          **{**TRAIN, "checkpoint_every": 0})  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            train_generator(model, dataset, cfg, Path(tmp), progress=False)
            wall[n] = time.perf_counter() - t0
    return (wall[train_steps + 5] - wall[5]) / train_steps


def _bench_row(
    row: str,
    train_steps: int,
    images: int,
    steps: int,
    identity: IdentityLoss | None,
    records: list | None = None,
) -> dict:
    """One timing of one row (see :func:`bench_rows`); ``records``: time the real training loop on them."""
    if records is not None and "stage_steps" in FAMILY_ROWS.get(row, {}):
        raise ValueError(
            f"{row}: bench --data times one-model rows only (a staged row times its stages bare)"
        )
    if row in IDENTITY_ROWS and identity is None:
        logger.warning("%s: timed without its identity loss (no --identity-model)", row)
    pipe = _row_model(row, identity)
    h, w = pipe.image_size
    b = TRAIN["batch_size"]
    src, tgt = torch.rand(b, 3, h, w), torch.rand(b, 3, h, w)
    kps = torch.rand(b, 18, 2) * torch.tensor([w - 1, h - 1])
    per_stage = {}
    # a one-model family's TRAINING_STAGES is empty: its one "stage" is the whole model
    for stage in () if records is not None else pipe.TRAINING_STAGES or ("",):
        if stage:
            pipe.set_training_stage(stage)
        opt = torch.optim.AdamW([p for p in pipe.parameters() if p.requires_grad], lr=1e-4)
        times = []
        for i in range(train_steps + 1):
            t0 = time.perf_counter()
            loss = pipe.training_loss(src, tgt, kps, kps, generator=torch.Generator().manual_seed(i))
            loss.backward()
            opt.step()
            opt.zero_grad()
            if i:  # the first step warms up
                times.append(time.perf_counter() - t0)
        per_stage[stage or "all"] = statistics.median(times)
    if records is not None:
        per_stage["all"] = _loop_seconds_per_step(row, records, train_steps, identity)
    pipe.eval()
    n = min(images, b)
    t0 = time.perf_counter()
    pipe.generate(src[:n], kps[:n], kps[:n], steps=steps, seeds=list(range(n)))
    return {"sec_per_train_step": per_stage, "sec_per_image": (time.perf_counter() - t0) / n}


def bench_rows(
    rows: list[str],
    *,
    train_steps: int = 6,
    images: int = 16,
    steps: int = 20,
    identity: IdentityLoss | None = None,
    rounds: int = 2,
    data: Path | None = None,
) -> dict:
    """Quiet-machine cost per row: seconds per training step (batch 16; per stage for a staged family) and
    per image (``steps`` sampler steps per stage), so budgets in steps convert to CPU-minutes. An ``+id``
    row's steps include its identity loss when ``identity`` is given (else they are timed without it).

    Each row is timed ``rounds`` times (the rows in order, then in reverse, ...) and keeps its fastest
    timing: a stall of the machine during one row (another process, the first row's warm-up) otherwise
    inflates that row alone and, through ``--equal-budget``, every other row's steps.

    With ``data`` (a synth-market folder) the training cost is that of the real training loop on it
    (:func:`_loop_seconds_per_step`, ``train_steps`` timed steps), what a run of the grid pays per step, the data
    set, EMA, clipping and logging included (about 7 % of a PIDM step in a profile). On the shared 2-core
    machine the speed itself drifts by up to a quarter over minutes (the flow row: 0.83 then 0.65 s/step a
    quarter of an hour apart), which ``rounds`` only partly absorbs: budgets from a bench are good to
    about ±20 %."""
    records = None
    if data is not None:  # read once for every row and round
        from posereid.experiments.data import market_pose_records

        records = market_pose_records(data, data / "market-annotation-train.csv", progress=False)
    res: dict[str, dict] = {}
    for r in range(rounds):
        for row in rows if r % 2 == 0 else rows[::-1]:
            torch.manual_seed(0)
            t = _bench_row(row, train_steps, images, steps, identity, records)
            logger.info("%s (round %d): %s", row, r + 1, t)
            if row not in res:
                res[row] = t
                continue
            best = res[row]
            for stage, sec in t["sec_per_train_step"].items():
                best["sec_per_train_step"][stage] = min(best["sec_per_train_step"][stage], sec)
            best["sec_per_image"] = min(best["sec_per_image"], t["sec_per_image"])
    for t in res.values():
        t["timed"] = "training loop" if data is not None else "bare step"
    return res


#: the row whose budget every row of an equal-budget run gets (``run --equal-budget``): the PIDM flow row at 500
#: steps, the budget of ``results/generator_v2``
BUDGET_ROW, BUDGET_STEPS = "flow", 500


def equal_budget_steps(rows: list[str], bench: dict, minutes: float | None = None) -> dict[str, int]:
    """Training steps per row that cost the same quiet CPU-minutes (from ``bench``'s seconds per step):
    ``minutes``, default those of :data:`BUDGET_ROW` at :data:`BUDGET_STEPS`. A row more expensive per step
    (reference attention, the identity loss) gets fewer steps, so it is compared at equal cost, not equal
    steps. Staged rows (PCDMs) keep their own split. ``KeyError`` naming a row ``bench`` lacks."""
    missing = [
        r
        for r in [*rows, *([] if minutes is not None else [BUDGET_ROW])]
        if not bench.get(r, {}).get("sec_per_train_step")
    ]
    if missing:
        raise KeyError(
            f"the bench has no training cost for {', '.join(missing)}: run `bench --rows {','.join(missing)}` first"
        )
    if minutes is None:
        minutes = bench[BUDGET_ROW]["sec_per_train_step"]["all"] * BUDGET_STEPS / 60.0
    steps = {}
    for row in rows:
        if "stage_steps" in FAMILY_ROWS.get(row, {}):
            continue
        steps[row] = max(1, round(minutes * 60.0 / bench[row]["sec_per_train_step"]["all"]))
    return steps


def budget_minutes(row: str, bench: dict, steps: int) -> float | None:
    """Quiet CPU-minutes of a row's training from its measured cost per step."""
    if row not in bench:
        return None
    cost = bench[row]["sec_per_train_step"]
    spec = FAMILY_ROWS.get(row, {})
    # the steps a run trained (an equal-budget run's own), else the row's budget
    stage_steps = spec.get("stage_steps") or {"all": steps or spec.get("steps", 0)}
    return sum(cost[stage] * n for stage, n in stage_steps.items()) / 60.0


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def collect(work: Path, include: list[Path] = ()) -> dict[str, list[dict]]:
    """Every scored run: ``work``'s ``result.json`` files, plus the runs recorded in ``include`` (earlier
    ``ablation_runs.json`` files, e.g. the committed ones after the work folder is gone); a (row, seed)
    present in ``work`` wins."""
    found: dict[tuple[str, int], dict] = {}
    for runs_file in include:
        for rs in json.loads(Path(runs_file).read_text()).values():
            found.update({(r["row"], r["seed"]): r for r in rs})
    for path in sorted(work.glob("*/result.json")):
        r = json.loads(path.read_text())
        if (path.parent / "steps.json").is_file():
            r["sampler_steps"] = json.loads((path.parent / "steps.json").read_text())
        found[(r["row"], r["seed"])] = r
    runs: dict[str, list[dict]] = {}
    for key in sorted(found):
        runs.setdefault(key[0], []).append(found[key])
    return runs


def render_table(runs: dict[str, list[dict]], bench: dict | None = None) -> str:
    """The markdown ablation table of :func:`collect`'s runs: mean ± sd over seeds; with ``bench``, the quiet
    training budget in CPU-minutes and the seconds per image (20 sampler steps per stage, batch 16, 2 CPU
    threads). Runs scored by an independent re-ID judge add its rank-1 / mAP columns; the identity models
    of ``+id`` rows are listed under the table (:func:`render_identity`)."""
    refs = next((r for rs in runs.values() for r in rs if "ceiling" in r), None)
    metrics = list(METRICS)
    head = ["row", "seeds", "PCKh (judge)", "re-ID rank-1", "re-ID mAP", "SSIM", "Mask-SSIM", "id margin"]
    if any(INDEPENDENT_METRICS[0] in r["trained"] for rs in runs.values() for r in rs):
        metrics += INDEPENDENT_METRICS
        head += ["rank-1 (indep. judge)", "mAP (indep. judge)"]
    head += ["train steps", "CPU-min (quiet)", "s/image"] if bench else ["train steps"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    blank = " – |" * (len(head) - 2 - len(metrics))

    def cells(systems: list[dict]) -> list[str]:
        return [_mean_sd([s[m] for s in systems]) if all(m in s for s in systems) else "–" for m in metrics]

    if refs:
        lines.append("| ceiling (real images) | – | " + " | ".join(cells([refs["ceiling"]])) + " |" + blank)
    for row in [*ROWS, *FAMILY_ROWS]:
        if row not in runs:
            continue
        rs = sorted(runs[row], key=lambda r: r["seed"])
        steps = rs[0]["steps"]
        extra = ["+".join(f"{k} {v}" for k, v in steps.items()) if isinstance(steps, dict) else str(steps)]
        if bench:
            minutes = budget_minutes(row, bench, steps if isinstance(steps, int) else 0)
            extra += (
                ["–", "–"] if minutes is None else [f"{minutes:.1f}", f"{bench[row]['sec_per_image']:.2f}"]
            )
        seeds = ",".join(str(r["seed"]) for r in rs)
        lines.append(f"| {row} | {seeds} | " + " | ".join(cells([r["trained"] for r in rs]) + extra) + " |")
    if refs:
        lines.append("| floor (untrained) | – | " + " | ".join(cells([refs["floor"]])) + " |" + blank)
    identity = render_identity(runs)
    return "\n".join(lines) + (f"\n\n{identity}" if identity else "")


def render_seen_unseen(runs: dict[str, list[dict]]) -> str:
    """Per row scored on unseen people too: identity (the independent judge's mAP, else the judge's) and pose
    (PCKh) as shares of the way from the floor to the real images on the training data's test people ("seen"
    style) and on the unseen dataset, and the gap; a gap above ``quality-compare``'s threshold is flagged: a
    generator that keeps identity only in its training style is memorising, not transferring."""
    from posereid.experiments.quality.compare import DEFAULT_GAP_THRESHOLD, share

    seen_refs = next((r for rs in runs.values() for r in rs if "ceiling" in r), None)
    unseen_refs = next(
        (r["unseen"] for rs in runs.values() for r in rs if "ceiling" in r.get("unseen", {})), None
    )
    if seen_refs is None or unseen_refs is None:
        return ""
    independent = all("mAP_independent" in ref for ref in (seen_refs["ceiling"], unseen_refs["ceiling"]))
    metrics = (("identity", "mAP_independent" if independent else "mAP"), ("pose", "pckh"))

    def mean_share(values: list[dict], refs: dict, metric: str) -> float | None:
        shares = [
            share(v.get(metric), refs["ceiling"].get(metric), refs["floor"].get(metric)) for v in values
        ]
        return None if not shares or any(x is None for x in shares) else statistics.mean(shares)

    lines = [
        "| row | seeds | " + " | ".join(f"{k} share seen | unseen | gap" for k, _ in metrics) + " |",
        "|---|---|" + "---|---|---|" * len(metrics),
    ]
    flagged = []
    for row in [*ROWS, *FAMILY_ROWS]:
        rs = sorted((r for r in runs.get(row, []) if "unseen" in r), key=lambda r: r["seed"])
        if not rs:
            continue
        cells = []
        for kind, metric in metrics:
            a = mean_share([r["trained"] for r in rs], seen_refs, metric)
            b = mean_share([r["unseen"]["trained"] for r in rs], unseen_refs, metric)
            gap = None if a is None or b is None else a - b
            if gap is not None and gap > DEFAULT_GAP_THRESHOLD:
                flagged.append(f"{row} ({kind} {gap:+.2f})")
            cells += ["–" if x is None else f"{x:.2f}" for x in (a, b)] + [
                "–" if gap is None else f"{gap:+.2f}"
            ]
        lines.append(f"| {row} | {','.join(str(r['seed']) for r in rs)} | " + " | ".join(cells) + " |")
    judge = "the independent judge's mAP" if independent else "the re-ID judge's mAP"
    note = (
        f"\nShares: 0 = the untrained generator, 1 = the real images, on each dataset's own test pairs (identity: "
        f"{judge}; pose: PCKh). Unseen: `{unseen_refs.get('data', '?')}`. "
        + (
            f"**Gap above {DEFAULT_GAP_THRESHOLD:g}** (keeps it only for its training style): {', '.join(flagged)}."
            if flagged
            else f"No gap above {DEFAULT_GAP_THRESHOLD:g}."
        )
    )
    return "\n".join(lines) + "\n" + note


def render_identity(runs: dict[str, list[dict]]) -> str:
    """One line per identity-loss row: the re-ID model it trained against (file, sha256 prefix, weight)."""
    out = []
    for row in [*ROWS, *FAMILY_ROWS]:
        by_model: dict[str, list[str]] = {}
        for r in sorted(runs.get(row, []), key=lambda r: r["seed"]):
            rec = r.get("identity_loss")
            if rec:
                what = f"{rec['model']} sha256:{rec['sha256']}, weight {rec['weight']:g}"
                if rec.get("is_first_judge"):
                    what += " (also the first re-ID judge: read the independent judge's columns)"
                by_model.setdefault(what, []).append(str(r["seed"]))
        out += [f"- {row} (seeds {','.join(seeds)}): {what}" for what, seeds in by_model.items()]
    return (
        "Identity loss of the `+id` rows (the re-ID model each trained against):\n" + "\n".join(out)
        if out
        else ""
    )


def render_steps(runs: dict[str, list[dict]]) -> str:
    """Per swept run: the fewest sampler steps whose PCKh, rank-1 and SSIM stay within 2 % of 20 steps."""
    out = []
    for res in (r for rs in runs.values() for r in rs if "sampler_steps" in r):
        scores = res["sampler_steps"]
        ref = res["trained"]
        out.append(f"**{res['row']}, seed {res['seed']}** (20 steps: PCKh {ref['pckh']:.3f}, rank-1 "
                   f"{ref['rank1']:.3f}, SSIM {ref['ssim']:.3f})\n")  # fmt: skip
        out.append(
            "| steps | PCKh | rank-1 | mAP | SSIM | s/image | within 2 % |\n|---|---|---|---|---|---|---|"
        )
        best = 20
        for n in sorted(scores, key=int):
            s = scores[n]
            ok = all(s[m] >= ref[m] * 0.98 - 1e-9 for m in ("pckh", "rank1", "ssim"))
            if ok:
                best = min(best, int(n))
            out.append(f"| {n} | {s['pckh']:.3f} | {s['rank1']:.3f} | {s['mAP']:.3f} | {s['ssim']:.3f} | "
                       f"{s.get('sec_per_image', math.nan):.2f} | {'yes' if ok else 'no'} |")  # fmt: skip
        out.append(f"\nFewest steps within 2 % of the 20-step PCKh, rank-1 and SSIM: **{best}**\n")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.ablation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="train and score (row, seed) runs; resumable")
    run.add_argument("--work", type=Path, required=True)
    run.add_argument("--data", type=Path, required=True)
    run.add_argument("--reid-checkpoint", type=Path, required=True)
    run.add_argument(
        "--rows", type=csv_list(str), default=list(ROWS),
        help=f"comma-separated rows (default: the PIDM recipe rows). Known: "
        f"{', '.join([*ROWS, *FAMILY_ROWS])}. Issue 24's grid: {', '.join(ISSUE24_ROWS)}",
    )  # fmt: skip
    run.add_argument("--seeds", type=csv_list(str), default=["0"])
    run.add_argument("--steps", type=positive_int, default=500)
    run.add_argument("--n-pairs", type=positive_int, default=64)
    run.add_argument("--max-minutes", type=positive_float, default=None, help="per training call")
    run.add_argument(
        "--equal-budget", type=Path, default=None, metavar="BENCH_JSON",
        help=f"train each row for the quiet CPU-minutes of {BUDGET_ROW} at {BUDGET_STEPS} steps, its steps from this "
        "`bench` output (rows that cost more per step get fewer steps); default: --steps / each family row's own",
    )  # fmt: skip
    run.add_argument(
        "--unseen-data", type=Path, default=None,
        help="also score every run on this dataset's test pairs (people and style it never saw: a dataset "
        "rendered with another seed), with --unseen-reid-checkpoint; the table reports the seen/unseen gap",
    )  # fmt: skip
    run.add_argument(
        "--unseen-reid-checkpoint", type=Path, default=None, help="the re-ID judge of --unseen-data"
    )
    run.add_argument(
        "--unseen-independent-reid-checkpoint", type=Path, default=None,
        help="the independent re-ID judge of --unseen-data",
    )  # fmt: skip
    run.add_argument(
        "--source-pose-rows", type=csv_list(str), default=[], help="rows also scored without source kps"
    )
    run.add_argument(
        "--identity-model", type=Path, default=None,
        help=f"re-ID checkpoint (train-reid) of the identity loss; required by the +id rows "
        f"({', '.join(sorted(IDENTITY_ROWS))}); its file name, sha256 prefix and weight are recorded per run",
    )  # fmt: skip
    run.add_argument(
        "--identity-weight", type=non_negative_float, default=IDENTITY_WEIGHT,
        help=f"weight of the identity loss (train-generator's default: {IDENTITY_WEIGHT:g})",
    )  # fmt: skip
    run.add_argument(
        "--independent-reid-checkpoint", type=Path, default=None,
        help="a second re-ID judge (rank-1 / mAP columns of its own); use one the identity loss never saw",
    )  # fmt: skip
    st = sub.add_parser("steps", help="the steps column for one run")
    st.add_argument("--work", type=Path, required=True)
    st.add_argument("--data", type=Path, required=True)
    st.add_argument("--reid-checkpoint", type=Path, required=True)
    st.add_argument("--row", required=True)
    st.add_argument("--seed", type=non_negative_int, default=0)
    st.add_argument("--sweep", type=csv_list(str), default=["5", "10", "15"])
    st.add_argument("--n-pairs", type=positive_int, default=64)
    be = sub.add_parser("bench", help="quiet-machine seconds per training step and per image")
    be.add_argument("--rows", type=csv_list(str), default=[*ROWS, *FAMILY_ROWS])
    be.add_argument("--out", type=Path, required=True)
    be.add_argument("--train-steps", type=positive_int, default=6, help="timed training steps per row/stage")
    be.add_argument(
        "--identity-model", type=Path, default=None, help="the +id rows' identity loss, timed too"
    )
    be.add_argument("--identity-weight", type=non_negative_float, default=IDENTITY_WEIGHT)
    be.add_argument(
        "--data", type=Path, default=None,
        help="time the real training loop on this synth-market folder (what a run pays per step) instead of a "
        "bare step on random tensors; one-model rows only",
    )  # fmt: skip
    be.add_argument(
        "--rounds", type=positive_int, default=2, help="time each row this many times, keep its fastest"
    )
    ta = sub.add_parser("table", help="write the markdown table")
    ta.add_argument("--work", type=Path, required=True)
    ta.add_argument("--bench", type=Path, default=None)
    ta.add_argument("--out", type=Path, required=True)
    ta.add_argument(
        "--include", type=Path, action="append", default=[], help="earlier ablation_runs.json to merge"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    if args.cmd == "run":
        for row in args.rows:
            _overrides(row)  # an unknown row is refused before any training
        identity = (
            None if args.identity_model is None else IdentityLoss(args.identity_model, args.identity_weight)
        )
        check_identity(args.rows, identity)
        unseen = None
        if args.unseen_data is not None:
            if args.unseen_reid_checkpoint is None:
                raise SystemExit(
                    "--unseen-data needs --unseen-reid-checkpoint (a re-ID judge of that dataset)"
                )
            unseen = Unseen(
                args.unseen_data, args.unseen_reid_checkpoint, args.unseen_independent_reid_checkpoint
            )
        _warn_identity_judge(identity, args.rows, args.reid_checkpoint, args.independent_reid_checkpoint)
        budget = {}
        if args.equal_budget is not None:
            budget = equal_budget_steps(args.rows, json.loads(args.equal_budget.read_text()))
            print(
                "equal CPU budget, steps per row: " + ", ".join(f"{r} {n}" for r, n in budget.items()),
                flush=True,
            )
        first = not any(args.work.glob("*/result.json"))
        for seed in (int(s) for s in args.seeds):
            for row in args.rows:
                out = run_dir(args.work, row, seed)
                if (out / "result.json").is_file():
                    logger.info("%s seed %d: done", row, seed)
                else:
                    steps = budget.get(row, args.steps)
                    if not train_row(args.work, args.data, row, seed, steps, args.max_minutes, identity,
                                     exact_steps=row in budget):  # fmt: skip
                        print(f"{row} seed {seed}: out of time; rerun to continue")
                        return 3
                    res = evaluate_row(args.work, args.data, args.reid_checkpoint, row, seed,
                                       references=first, n_pairs=args.n_pairs, identity=identity,
                                       independent_reid=args.independent_reid_checkpoint)  # fmt: skip
                    first = False
                    t = res["trained"]
                    print(f"{row} seed {seed}: PCKh {t['pckh']:.3f} rank-1 {t['rank1']:.3f} mAP {t['mAP']:.3f} "
                          f"SSIM {t['ssim']:.3f} ({res['train_wall_s'] / 60:.1f} train-min)", flush=True)  # fmt: skip
                if unseen is not None and "unseen" not in json.loads((out / "result.json").read_text()):
                    first_unseen = not any(
                        "ceiling" in json.loads(p.read_text()).get("unseen", {})
                        for p in args.work.glob("*/result.json")
                    )
                    u = evaluate_unseen(
                        args.work, row, seed, unseen, references=first_unseen, n_pairs=args.n_pairs
                    )
                    t = u["trained"]
                    print(f"{row} seed {seed} unseen: PCKh {t['pckh']:.3f} rank-1 {t['rank1']:.3f} mAP {t['mAP']:.3f}",
                          flush=True)  # fmt: skip
                if row in args.source_pose_rows:
                    for r in source_pose_row(args.work, args.data, row, seed, args.n_pairs):
                        print(f"{row} seed {seed}: {r}", flush=True)
    elif args.cmd == "steps":
        scores = steps_sweep(args.work, args.data, args.reid_checkpoint, args.row, args.seed,
                             [int(s) for s in args.sweep], args.n_pairs)  # fmt: skip
        print(json.dumps({k: {m: v[m] for m in METRICS} for k, v in scores.items()}, indent=1))
    elif args.cmd == "bench":
        identity = (
            None if args.identity_model is None else IdentityLoss(args.identity_model, args.identity_weight)
        )
        res = bench_rows(args.rows, train_steps=args.train_steps, identity=identity, rounds=args.rounds,
                         data=args.data)  # fmt: skip
        _write_text(args.out, json.dumps(res, indent=1))
        print(json.dumps(res, indent=1))
    else:
        bench = json.loads(args.bench.read_text()) if args.bench else None
        args.out.mkdir(parents=True, exist_ok=True)
        runs = collect(args.work, args.include)
        text = render_table(runs, bench) + "\n\n" + render_steps(runs)
        gap = render_seen_unseen(runs)
        if gap:
            text += "\n\n## Seen vs unseen people\n\n" + gap
        _write_text(args.out / "ablation_table.md", text)
        _write_text(args.out / "ablation_runs.json", json.dumps(runs, indent=1))
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
