"""One-off studies, run from a repository checkout as ``python -m studies.<name>`` (see ``README.md``).

Not part of the ``posereid`` package or its wheel: each is the driver of one measurement whose report is
committed under ``results/``; the library code they call lives in ``posereid``.
"""
