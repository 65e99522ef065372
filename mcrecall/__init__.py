"""mcrecall application shell: the ``mcrecall`` command and the configuration loader.

The system itself lives in the top-level packages, in data-flow order:
``ingest`` -> ``train`` -> ``plugins`` (publish) -> ``serve``.
"""

__version__ = "0.1.0"
