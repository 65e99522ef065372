"""Item refresh (train/refresh.py): new and changed items get vectors in the CURRENT version.

Real parts: the LMDB triple store, ``train_run`` publishing a real version (exact backend, small
synthetic data), the recall client. A refresh must solve the objective's own item step against
the version's user vectors, leave no trace when nothing changed, survive a SIGKILL at any step,
and never mix versions.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mcrecall.ingest.store import TripleStore
from mcrecall.serve import RecallClient
from mcrecall.train.lock import publisher_lock
from mcrecall.train.refresh import CRASH_ENV, CRASH_EXIT_CODE, CRASH_POINTS, Refresher, refresh_once
from mcrecall.train.synthetic import make_synthetic
from mcrecall.train.testing import fill_store, small_config
from mcrecall.train.versions import ModelRegistry

REPO = Path(__file__).resolve().parents[1]
QUIET = dict(log=lambda s: None)


def spearman(a, b) -> float:
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_users=300, n_items=150, n_triples=9000, seed=7)


def trained(tmp_path, data, **train):
    from mcrecall.train.trainer import train_run

    fill_store(tmp_path, data)
    cfg = small_config(tmp_path, **{"dim": 8, "epochs": 6, "reg": 0.1, "alpha": 2.0, **train})
    assert train_run(cfg, **QUIET).status == "published"
    return cfg


def copy_item(tmp_path, data, item: str, new: str) -> int:
    """Write exactly ``item``'s triples again for ``new``; returns the number of triples."""
    store = TripleStore(tmp_path)
    users, scores = store.item_histories([item])[0]
    store.put_scores(users, [new] * len(users), scores.astype(int).tolist())
    return len(users)


def busiest_item(data) -> str:
    counts = np.bincount(data.item_idx, minlength=len(data.item_ids))
    return data.item_ids[int(np.argsort(-counts)[3])]


def training_item_step(meta, user_pub, rows, scores):
    """One item's vector from the trainer's own item half-sweep, users fixed (published form)."""
    import torch

    from mcrecall.train.als import ALS

    fm = meta["foldin"]
    obj, sim, k = fm["objective"], fm["similarity"], int(fm["factors"])
    als = ALS(np.asarray(rows, np.int32), np.zeros(len(rows), np.int32),
              np.asarray(scores, np.float32), len(user_pub), 1, objective=obj, similarity=sim,
              dim=k, reg=fm["reg"], alpha=fm.get("alpha") or 0.0)
    als.init_factors(0)
    als.mu, als.scale = float(fm["mu"]), float(fm["score_scale"])
    u_int, _ = ALS.internal_from_published(user_pub, None, obj, sim, k, als.mu)
    als.U = torch.from_numpy(np.ascontiguousarray(u_int, dtype=np.float32))
    with torch.no_grad():
        als._solve_side(als.item_chunks, als.V, als.U, als.u)
    return als.published()[1][0]


