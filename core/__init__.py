"""Ground: configuration, logging, loopback helpers and id rules.

Imported by every part (ingest, train, plugins, serve) and by the mcrecall shell;
imports none of them (tests/test_layers.py holds the rule).
"""
