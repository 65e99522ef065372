"""The behavioural suite (plugins/testsuite.py) run for every built-in backend.

One subclass per backend variant: exact, faiss, hnswlib, Milvus Lite in file mode, Milvus
through the session's ``milvus_uri`` server and a real Milvus server (``milvus_server``
marker; fixtures_milvus.py). Real backends, no mocks. A third-party backend runs the same
classes the same way (README "Writing a vector-store backend"; test_plugins_suite.py).
"""

from __future__ import annotations

import pytest

from mcrecall.plugins.testsuite import VectorStoreBehaviour


class TestExact(VectorStoreBehaviour):
    backend = "exact"


class TestFaiss(VectorStoreBehaviour):
    backend = "faiss"
    ann_index_types = ("HNSW",)


class TestHnswlib(VectorStoreBehaviour):
    backend = "hnswlib"
    ann_index_types = ("HNSW",)


class MilvusBehaviour(VectorStoreBehaviour):
    """Milvus sizes its own AUTOINDEX (FLAT when small) and is slower to build: fewer items."""

    backend = "milvus"
    honours_flat_max_items = False
    default_config_items = 4000


@pytest.mark.milvus
class TestMilvusLiteFile(MilvusBehaviour):
    """Milvus Lite's embedded engine on a ``.db`` file: one client per process."""
    pytestmark = pytest.mark.slow  # Milvus Lite: seconds per test

    ann_index_types = ("IVF_FLAT", "AUTOINDEX")  # Milvus Lite builds FLAT and IVF_FLAT
    reopens_in_process = False

    @pytest.fixture
    def store_args(self, tmp_path):
        return {"backend": "milvus", "data_dir": str(tmp_path / "data"),
                "uri": str(tmp_path / "data" / "milvus.db"), "collection": "items"}


@pytest.mark.milvus
class TestMilvusLiteServer(MilvusBehaviour):
    """The session's Milvus server (``mcrecall milvus``'s Milvus Lite, or a testcontainer)."""
    pytestmark = pytest.mark.slow  # Milvus Lite: seconds per test

    ann_index_types = ("IVF_FLAT",)

    @pytest.fixture
    def store_args(self, tmp_path, milvus_uri, milvus_collection):
        return {"backend": "milvus", "data_dir": str(tmp_path / "data"), "uri": milvus_uri,
                "collection": milvus_collection}


@pytest.mark.milvus_server
class TestMilvusRealServer(MilvusBehaviour):
    """A real Milvus standalone (.ci/run's private network namespace, or MCRECALL_TEST_MILVUS_URI)."""

    ann_index_types = ("HNSW", "IVF_FLAT", "IVF_SQ8", "AUTOINDEX")

    @pytest.fixture
    def store_args(self, tmp_path, milvus_real_uri, milvus_collection):
        return {"backend": "milvus", "data_dir": str(tmp_path / "data"), "uri": milvus_real_uri,
                "collection": milvus_collection}