@pytest.mark.parametrize("objective,similarity,metric", [
    ("squared", "dot", "IP"), ("squared", "dot", "L2"), ("squared", "cosine", "IP"),
    ("implicit", "dot", "COSINE"), ("implicit", "cosine", "IP"),
])
@pytest.mark.slow
def test_copied_item_scores_like_the_original(tmp_path, data, objective, similarity, metric):
    """§2: a new item with exactly an existing item's triples, after one refresh, scores like it
    for every user (Spearman >= 0.9) and sits beside it in users' top-k; its vector is exactly
    the training's item half-sweep against the version's users."""
    from mcrecall.train.trainer import train_run

    fill_store(tmp_path, data)
    cfg = small_config(tmp_path, metric=metric, dim=8, epochs=6, reg=0.1, alpha=2.0,
                       objective=objective, similarity=similarity)
    assert train_run(cfg, **QUIET).status == "published"
    orig = busiest_item(data)
    n = copy_item(tmp_path, data, orig, "copy of " + orig)
    assert n >= 20
    client = RecallClient(cfg)
    users = [u for u in data.user_ids if client.user_vector(u).source == "model"][:200]
    assert client.score(users[0], ["copy of " + orig])[0] is None  # unknown before refresh
    res = refresh_once(cfg, **QUIET)
    assert res.status == "refreshed" and res.updated == 1 and res.changed == 1
    s_orig = np.array([client.score(u, [orig])[0] for u in users])
    s_copy = np.array([client.score(u, ["copy of " + orig])[0] for u in users])
    assert np.isfinite(s_copy).all()  # the client's item cache did not serve the stale NaN
    assert spearman(s_orig, s_copy) >= 0.9
    # the vector is the trainer's own item step with the version's users fixed
    reg = ModelRegistry(tmp_path, readonly=True)
    v = reg.current_version()
    meta = reg.metadata(v)
    all_users = [u for u in data.user_ids if reg.user_vector(v, u) is not None]
    U = reg.user_vectors(v, all_users)
    store = TripleStore(tmp_path, readonly=True)
    us, sc = store.item_histories(["copy of " + orig])[0]
    pos = {u: j for j, u in enumerate(all_users)}
    keep = [j for j, u in enumerate(us) if u in pos]
    expect = training_item_step(meta, U, [pos[us[j]] for j in keep], sc[keep])
    got = client._item_vectors(v, ["copy of " + orig])[0]
    if metric == "IP":  # L2/COSINE may clip to max_norm; the headroom makes that rare
        np.testing.assert_allclose(got, expect, rtol=2e-3, atol=2e-3)
    # beside it: where the original ranks in a user's top 20 (of 150 items), the copy ranks
    # within a few places of it
    gaps = []
    for u in users:
        top = [r.item_id for r in client.recall(u, len(data.item_ids) + 1)]
        if top.index(orig) < 20:
            gaps.append(abs(top.index(orig) - top.index("copy of " + orig)))
    assert len(gaps) >= 5 and np.median(gaps) <= 5 and np.mean(np.array(gaps) <= 12) >= 0.9, gaps
    client.close()
    reg.close()


def test_refresh_without_changes_writes_nothing(tmp_path, data):
    cfg = trained(tmp_path, data)
    reg = ModelRegistry(tmp_path)
    txn_users = reg._env.info()["last_txnid"]
    txn_triples = TripleStore(tmp_path).env.info()["last_txnid"]
    assert refresh_once(cfg, **QUIET).status == "unchanged"
    copy_item(tmp_path, data, busiest_item(data), "fresh")
    assert refresh_once(cfg, **QUIET).status == "refreshed"
    delta = next((tmp_path / "vectors").rglob("delta.npz"))
    before = (os.stat(delta).st_mtime_ns, reg._env.info()["last_txnid"])
    txn_triples = TripleStore(tmp_path).env.info()["last_txnid"]
    for _ in range(3):
        assert refresh_once(cfg, **QUIET).status == "unchanged"
    assert (os.stat(delta).st_mtime_ns, reg._env.info()["last_txnid"]) == before
    assert TripleStore(tmp_path).env.info()["last_txnid"] == txn_triples
    assert txn_users < before[1]
    reg.close()


def test_changed_item_only_is_solved(tmp_path, data):
    """O(changed items): only items touched after the version (or last refresh) are solved."""
    cfg = trained(tmp_path, data)
    store = TripleStore(tmp_path)
    store.put_scores(["u1", "u2"], ["i5", "brand-new"], [3, 4])
    store.put_scores(["u3"], ["i7"], [2])
    with Refresher(cfg, **QUIET) as r:
        res = r.run_once()
        assert (res.changed, res.status) == (3, "refreshed")
        store.put_scores(["newcomer"], ["i5"], [1])
        assert r.run_once().changed == 1
        store.put_scores(["newcomer"], ["i5"], [1])  # same score again: no change, no seq
        assert r.run_once().status == "unchanged"


def test_user_without_vector_is_left_out(tmp_path, data):
    """Triples of users unknown to the version do not move an item (they wait for training)."""
    cfg = trained(tmp_path, data)
    store = TripleStore(tmp_path)
    store.put_scores(["nobody-1", "nobody-2"], ["orphan", "orphan"], [4, 4])
    res = refresh_once(cfg, **QUIET)
    assert (res.changed, res.updated, res.skipped) == (1, 0, 1)
    client = RecallClient(cfg)
    assert client.score("u1", ["orphan"])[0] is None
    client.close()


def test_busy_publisher_lock_skips_the_cycle(tmp_path, data):
    cfg = trained(tmp_path, data)
    copy_item(tmp_path, data, busiest_item(data), "fresh")
    import threading

    held, release = threading.Event(), threading.Event()

    def hold():  # another thread: the lock is re-entrant only in its holder's thread
        with publisher_lock(tmp_path):
            held.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(30)
        assert refresh_once(cfg, wait=False, **QUIET).status == "busy"
    finally:
        release.set()
        holder.join()
    assert refresh_once(cfg, wait=False, **QUIET).status == "refreshed"


