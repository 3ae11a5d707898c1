"""``python -m posereid ...``: the ``posereid`` command without the console script (e.g. a source checkout
on ``PYTHONPATH``)."""

from posereid.experiments.cli import main

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
