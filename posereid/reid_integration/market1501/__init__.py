"""Market-1501 folder I/O (being split into modules by job; everything lives in :mod:`.frame` for now)."""

from posereid.reid_integration.market1501.frame import *  # noqa: F403
from posereid.reid_integration.market1501.frame import (  # noqa: F401
    MAX_ASPECT_CHANGE,
    MAX_FRAME_SCALE,
    PAIRS_HEADER,
    PATN_HEADER,
    ImageSource,
)
from posereid.reid_integration.market1501.frame import __all__ as _all

__all__ = [*_all, "MAX_ASPECT_CHANGE", "MAX_FRAME_SCALE", "PAIRS_HEADER", "PATN_HEADER", "ImageSource"]
