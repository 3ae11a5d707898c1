"""The generator gate of ``reid-gain``: score the generator on the run's own kept images before any arm
that relies on it is trained, and stop the run when it is near the floor (issue 26 item 2).

:class:`GainGate` is what the command passes to :func:`~posereid.experiments.reid_gain.protocol.run_gain`
(``gate=``); the library call has no gate unless given one. It runs once per run, before the first cell,
when a cell of a :data:`GATED_ARMS` arm is still to be trained:

1. the **first fraction** with such a cell: its kept subset and its generator
   (:func:`~posereid.experiments.reid_gain.protocol.ensure_generator`: trained on the kept images, or the
   given ``--generator``; the same one that fraction's cells then use);
2. the **re-ID judge**: a strong-baseline model trained on the same kept images (the ``auto`` filter model,
   :func:`~posereid.experiments.reid_gain.protocol.ensure_filter_model`, ``work/filter-model-<fraction>``; the ``strong+synthetic+filtered`` arm with ``--filter-checkpoint auto``
   reuses it, so it is trained at most once per fraction);
3. :func:`~posereid.experiments.quality.gate.gate_generator` on pairs of the **kept train images**
   (``split="train"``), with the run's own sampler, steps, guidance and ``subset_seed``, and pose scored by
   the judge of the run's **source** data: the subset folder has no ``synthetic-meta.csv`` of its own, so
   it is told whether the source is the synthetic renderer's (the pose judge) or not (mediapipe).

Why the kept train images and not the test split: everything the gate reads (the pairs, the gallery the
generated targets are recognised in, the realism reference, the judge's training images) is the run's
``D_tr``, which every model of the run may see. The query and gallery images stay untouched until each
cell's final evaluation, so the decision to go on or stop (a choice of generator) is never made on the
images the results are reported on: a gate scored on the test split would select generators on the test
set. The generator and the judge may have seen these images; for a generator trained on ``D_tr`` that
makes the gate lenient (it stops generators that cannot even redraw the people they were trained on),
while a given generator trained elsewhere (the shipped asset on a user's data) meets them for the first
time, which is the case the gate is for.

The verdict is printed (``report``) and recorded in ``out/gate.json`` (one entry per gated fraction, with
the generator's and the judge's fingerprints); a rerun with the same generator, judge and gate settings
reads it back instead of scoring again. A ``near-floor`` verdict raises :class:`GeneratorGateError`
unless ``force``; cells already in ``results.csv`` stay valid either way (the gate changes no protocol
setting).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posereid.experiments.data import MarketSource
from posereid.experiments.quality.gate import (
    DEFAULT_PAIRS,
    NEAR_FLOOR_MARGIN,
    GateResult,
    gate_generator,
)
from posereid.experiments.reid_gain.config import ARMS, GainConfig, fraction_tag

logger = logging.getLogger(__name__)

#: the arms the gate guards: the strong baseline plus generated images, whose promise is "never worse than
#: strong". ``plain+synthetic`` (PIDM's comparison with the plain baseline) is not gated.
GATED_ARMS: tuple[str, ...] = tuple(a for a in ARMS if a.startswith("strong+synthetic"))
#: the run folder's record of the gate's verdicts
GATE_JSON = "gate.json"


class GeneratorGateError(RuntimeError):
    """The gate found the generator near the floor on the run's own data and the run was not forced."""

    def __init__(self, message: str, result: GateResult) -> None:
        super().__init__(message)
        self.result = result


