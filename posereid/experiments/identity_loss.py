"""The identity loss of generator training, from a re-ID checkpoint: one owner for ``train-generator
--identity-model`` and ``studies.ablation``'s ``+id`` rows, so both build the same loss and record it in
the same words (a resume under either command checks that record).

:class:`IdentityLoss` builds the frozen :class:`~posereid.reid_integration.torchreid_plugin.ReidFeatureExtractor`
of the checkpoint, sets it on a pipeline (``GeneratorPipeline.set_identity_loss``) and writes what a run records:
the file name, a sha256 prefix and the weight (``TrainConfig.identity_loss``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posereid.models.io_utils import file_sha256

#: ``train-generator --identity-weight``'s default (the ablation's ``+id`` rows use it too)
DEFAULT_IDENTITY_WEIGHT = 0.1


@dataclass(frozen=True)
class IdentityLoss:
    """The re-ID checkpoint ``model`` whose features of the predicted clean image are pulled towards the
    target's, and the loss's ``weight``."""

    model: Path
    weight: float = DEFAULT_IDENTITY_WEIGHT

    def record(self) -> dict[str, Any]:
        """What a run records: file name, sha256 prefix (12 hex digits) and weight."""
        return {"model": self.model.name, "sha256": file_sha256(self.model)[:12], "weight": self.weight}

    def description(self) -> str:
        """``TrainConfig.identity_loss``: ``NAME sha256:PREFIX weight W`` (a resume with another is refused)."""
        r = self.record()
        return f"{r['model']} sha256:{r['sha256']} weight {r['weight']:g}"

    def apply(self, pipeline: Any, *, device: str | None = None) -> Any:
        """``pipeline`` with the identity loss set (``set_identity_loss``): the frozen ``ReidFeatureExtractor``
        of the checkpoint on ``device`` (``None``: its default); a missing file raises ``FileNotFoundError``."""
        from posereid.reid_integration.torchreid_plugin import ReidFeatureExtractor

        if not self.model.is_file():
            raise FileNotFoundError(f"{self.model}: re-ID checkpoint not found (make one with train-reid)")
        extractor = ReidFeatureExtractor.from_checkpoint(self.model, device=device)
        return pipeline.set_identity_loss(extractor.features, weight=self.weight)


__all__ = ["DEFAULT_IDENTITY_WEIGHT", "IdentityLoss"]
