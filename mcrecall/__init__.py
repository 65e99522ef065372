"""mcrecall application shell: the ``mcrecall`` command, demo, status, plots.

The configuration loader, logging and loopback helpers are the ground, in ``core``.

The system itself lives in the top-level packages, in data-flow order:
``ingest`` -> ``train`` -> ``plugins`` (publish) -> ``serve``.
"""

__version__ = "0.1.0"
