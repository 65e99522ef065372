"""A vector store of your own: subclass, register, and the trainer and the client use it.

    python examples/custom_vector_store.py            # register it, train, recall through it
    python examples/custom_vector_store.py --suite    # also run the behavioural suite on it

:class:`NpzVectorStore` keeps each version as one ``.npz`` file and searches it by brute force.
It fills in only the storage primitives of :class:`mcrecall.plugins.VectorStore` (the
``_``-prefixed methods); the base class validates input, applies the similarity/metric
reduction, excludes ids and turns raw values into model scores. It is registered the way a
third-party package does it, an entry point in the ``mcrecall.vector_stores`` group: here a
``*.dist-info`` folder written to a temporary directory put on ``sys.path`` (what
``pip install`` of a package declaring ``[project.entry-points."mcrecall.vector_stores"]``
leaves in site-packages). Then ``[index] backend = "npz"`` selects it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from mcrecall.plugins import VectorStore, VersionNotFoundError, VersionSpec
from mcrecall.plugins.metric import exact_top_k

HERE = Path(__file__).resolve().parent


def _encode(ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    raw = [i.encode("utf-8") for i in ids]  # bytes + offsets: any id survives, NULs included
    return np.frombuffer(b"".join(raw), np.uint8), np.cumsum([0] + [len(b) for b in raw])


def _decode(blob: np.ndarray, offsets: np.ndarray) -> list[str]:
    data = blob.tobytes()
    return [data[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


def _write_atomically(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # readers see the old file or the new one, never half of one


class NpzVectorStore(VectorStore):
    """Brute-force search over one ``.npz`` file per version under ``<data_dir>/npz/<collection>``."""

    name = "npz"
    index_types = ("FLAT",)
    auto_index_type = "FLAT"

    def __init__(self, data_dir=None, uri: str = "", collection: str = "mcrecall_items", **params):
        super().__init__(data_dir, uri, collection, **params)
        if data_dir is None:
            raise ValueError("the npz backend needs data_dir")
        self.root = Path(data_dir) / "npz" / collection
        self.root.mkdir(parents=True, exist_ok=True)
        self._pending: dict[int, tuple[VersionSpec, dict]] = {}
        self._cache: dict[int, tuple[tuple, dict]] = {}

    def _file(self, version: int) -> Path:
        return self.root / f"v{version}.npz"

    def _load(self, version: int) -> dict | None:
        try:
            st = os.stat(self._file(version))
        except FileNotFoundError:
            return None
        key = (st.st_ino, st.st_mtime_ns)  # a number re-created after a crash is another file
        hit = self._cache.get(version)
        if hit is None or hit[0] != key:
            with np.load(self._file(version), allow_pickle=False) as z:
                ids = _decode(z["ids"], z["offsets"])
                hit = (key, {"spec": VersionSpec.from_json(str(z["spec"])), "ids": ids,
                             "row": {i: n for n, i in enumerate(ids)}, "stored": z["stored"],
                             "norms": z["norms"]})
            self._cache[version] = hit
        return hit[1]

    # -- building a version ------------------------------------------------------------------
    def _create(self, spec: VersionSpec) -> None:
        self._file(spec.version).unlink(missing_ok=True)  # a stale, non-current leftover
        self._pending[spec.version] = (spec, {})

    def _pending_spec(self, version: int) -> VersionSpec | None:
        return self._pending[version][0] if version in self._pending else None

    def _add(self, version: int, ids: list[str], stored: np.ndarray, norms: np.ndarray) -> None:
        rows = self._pending[version][1]
        for i, v, n in zip(ids, stored, norms, strict=True):
            rows[i] = (v, float(n))  # upsert: the last vector of an id wins

    def _finalize(self, version: int) -> int:
        spec, rows = self._pending[version]
        if not rows:
            raise ValueError(f"version {version} has no items; upsert some before finalize")
        del self._pending[version]
        return self._write(spec, rows)

    def _replace(self, spec: VersionSpec, ids: list[str], stored: np.ndarray, norms: np.ndarray) -> None:
        """Item refresh (``mcrecall refresh``): a new file with these rows replaced or added."""
        v = self._load(spec.version)
        rows = {i: (v["stored"][n], float(v["norms"][n])) for n, i in enumerate(v["ids"])}
        rows.update({i: (s, float(n)) for i, s, n in zip(ids, stored, norms, strict=True)})
        self._write(v["spec"], rows)

    def _write(self, spec: VersionSpec, rows: dict) -> int:
        ids = list(rows)
        stored = np.array([rows[i][0] for i in ids], np.float32).reshape(len(ids), spec.reduction.stored_dim)
        blob, offsets = _encode(ids)
        _write_atomically(self._file(spec.version), lambda f: np.savez(
            f, spec=np.array(spec.to_json()), ids=blob, offsets=offsets, stored=stored,
            norms=np.array([rows[i][1] for i in ids], np.float32)))
        return len(ids)

    # -- reading -----------------------------------------------------------------------------
    def _spec(self, version: int) -> VersionSpec | None:
        v = self._load(version)
        return None if v is None else v["spec"]

    def _search(self, spec: VersionSpec, queries: np.ndarray, k: int):
        v = self._load(spec.version)
        labels, raw, kind = exact_top_k(spec.metric, queries, v["stored"], k)
        return [[v["ids"][j] for j in row] for row in labels], list(raw), kind

    def _iter_stored(self, version: int):
        v = self._load(version)
        yield v["ids"], v["stored"]

    def _get(self, version: int, ids: list[str]) -> dict:
        v = self._load(version)
        return {i: (v["stored"][v["row"][i]], float(v["norms"][v["row"][i]])) for i in ids if i in v["row"]}

    def _count(self, version: int) -> int:
        return len(self._load(version)["ids"])

    def _versions(self) -> list[int]:
        return sorted(int(p.stem[1:]) for p in self.root.glob("v*.npz"))

    # -- the current version -----------------------------------------------------------------
    def _set_current(self, version: int) -> None:
        _write_atomically(self.root / "CURRENT", lambda f: f.write(str(version).encode()))

    def _current(self) -> int | None:
        try:
            return int((self.root / "CURRENT").read_text())
        except FileNotFoundError:
            return None

    def _drop(self, version: int) -> None:
        try:
            self._file(version).unlink()
        except FileNotFoundError:
            raise VersionNotFoundError(f"version {version} of collection {self.collection!r} "
                                       "does not exist") from None
        self._cache.pop(version, None)


def register(site: Path) -> None:
    """Register :class:`NpzVectorStore` as backend ``npz``, as an installed package would."""
    info = site / "npz_vectors-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: npz-vectors\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mcrecall.vector_stores]\nnpz = custom_vector_store:NpzVectorStore\n")
    for p in (str(site), str(HERE)):  # the distribution, and this file's folder for its module
        if p not in sys.path:
            sys.path.insert(0, p)


def main(argv: list[str]) -> int:
    from mcrecall.ingest.store import TripleStore
    from mcrecall.plugins import available_backends, open_vector_store
    from mcrecall.serve import RecallClient
    from mcrecall.train import train_once
    from mcrecall.train.synthetic import make_synthetic
    from mcrecall.train.testing import small_config

    with tempfile.TemporaryDirectory(prefix="mcrecall-example-") as tmp:
        site, data_dir = Path(tmp) / "site", Path(tmp) / "data"
        register(site)
        print(f"registered backends: {', '.join(available_backends())}")
        store = open_vector_store("npz", data_dir=data_dir)
        print(f"opened: {type(store).__module__}.{type(store).__name__}")
        store.close()

        # the pipeline with [index] backend = "npz": triples -> train -> publish -> recall
        d = make_synthetic(n_users=300, n_items=200, n_triples=8000, seed=2)
        ts = TripleStore(data_dir)
        ts.put_scores([d.user_ids[u] for u in d.user_idx], [d.item_ids[i] for i in d.item_idx],
                      d.score.astype(int).tolist())
        ts.close()
        cfg = small_config(data_dir, backend="npz", dim=16, epochs=5, threads=1, device="cpu")
        version = train_once(cfg, log=lambda s: None)
        print(f"trained version {version} into backend {cfg.index.backend}")
        with RecallClient(cfg) as client:
            got = client.recall(d.user_ids[0], k=5)
        print(f"recall {d.user_ids[0]}: " + ", ".join(f"{r.item_id} ({r.score:.3f}, {r.source})" for r in got))
        print(f"files: {sorted(p.name for p in (data_dir / 'npz' / cfg.index.collection).iterdir())}")

        if "--suite" in argv:  # the behavioural suite every backend passes (plugins/testsuite.py)
            test = Path(tmp) / "test_npz_store.py"
            test.write_text("from mcrecall.plugins.testsuite import VectorStoreBehaviour\n\n\n"
                            "class TestNpzStore(VectorStoreBehaviour):\n    backend = 'npz'\n")
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(HERE)])}
            p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                "--rootdir", tmp, "--basetemp", str(Path(tmp) / "pytest"), "-o", "addopts=", str(test)],
                               cwd=tmp, env=env, capture_output=True, text=True)
            print(f"behaviour suite: {p.stdout.strip().splitlines()[-1] if p.stdout.strip() else p.stderr[-500:]}")
            if p.returncode != 0:
                print(p.stdout[-4000:])
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