def _fingerprint(path: Path) -> str:
    """SHA-256 over a checkpoint file, or over a checkpoint folder's weight and config files (names + bytes)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json")
    )  # fmt: skip
    for p in files:
        h.update(str(p.relative_to(path) if p != path else p.name).encode())
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


@dataclass
class GainGate:
    """The gate ``reid-gain`` runs before its generator arms (see the module docstring).

    Args:
        force: go on when the verdict is ``near-floor`` (the verdict is still printed and recorded).
        n_pairs: held-out pairs scored (a few dozen keep it well under a minute on a CPU at 64x32).
        near_floor_margin: the ``near-floor`` threshold (:data:`~posereid.experiments.quality.gate.NEAR_FLOOR_MARGIN`).
        report: where the verdict's text goes (the command prints it).
    """

    force: bool = False
    n_pairs: int = DEFAULT_PAIRS
    near_floor_margin: float = NEAR_FLOOR_MARGIN
    report: Callable[[str], None] = field(default=logger.info)
    #: the verdict of the last call (``None`` until the gate has run)
    result: GateResult | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not 0.0 < float(self.near_floor_margin) < 1.0:
            raise ValueError(f"the gate's near-floor margin must be in (0, 1), got {self.near_floor_margin}")
        if int(self.n_pairs) < 2:
            raise ValueError(f"the gate needs at least 2 pairs, got {self.n_pairs}")

    def __call__(
        self,
        config: GainConfig,
        todo: Collection[tuple[str, str, int]],
        *,
        device: str,
        source: MarketSource | None,
        budget: Callable[[], float | None] = lambda: None,
    ) -> MarketSource | None:
        """Gate the run whose cells ``todo`` (``(fraction tag, arm, seed)``) are still to train; returns the
        run's parsed source (made here when the gate needed it)."""
        from posereid.experiments.quality.evaluate import is_synthetic_data
        from posereid.experiments.reid_gain import protocol

        tags = {t for t, arm, _ in todo if arm in GATED_ARMS}
        if not tags:
            return source
        fraction = min(f for f in config.fractions if fraction_tag(f) in tags)
        tag = fraction_tag(fraction)
        source = source if source is not None else protocol.market_source(config)
        subset = protocol.prepare_fraction(config, fraction, source=source)
        generator = protocol.ensure_generator(
            config, fraction, subset, device=device, source=source, max_minutes=budget()
        )
        judge = protocol.ensure_filter_model(config, fraction, subset, device=device)
        # the kept-images subset is the source's people, but its folder lacks the synthetic renderer's
        # metadata: the source says which pose judge scores them
        synthetic = is_synthetic_data(source.root, source.market.root)
        key = {
            "fraction": tag, "generator": str(generator), "generator_sha256": _fingerprint(generator),
            "judge": str(judge), "judge_sha256": _fingerprint(judge), "n_pairs": int(self.n_pairs),
            "near_floor_margin": float(self.near_floor_margin), "steps": int(config.steps), "sampler": config.sampler,
            "guidance": [float(g) for g in config.guidance], "seed": int(config.subset_seed),
            "synthetic": synthetic,
        }  # fmt: skip
        # the CSV's frame, when given (a verdict recorded before the gate read it is scored again)
        if config.annotation_hw is not None:
            key["annotation_hw"] = [int(v) for v in config.annotation_hw]
        path = config.out / GATE_JSON
        records: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
        old = records.get(tag)
        if old is not None and old.get("key") == key:
            result = GateResult.from_dict(old["result"])
            logger.info("reid-gain: the gate's verdict on %s is read from %s", tag, path)
        else:
            result = self._score(config, subset, generator, judge, device, synthetic=synthetic)
        self.result = result
        kept = f"{fraction * 100:g} %"
        self.report(f"reid-gain: the generator gate on the kept images of {kept}:\n{result.describe()}")
        forced = result.near_floor and self.force
        records[tag] = {"key": key, "result": result.as_dict(), "forced": forced}
        self._write(path, records)
        if result.near_floor and not self.force:
            raise GeneratorGateError(
                f"the generator gate stopped the run: {generator} is near the floor on the kept images of "
                f"{kept} (identity {result.identity:.2f} of the way from an untrained "
                f"generator to the real images, below {self.near_floor_margin:g}); its images would likely cost "
                f"mAP. The verdict is in {path}. Rerun with --force to train the generator arms anyway, or use a "
                "better generator",
                result,
            )
        if forced:
            self.report("reid-gain: --force: training the generator arms although the gate says near-floor")
        return source

    def _score(
        self, config: GainConfig, subset: Any, generator: Path, judge: Path, device: str, *, synthetic: bool
    ) -> GateResult:
        from posereid.models.contract import load_generator

        model = load_generator(generator, device=device)
        return gate_generator(
            model, subset.root, judge, annotations=subset.annotations, split="train", n_pairs=self.n_pairs,
            steps=config.steps, sampler=config.sampler, guidance=config.guidance, seed=config.subset_seed,
            synthetic=synthetic, near_floor_margin=self.near_floor_margin, annotation_hw=config.annotation_hw,
        )  # fmt: skip

    @staticmethod
    def _write(path: Path, records: dict[str, Any]) -> None:
        from posereid.models.io_utils import atomic_write

        with atomic_write(path) as fh:
            json.dump(records, fh, indent=2, allow_nan=False)


__all__ = ["GATED_ARMS", "GATE_JSON", "GainGate", "GeneratorGateError"]