def test_publication_replaces_refreshed_items(tmp_path, data):
    """Versions never mix: version N+1 starts from its own training, N's refresh stays in N."""
    from mcrecall.train.trainer import train_run

    cfg = trained(tmp_path, data)
    copy_item(tmp_path, data, busiest_item(data), "fresh")
    assert refresh_once(cfg, **QUIET).updated == 1
    reg = ModelRegistry(tmp_path)
    v1 = reg.current_version()
    assert reg.refresh_generation(v1) == 1
    assert train_run(cfg, **QUIET).status == "published"
    v2 = reg.current_version()
    assert v2 == v1 + 1 and reg.refresh_generation(v2) == 0
    assert not (tmp_path / "vectors" / "mcrecall_items" / f"v{v2}" / "delta.npz").exists()
    assert refresh_once(cfg, **QUIET).status == "unchanged"  # v2 was trained on "fresh"
    reg.close()


_CHILD = """
import sys
from mcrecall.train.refresh import refresh_once
from mcrecall.train.testing import small_config
cfg = small_config(sys.argv[1], dim=8, epochs=6, reg=0.1, alpha=2.0)
print(refresh_once(cfg, log=lambda s: None))
"""


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_killed_refresh_leaves_the_version_serving(tmp_path, data, point):
    """§2: SIGKILL-equivalent (os._exit, no cleanup) after each step; the version serves right
    and the next refresh completes the work."""
    cfg = trained(tmp_path, data)
    client = RecallClient(cfg)
    orig = busiest_item(data)
    copiers = set(TripleStore(tmp_path).item_histories([orig])[0][0])
    user = next(u for u in data.user_ids if u not in copiers and client.user_vector(u).source == "model")
    before = client.recall(user, 10)
    copy_item(tmp_path, data, orig, "copy")
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path)], cwd=REPO,
                          env={**os.environ, CRASH_ENV: point, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == CRASH_EXIT_CODE, proc.stderr[-2000:]
    got = client.recall(user, 10)
    assert len(got) == 10
    assert [r.item_id for r in got if r.item_id != "copy"] == \
        [r.item_id for r in before][: len([r for r in got if r.item_id != "copy"])]
    res = refresh_once(cfg, **QUIET)
    assert res.status == ("unchanged" if point == "recorded" else "refreshed")
    assert np.isfinite(client.score(user, ["copy"])[0])
    assert not list((tmp_path / "vectors").rglob(".delta.tmp-*"))
    client.close()


def test_refresh_stays_with_the_current_version_under_the_lock(tmp_path, data):
    """A refresh cycle holds the publisher lock: a publication waiting on it runs after."""
    import threading

    from mcrecall.train.lock import PublisherBusyError

    cfg = trained(tmp_path, data)
    copy_item(tmp_path, data, busiest_item(data), "fresh")
    held = threading.Event()
    release = threading.Event()

    def publisher():
        with publisher_lock(tmp_path):
            held.set()
            release.wait(10)

    t = threading.Thread(target=publisher)
    t.start()
    held.wait(5)
    with pytest.raises(PublisherBusyError):
        with publisher_lock(tmp_path, wait=True, timeout_s=0.2):
            pass
    assert refresh_once(cfg, wait=True, timeout_s=0.2, **QUIET).status == "busy"
    release.set()
    t.join()
    assert refresh_once(cfg, **QUIET).status == "refreshed"


def test_a_busy_refresher_names_who_holds_the_lock(tmp_path):
    """Issue 20 #13: the losing refresher said "a publication is in progress" when the holder
    was another refresher."""
    import threading

    from mcrecall.train.refresh import describe

    cfg = small_config(tmp_path / "data")
    for role, says in (("mcrecall refresh", "another refresher holds the publisher lock"),
                       ("mcrecall train", "a publication is in progress")):
        held, done = threading.Event(), threading.Event()

        def hold(role=role, held=held, done=done):
            with publisher_lock(cfg.data_dir, role=role):
                held.set()
                done.wait(30)

        t = threading.Thread(target=hold, daemon=True)
        t.start()
        assert held.wait(30)
        r = Refresher(cfg)
        try:
            res = r.run_once(wait=False)
        finally:
            r.close()
            done.set()
            t.join(30)
        assert res.status == "busy" and f"({role})" in res.holder
        assert says in describe(res) and f"({role})" in describe(res)
