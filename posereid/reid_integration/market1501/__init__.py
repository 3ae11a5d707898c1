"""Market-1501 folder I/O: file names, folders, images, PATN keypoint CSVs and pair CSVs.

One module per job; every public name is re-exported here, so ``from posereid.reid_integration.market1501
import X`` is the way to import any of them:

- :mod:`.names` — :class:`MarketRecord`, :func:`parse_market_name` / :func:`format_market_name`, and the
  checks of names read from files (:func:`check_file_name`, :func:`safe_child`, :class:`UnsafeNameError`);
- :mod:`.policy` — :class:`BadInputPolicy`, what every batch command does with one bad input;
- :mod:`.images` — :func:`load_image` / :func:`check_image` (:class:`ImageReadError` names the file);
- :mod:`.folder` — :class:`Market1501`, the folder parser, :func:`resolve_data_dir` and :func:`find_annotations`;
- :mod:`.patn` — PATN annotation CSVs (:func:`read_patn_csv`, :func:`write_patn_csv`, the row format
  shared with ``posereid annotate``) and pairs CSVs (:func:`read_pairs_csv`, :func:`write_pairs_csv`);
- :mod:`.frame` — the keypoint frame of an annotation file (:func:`annotation_frame`,
  :func:`check_in_frame`, :func:`load_annotations`, :func:`image_size_problem`);
- :mod:`.writer` — :class:`MarketWriter`, which writes a folder torchreid's ``Market1501`` loads.

Every reader raises an error that names the file (and line); every writer writes a temporary sibling and
moves it into place, so a killed job never leaves a half-written file. The command-line options the
batch commands share (``--strict``, ``--annotation-size HxW``) are in :mod:`posereid.argtypes`.
"""

from posereid.reid_integration.market1501.folder import (
    RELEASE_DIR,
    SPLIT_DIRS,
    Market1501,
    find_annotations,
    resolve_data_dir,
)
from posereid.reid_integration.market1501.frame import (
    MAX_ASPECT_CHANGE,
    MAX_FRAME_SCALE,
    ImageSource,
    annotation_frame,
    check_in_frame,
    image_size_problem,
    load_annotations,
)
from posereid.reid_integration.market1501.images import ImageReadError, check_image, load_image
from posereid.reid_integration.market1501.names import (
    IMAGE_EXTENSIONS,
    SYNTHETIC_FRAME_RANGE,
    MarketFormatError,
    MarketRecord,
    UnsafeNameError,
    check_file_name,
    format_market_name,
    parse_market_name,
    safe_child,
)
from posereid.reid_integration.market1501.patn import (
    PAIRS_HEADER,
    PATN_FRAME,
    PATN_HEADER,
    PatnAnnotations,
    format_int_list,
    format_patn_row,
    parse_patn_row,
    read_pairs_csv,
    read_patn_csv,
    write_pairs_csv,
    write_patn_csv,
)
from posereid.reid_integration.market1501.policy import BadInputPolicy
from posereid.reid_integration.market1501.writer import MarketWriter

__all__ = [
    "BadInputPolicy",
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "ImageSource",
    "MAX_ASPECT_CHANGE",
    "MAX_FRAME_SCALE",
    "Market1501",
    "MarketFormatError",
    "MarketRecord",
    "MarketWriter",
    "PAIRS_HEADER",
    "PATN_FRAME",
    "PATN_HEADER",
    "PatnAnnotations",
    "RELEASE_DIR",
    "SPLIT_DIRS",
    "SYNTHETIC_FRAME_RANGE",
    "UnsafeNameError",
    "annotation_frame",
    "check_file_name",
    "check_image",
    "check_in_frame",
    "format_int_list",
    "format_market_name",
    "format_patn_row",
    "image_size_problem",
    "load_annotations",
    "load_image",
    "parse_market_name",
    "parse_patn_row",
    "read_pairs_csv",
    "read_patn_csv",
    "find_annotations",
    "resolve_data_dir",
    "safe_child",
    "write_pairs_csv",
    "write_patn_csv",
]
