"""Multi-run experiment drivers (benchmark tables, ablations, sweeps) and offline tools.

Every multi-run script builds its runs with :mod:`scripts.experiments` (configs x seeds x overrides -> one
``python cli.py <subcommand>`` per run -> per-run CSV -> mean ± sd table and plot). Import them as
``scripts.<name>``; run them as ``python scripts/<name>.py``.
"""
