"""mcrecall: a matrix-completion recall stage for recommender systems.

One package; its parts, in data-flow order (each its own folder in the repository)::

    mcrecall.core      ground: configuration, logging, loopback helpers, id rules
    mcrecall.ingest    Kafka events -> scored triples in LMDB
    mcrecall.train     the PyTorch trainer, evaluation, publication of model versions
    mcrecall.plugins   vector-store backends behind one interface
    mcrecall.serve     the recall client: ``from mcrecall.serve import RecallClient, recall``
    mcrecall.models    the model as a library: ``MatrixFactorization(...).fit(...)``

The application shell (the ``mcrecall`` command, demo, status, plots) is ``mcrecall.cli`` and
its siblings; no part imports it. Importing this package imports nothing else.
"""

__version__ = "0.1.0"
