r"""Training on N ranks with torch.distributed: ``mcrecall train --nproc N`` and ``torchrun``.

Two ways to start the same code (docs/operations.md, "Training on several processes or hosts"):

- ``mcrecall train --nproc N`` (this host): :func:`launch_local` starts torch's elastic agent in
  the calling process (``torch.distributed.launcher.api.elastic_launch``, what ``torchrun``
  runs) with a c10d rendezvous on 127.0.0.1; it runs N processes ``python -m
  mcrecall.train.distributed`` and reports the run's outcome, or one line naming the rank that
  failed and why.
- across hosts: ``torchrun --nnodes H --nproc-per-node P --rdzv-backend c10d
  --rdzv-endpoint HOST:PORT -m mcrecall.train.distributed --config F`` on every host, the same
  configuration on each; the data stay on the host that holds the triple store, whose first
  rank becomes the leader (rank 0 of the training, whatever number torchrun gave it).

Roles
-----
Rank 0 (the *leader*: the first rank on the host with ``<data_dir>/triples.lmdb``) runs the
whole of :func:`mcrecall.train.trainer.train_run` as one process
would: publisher lock, snapshot, split, evaluation, gate, publication. Only its fits are shared:
:func:`model_for_fit` (the one hook in ``trainer.fit_model``) returns a model whose ``fit``
runs on every rank. The other ranks (*followers*) wait in :func:`follow` for the leader's next
fit, and exit when it says stop.

Row-sharded ALS (``implicit``, ``squared``)
-------------------------------------------
Users are cut into W contiguous row blocks and items into W column blocks, each with about
1/W of the (objective's) triples. Rank r receives, over the process group (point-to-point
sends from the leader; no shared file system), the triples of its user block (by user) and of
its item block (by item): every triple travels twice, once to the owner of its user and once to
the owner of its item. Each rank holds both factor tables whole, and one sweep is

    V[item block r] <- the same solver as one process (CG or Cholesky; dot or cosine), U fixed
    V <- all_gather of the W item blocks
    (cosine: the score scale s = Σ t c / Σ w c², its two sums all_reduced)
    U[user block r] <- the same solver, V fixed;  U <- all_gather of the W user blocks

A row's system involves only that row's triples and the other side's whole table, so every
row is solved exactly as in one process: the factors equal one rank's (bit for bit here with
dot; with cosine up to the summation order of s).

Data-parallel SGD (``bce``)
---------------------------
Every rank holds the positives and both tables; the sampler (shuffle and negatives, seeded) runs
identically on every rank. Rank r computes the gradients of its slice r of each mini-batch; the
slices' per-example gradients are all_gathered, and every rank takes the same sparse Adagrad
step on the concatenation, which is the one-rank batch's: the same model as one rank, with the
gradient work divided.

Faults
------
Every collective and the rendezvous wait at most ``[train] dist_timeout_s``; a rank that dies
ends the run at once (the elastic agent stops the others). Nothing is published unless rank 0
finished; the publisher lock is an flock of rank 0, released when it exits however it exits.
``MCR_DIST_KILL_AT=<rank>:<point>[:hang|:oom]`` (tests) SIGKILLs (or hangs, or raises
MemoryError in) that global rank at ``join`` (before the process group) or ``sweep<N>`` (in the
middle of sweep or epoch N); read in :func:`fault_point` only.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch (docs/measurements.md)

import argparse
import json
import math
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from .als import ALS
from .objectives import model_from_config
from .report import end_epoch
from .sgd import BCE

KILL_ENV = "MCR_DIST_KILL_AT"
LAUNCHED_ENV = "MCR_DIST_LAUNCHED"  # set by launch_local: the launcher writes the failure line
CTL_TIMEOUT = timedelta(days=7)  # followers wait this long between fits (rank 0 evaluates...)
_STATUS_CODE = {"published": 0, "unchanged": 0, "refused": 3, "empty": 1, "busy": 75}


@dataclass
class DistContext:
    """One process group as this rank sees it.

    Attributes
    ----------
    rank, world : this rank's number in ``group`` and the group's size.
    ranks : global rank of each group member (``ranks[0]`` is the leader).
    device : this rank's torch device (``cuda:<local rank>`` over NCCL, else cpu over gloo).
    group : the group of the data collectives (timeout ``[train] dist_timeout_s``).
    ctl : the group of the leader's commands between fits (long timeout).
    """

    rank: int
    world: int
    ranks: list
    device: torch.device
    group: object = None
    ctl: object = None
    timeout_s: float = 300.0
    verbose: bool = False

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @property
    def global_rank(self) -> int:
        return self.ranks[self.rank]

    def by_rank(self, out: list) -> list:
        """A collective's per-member results (in the group's own rank order) in this context's
        rank order (the leader first: it need not be torchrun's rank 0)."""
        if self.group is None:
            return [out[g] for g in self.ranks]
        return [out[dist.get_group_rank(self.group, g)] for g in self.ranks]


_CTX: DistContext | None = None


def current() -> DistContext | None:
    """The process group the trainer's fits run on (None: one process)."""
    return _CTX


def world_size() -> int:
    """Ranks a fit runs on now (1 without a process group)."""
    return 1 if _CTX is None else _CTX.world


@contextmanager
def using(ctx: DistContext | None):
    """Run the block's fits on ``ctx``."""
    global _CTX
    prev, _CTX = _CTX, ctx
    try:
        yield ctx
    finally:
        _CTX = prev


def fault_point(rank: int, point: str) -> None:
    """The test hook ``MCR_DIST_KILL_AT=<rank>:<point>[:hang|:oom]`` (the one place it is read)."""
    spec = os.environ.get(KILL_ENV, "")
    parts = spec.split(":")
    if len(parts) < 2 or parts[0] != str(rank) or parts[1] != point:
        return
    action = parts[2] if len(parts) > 2 else "kill"
    if action == "hang":
        while True:
            time.sleep(3600)
    if action == "oom":
        raise MemoryError(f"simulated out of memory at {point} ({KILL_ENV})")
    os.kill(os.getpid(), signal.SIGKILL)


def row_blocks(rows: np.ndarray, n_rows: int, world: int) -> np.ndarray:
    """(world + 1,) boundaries of ``world`` contiguous row blocks with about equal entries.

    Block r is rows ``[b[r], b[r + 1])``; blocks may be empty (fewer rows than ranks).
    """
    counts = np.bincount(rows, minlength=n_rows)
    cum = np.concatenate([[0], np.cumsum(counts)])
    b = np.searchsorted(cum, np.arange(world + 1) * (cum[-1] / world), side="left")
    b = np.clip(b, 0, n_rows)
    b[0], b[-1] = 0, n_rows
    return np.maximum.accumulate(b).astype(np.int64)


def split_by_block(rows: np.ndarray, bounds: np.ndarray) -> list[np.ndarray]:
    """Indices of the entries of each block, in their original order (stable)."""
    blk = np.searchsorted(bounds, rows, side="right") - 1
    order = np.argsort(blk, kind="stable")
    cuts = np.searchsorted(blk[order], np.arange(1, len(bounds) - 1))
    return np.split(order, cuts)


# -- transport --------------------------------------------------------------------------------
class DistError(RuntimeError):
    """A collective failed: a peer died, timed out or never joined."""


def _comm(ctx, t: torch.Tensor) -> torch.Tensor:
    return t.to(ctx.device) if ctx.device.type == "cuda" else t


def _call(fn, *a, **kw):
    try:
        return fn(*a, **kw)
    except (RuntimeError, dist.DistError) as e:  # gloo/NCCL/store errors: a peer is gone or late
        raise DistError(" ".join(str(e).split())[:400]) from e


def bcast_obj(ctx: DistContext, obj=None, *, ctl: bool = False):
    """``obj`` (JSON) from the leader to every rank; returns it on every rank."""
    group = ctx.ctl if ctl else ctx.group
    src = ctx.ranks[0]
    if ctx.leader:
        data = json.dumps(obj).encode()
        n = torch.tensor([len(data)], dtype=torch.int64)
    else:
        n = torch.zeros(1, dtype=torch.int64)
    n = _comm(ctx, n)
    _call(dist.broadcast, n, src=src, group=group)
    buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8) if ctx.leader
           else torch.empty(int(n.item()), dtype=torch.uint8))
    buf = _comm(ctx, buf)
    _call(dist.broadcast, buf, src=src, group=group)
    return obj if ctx.leader else json.loads(bytes(buf.cpu().numpy()).decode())


def bcast_tensor(ctx: DistContext, t: torch.Tensor) -> torch.Tensor:
    """The leader's ``t`` on every rank (followers pass a tensor of the same shape and dtype)."""
    c = _comm(ctx, t.contiguous())
    _call(dist.broadcast, c, src=ctx.ranks[0], group=ctx.group)
    return c.to(t.device)


def all_sum(ctx: DistContext, values) -> list[float]:
    """Σ over ranks of each of ``values`` (float64)."""
    t = _comm(ctx, torch.tensor([float(v) for v in values], dtype=torch.float64))
    _call(dist.all_reduce, t, group=ctx.group)
    return t.cpu().tolist()


def all_gather_floats(ctx: DistContext, values) -> list[list[float]]:
    """Every rank's ``values`` (same length everywhere), by rank."""
    t = _comm(ctx, torch.tensor([float(v) for v in values], dtype=torch.float64))
    out = [torch.empty_like(t) for _ in range(ctx.world)]
    _call(dist.all_gather, out, t, group=ctx.group)
    return [o.cpu().tolist() for o in ctx.by_rank(out)]


def gather_rows(ctx: DistContext, block: torch.Tensor, sizes) -> torch.Tensor:
    """Concatenation over ranks of each rank's ``block`` (rank r's has ``sizes[r]`` rows)."""
    m = max(1, max(sizes))
    pad = block if len(block) == m else torch.cat(
        [block, block.new_zeros((m - len(block),) + tuple(block.shape[1:]))])
    pad = _comm(ctx, pad.contiguous())
    out = [torch.empty_like(pad) for _ in range(ctx.world)]
    _call(dist.all_gather, out, pad, group=ctx.group)
    return torch.cat([o[:s] for o, s in zip(ctx.by_rank(out), sizes, strict=True)]).to(block.device)


def _send_arrays(ctx: DistContext, dst: int, arrays) -> int:
    """Send numpy arrays to group rank ``dst`` (their lengths first); returns the bytes sent."""
    sent = 0
    lens = torch.tensor([len(a) for a in arrays], dtype=torch.int64)
    _call(dist.send, _comm(ctx, lens), dst=ctx.ranks[dst], group=ctx.group)
    for a in arrays:
        if len(a):
            _call(dist.send, _comm(ctx, torch.from_numpy(np.ascontiguousarray(a))),
                  dst=ctx.ranks[dst], group=ctx.group)
            sent += a.nbytes
    return sent


def _recv_arrays(ctx: DistContext, dtypes) -> list[np.ndarray]:
    lens = _comm(ctx, torch.zeros(len(dtypes), dtype=torch.int64))
    _call(dist.recv, lens, src=ctx.ranks[0], group=ctx.group)
    out = []
    for n, dt in zip(lens.cpu().tolist(), dtypes, strict=True):
        t = _comm(ctx, torch.empty(int(n), dtype=dt))
        if n:
            _call(dist.recv, t, src=ctx.ranks[0], group=ctx.group)
        out.append(t.cpu().numpy())
    return out


_SHARD_DTYPES = (torch.int32, torch.int32, torch.float32) * 2


# -- the leader's side of a fit -----------------------------------------------------------------
def model_for_fit(tc, triples, n_users: int, n_items: int, *, device: str = "cpu",
                  item_tokens=None, user_tokens=None):
    """The model ``trainer.fit_model`` trains: one process's (:func:`model_from_config`), or,
    under a process group of more than one rank, the same objective's distributed model
    (:class:`DistALS`, :class:`DistBCE`), whose construction sends every rank its shard.

    The hybrid model's token step (``item_tokens``/``user_tokens``, train/attributes.py) runs in
    one process only: under more than one rank with tokens it is a one-line RuntimeError (set
    ``[train] attributes = false`` to train ID embeddings on N ranks)."""
    ctx = _CTX
    if ctx is None or ctx.world == 1:
        return model_from_config(tc, triples, n_users, n_items, device=device,
                                 item_tokens=item_tokens, user_tokens=user_tokens)
    if item_tokens is not None or user_tokens is not None:
        raise RuntimeError(f"the hybrid model (attributes) trains on one process, not {ctx.world} ranks: "
                           "set [train] attributes = false for --nproc > 1, or train with --nproc 1")
    cls = DistBCE if tc.objective == "bce" else DistALS
    return cls.lead(ctx, tc, triples, n_users, n_items)


def stop_followers(ctx: DistContext) -> None:
    """Tell the followers there is no further fit (they exit)."""
    bcast_obj(ctx, {"cmd": "stop"}, ctl=True)


def follow(ctx: DistContext, log=lambda s: None) -> bool:
    """A follower's part of the leader's next command: one fit (True), or stop (False)."""
    msg = bcast_obj(ctx, ctl=True)
    if msg["cmd"] == "stop":
        return False
    cls = {"als": DistALS, "bce": DistBCE}[msg["kind"]]
    model = cls.follower(ctx, msg["spec"])
    model.receive_init()
    model.fit(0, log=log)
    return True


def _hyper(tc) -> dict:
    return {k: getattr(tc, k) for k in ("objective", "similarity", "dim", "reg", "alpha", "solver",
                                        "cg_steps", "reg_bce", "lr", "negatives", "batch_size")}


# -- row-sharded ALS ----------------------------------------------------------------------------
class DistALS(ALS):
    """:class:`mcrecall.train.als.ALS` on a process group: this rank solves its row blocks.

    Every rank holds ``U`` and ``V`` whole after each half-sweep, so the leader predicts,
    publishes and evaluates with :class:`ALS`'s own methods.
    """

    def __init__(self, ctx: DistContext, spec: dict, shard):
        self.ctx, self.spec = ctx, spec
        h = spec["hyper"]
        self.objective, self.similarity = h["objective"], h["similarity"]
        self.solver, self.cg_steps = h["solver"], int(h["cg_steps"])
        self.dim, self.reg, self.alpha = int(h["dim"]), float(h["reg"]), float(h["alpha"])
        self.n_users, self.n_items = int(spec["n_users"]), int(spec["n_items"])
        self.device = ctx.device
        self.biased = self.objective == "squared" and self.similarity == "dot"
        self.k = self.dim + 1 if self.biased else self.dim
        self.mu, self.n, self._ymax = float(spec["mu"]), int(spec["n"]), float(spec["ymax"])
        self.use_cg = self.solver == "cg" and self.similarity == "dot"
        self.scale = 1.0
        self.ub, self.ib = spec["ublocks"], spec["iblocks"]
        r = ctx.rank
        self.ulo, self.uhi, self.ilo, self.ihi = self.ub[r], self.ub[r + 1], self.ib[r], self.ib[r + 1]
        ur, uc, uy, ir, ic, iy = shard
        kw = dict(objective=self.objective, similarity=self.similarity, dim=self.dim, reg=self.reg,
                  alpha=self.alpha, solver=self.solver, cg_steps=self.cg_steps, device=self.device)
        # rows are local to the block, columns global: one ALS per side, only that side laid out
        self.uside = ALS(ur, uc, uy, self.uhi - self.ulo, self.n_items, sides=("user",), **kw)
        self.iside = ALS(ic, ir, iy, self.n_users, self.ihi - self.ilo, sides=("item",), **kw)
        for m in (self.uside, self.iside):
            m.mu = self.mu  # the global training mean, not the shard's
        self._u_glob = self.uside.u + self.ulo
        self.shard_bytes = sum(a.nbytes for a in shard)

    @classmethod
    def lead(cls, ctx: DistContext, tc, triples, n_users: int, n_items: int) -> "DistALS":
        u, i, y = triples
        if tc.objective == "implicit":  # as ALS: only positive cells carry information beyond G
            keep = y > 0
            u, i, y = u[keep], i[keep], y[keep]
        biased = tc.objective == "squared" and tc.similarity == "dot"
        W = ctx.world
        ub, ib = row_blocks(u, n_users, W), row_blocks(i, n_items, W)
        spec = {"hyper": _hyper(tc), "n_users": int(n_users), "n_items": int(n_items),
                "mu": float(y.mean()) if (biased and len(y)) else 0.0, "n": int(len(y)),
                "ymax": float(y.max()) if len(y) else 0.0,
                "ublocks": ub.tolist(), "iblocks": ib.tolist()}
        bcast_obj(ctx, {"cmd": "fit", "kind": "als", "spec": spec}, ctl=True)
        by_u, by_i = split_by_block(u, ub), split_by_block(i, ib)
        sent, mine = 0, None
        for r in range(W):
            eu, ei = by_u[r], by_i[r]
            shard = ((u[eu] - ub[r]).astype(np.int32), i[eu].astype(np.int32), y[eu].astype(np.float32),
                     (i[ei] - ib[r]).astype(np.int32), u[ei].astype(np.int32), y[ei].astype(np.float32))
            if r == 0:
                mine = shard
            else:
                sent += _send_arrays(ctx, r, shard)
        model = cls(ctx, spec, mine)
        model.sent_shards = sent
        return model

    @classmethod
    def follower(cls, ctx: DistContext, spec: dict) -> "DistALS":
        return cls(ctx, spec, _recv_arrays(ctx, _SHARD_DTYPES))

    def _initial_scale(self) -> float:
        return 1.0 if self.objective == "implicit" else max(1.0, self._ymax)

    def init_factors(self, seed: int, user_init=None, item_init=None):
        """The leader draws (or warm-starts) both tables as one process does; every rank then
        has them (broadcast)."""
        ALS.init_factors(self, seed, user_init, item_init)
        self.receive_init()

    def receive_init(self):
        if not self.ctx.leader:
            self.U = torch.empty(self.n_users, self.k, device=self.device)
            self.V = torch.empty(self.n_items, self.k, device=self.device)
        self.U, self.V = bcast_tensor(self.ctx, self.U), bcast_tensor(self.ctx, self.V)
        s = bcast_tensor(self.ctx, torch.tensor([self.scale], dtype=torch.float64))
        self.scale = float(s[0])

    def _local_half(self, side: str, track: bool = False) -> None:
        if side == "item":
            m, X, F, lo, hi = self.iside, "V", self.U, self.ilo, self.ihi
        else:
            m, X, F, lo, hi = self.uside, "U", self.V, self.ulo, self.uhi
        full = getattr(self, X)
        block = full[lo:hi]  # a view: the solver writes this rank's rows in place
        if side == "item":
            m.U, m.V = F, block
        else:
            m.U, m.V = block, F
        m.scale = self.scale
        m._half_sweep(side, track=track)

    def _refit_scale(self):
        """Cosine's closed-form scale, its two sums over every rank's user-block triples."""
        m = self.uside
        self._set_scale(*all_sum(self.ctx, self._scale_sums(self._u_glob, m.i, m.y)))

    def fit(self, epochs: int, log=print, on_sweep=None) -> list[dict]:
        ctx = self.ctx
        epochs = int(bcast_obj(ctx, {"epochs": int(epochs)})["epochs"])
        history = []
        usz, isz = np.diff(self.ub).tolist(), np.diff(self.ib).tolist()
        # what this rank's blocks cost its peers a sweep (each of W-1 peers receives them)
        sent = ((self.uhi - self.ulo) + (self.ihi - self.ilo)) * self.k * 4 * (ctx.world - 1)
        for ep in range(1, epochs + 1):
            t0, c0 = time.perf_counter(), time.process_time()
            self._local_half("item")
            busy, cpu = time.perf_counter() - t0, time.process_time() - c0
            fault_point(ctx.global_rank, f"sweep{ep}")
            self.V = gather_rows(ctx, self.V[self.ilo:self.ihi], isz)
            if self.similarity == "cosine":  # before the users: they are solved for the final s
                self._refit_scale()
            t1, c1 = time.perf_counter(), time.process_time()
            self._local_half("user", track=True)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            busy, cpu = busy + time.perf_counter() - t1, cpu + time.process_time() - c1
            self.U = gather_rows(ctx, self.U[self.ulo:self.uhi], usz)
            data, = all_sum(ctx, [self.uside._data])
            self._data = data
            got = all_gather_floats(ctx, [busy, cpu])
            shares = [g[0] for g in got]
            dt = time.perf_counter() - t0
            if ctx.leader:
                # rank_seconds: each rank's solving (wall); rank_cpu_seconds: its CPU time in it
                end_epoch(history, {"epoch": ep, "seconds": dt, **self.loss(), "world_size": ctx.world,
                                    "rank_seconds": shares, "rank_cpu_seconds": [g[1] for g in got],
                                    "bytes_sent_per_rank": int(sent)},
                          self, epochs, on_sweep, log, "sweep", self.n, "triples")
                if ctx.verbose:
                    log(rank_share_line(shares, dt))
        return history


def rank_share_line(shares, dt: float) -> str:
    """``-v``: each rank's solving time in the sweep (the rest is waiting and exchange)."""
    parts = "  ".join(f"r{r} {s:.2f} s ({100 * s / max(dt, 1e-9):.0f}%)" for r, s in enumerate(shares))
    return f"    ranks: {parts}"


# -- data-parallel SGD --------------------------------------------------------------------------
class DistBCE(BCE):
    """:class:`mcrecall.train.sgd.BCE` on a process group: the gradients of each mini-batch
    are computed in W slices, one a rank, and all_gathered; every rank takes the same step."""

    def _setup(self, ctx: DistContext, spec: dict):
        self.ctx, self.spec = ctx, spec

    @classmethod
    def _make(cls, ctx, spec, u, i):
        h = spec["hyper"]
        m = cls(u, i, np.ones(len(u), np.float32), int(spec["n_users"]), int(spec["n_items"]),
                similarity=h["similarity"], dim=int(h["dim"]), reg=float(h["reg_bce"]),
                lr=float(h["lr"]), negatives=int(h["negatives"]), batch_size=int(h["batch_size"]),
                device=ctx.device)
        m._setup(ctx, spec)
        return m

    @classmethod
    def lead(cls, ctx: DistContext, tc, triples, n_users: int, n_items: int) -> "DistBCE":
        u, i, y = triples
        pos = y > 0
        u, i = u[pos].astype(np.int32), i[pos].astype(np.int32)
        spec = {"hyper": _hyper(tc), "n_users": int(n_users), "n_items": int(n_items), "n": int(len(u))}
        bcast_obj(ctx, {"cmd": "fit", "kind": "bce", "spec": spec}, ctl=True)
        bcast_tensor(ctx, torch.from_numpy(u))
        bcast_tensor(ctx, torch.from_numpy(i))
        return cls._make(ctx, spec, u, i)

    @classmethod
    def follower(cls, ctx: DistContext, spec: dict) -> "DistBCE":
        n = int(spec["n"])
        u = bcast_tensor(ctx, torch.empty(n, dtype=torch.int32)).numpy()
        i = bcast_tensor(ctx, torch.empty(n, dtype=torch.int32)).numpy()
        return cls._make(ctx, spec, u, i)

    def warm_start(self, seed, user_published=None, item_published=None, scale=None):
        BCE.warm_start(self, seed, user_published, item_published, scale)
        self.receive_init()

    def receive_init(self):
        ctx = self.ctx
        t = torch.tensor([float(getattr(self, "seed", 0)), float(self.scale)], dtype=torch.float64)
        seed, scale = bcast_tensor(ctx, t).tolist()
        if not ctx.leader:
            BCE.init_factors(self, int(seed))  # the optimiser state; the tables come next
        self.U, self.V = bcast_tensor(ctx, self.U), bcast_tensor(ctx, self.V)
        self.scale = float(scale)

    def _cos_grads(self, a, bp, bn, batch: int):
        """:meth:`BCE._autograd_grads` on a slice of a batch of ``batch``, without the scale
        step (its gradient is summed over the ranks first)."""
        a, bp, bn = (x.requires_grad_(True) for x in (a, bp, bn))
        self.scale_t = torch.tensor(self.scale, device=self.device, requires_grad=True)
        zp = self._logits(a, bp)
        zn = self._logits(a.unsqueeze(1), bn)
        data = torch.nn.functional.softplus(-zp).sum() + torch.nn.functional.softplus(zn).sum()
        reg = self.reg * ((1 + self.negatives) * (a * a).sum() + (bp * bp).sum() + (bn * bn).sum())
        ((data + reg) / batch).backward()
        return data.detach(), a.grad, bp.grad, bn.grad, float(self.scale_t.grad)

    def fit(self, epochs: int, log=print, on_sweep=None) -> list[dict]:
        ctx, W, r, k, neg = self.ctx, self.ctx.world, self.ctx.rank, self.k, self.negatives
        epochs = int(bcast_obj(ctx, {"epochs": int(epochs)})["epochs"])
        history = []
        gen = torch.Generator(device=self.device).manual_seed(self.seed + 1)
        for ep in range(1, epochs + 1):
            t0 = time.perf_counter()
            busy, sent = 0.0, 0
            perm = torch.randperm(self.n, generator=gen, device=self.device)
            total, seen = 0.0, 0
            pu, pi = self.u[perm], self.i[perm]
            for s in range(0, self.n, self.batch):
                u, i = pu[s:s + self.batch], pi[s:s + self.batch]
                B = len(u)
                j = torch.randint(0, self.n_items, (B * neg,), generator=gen, device=self.device)
                cuts = [q * B // W for q in range(W + 1)]
                lo, hi = cuts[r], cuts[r + 1]
                tb = time.perf_counter()
                a = self.U.index_select(0, u[lo:hi])
                bp = self.V.index_select(0, i[lo:hi])
                bn = self.V.index_select(0, j[lo * neg:hi * neg]).view(hi - lo, neg, k)
                gsc = 0.0
                if self.similarity == "cosine":
                    data, ga, gbp, gbn, gsc = self._cos_grads(a, bp, bn, B)
                else:
                    data, ga, gbp, gbn = self._dot_grads(a, bp, bn, batch=B)
                busy += time.perf_counter() - tb
                if s == 0:
                    fault_point(ctx.global_rank, f"sweep{ep}")
                flat = torch.cat([ga.reshape(-1), gbp.reshape(-1), gbn.reshape(-1),
                                  torch.tensor([float(data), gsc], device=self.device)]).detach()
                sent += flat.numel() * 4 * (W - 1)
                parts = gather_rows(ctx, flat, [(cuts[q + 1] - cuts[q]) * (2 + neg) * k + 2
                                                for q in range(W)])
                ga_all, gp_all, gn_all, data_t, gs_t = [], [], [], 0.0, 0.0
                off = 0
                for q in range(W):
                    m = cuts[q + 1] - cuts[q]
                    blk = parts[off:off + m * (2 + neg) * k + 2]
                    off += len(blk)
                    ga_all.append(blk[:m * k].view(m, k))
                    gp_all.append(blk[m * k:2 * m * k].view(m, k))
                    gn_all.append(blk[2 * m * k:(2 + neg) * m * k].view(m * neg, k))
                    data_t += float(blk[-2])
                    gs_t += float(blk[-1])
                if self.similarity == "cosine":  # BCE._autograd_grads' scale step, on the sum
                    self.gs += gs_t * gs_t
                    self.scale = max(0.1, self.scale - self.lr * gs_t / math.sqrt(self.gs + 1e-10))
                with torch.no_grad():
                    self._step(self.U, self.GU, [(u, torch.cat(ga_all))])
                    self._step(self.V, self.GV, [(i, torch.cat(gp_all)), (j, torch.cat(gn_all))])
                total += data_t
                seen += B
            dt = time.perf_counter() - t0
            examples = seen * (1 + neg)
            self._loss = total / max(1, examples)
            shares = [x[0] for x in all_gather_floats(ctx, [busy])]
            if ctx.leader:
                end_epoch(history, {"epoch": ep, "seconds": dt, "loss": self._loss, "world_size": W,
                                    "rank_seconds": shares, "bytes_sent_per_rank": int(sent)},
                          self, epochs, on_sweep, log, "epoch", examples, "examples")
                if ctx.verbose:
                    log(rank_share_line(shares, dt))
        return history


# -- the process group --------------------------------------------------------------------------
def _device_and_backend(tc, local_rank: int, local_world: int) -> tuple[torch.device, str]:
    """One CUDA device a rank over NCCL where there are enough; else CPU over gloo."""
    want = tc.device
    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if want.startswith("cuda") and n_cuda < local_world:
        raise RuntimeError(f"[train] device = {want!r} with {local_world} ranks on this host needs "
                           f"{local_world} CUDA devices; {n_cuda} found (use --nproc <= {n_cuda})")
    if want != "cpu" and n_cuda >= local_world and n_cuda > 0:
        torch.cuda.set_device(local_rank)
        return torch.device(f"cuda:{local_rank}"), "nccl"
    return torch.device("cpu"), "gloo"


def init_from_env(cfg, verbose: bool = False) -> DistContext:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE,
    LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT); waits at most dist_timeout_s."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    tc = cfg.train
    device, backend = _device_and_backend(tc, local_rank, local_world)
    # [train] threads counts per rank; 0 = this host's cores shared by its ranks
    torch.set_num_threads(tc.threads or max(1, (os.cpu_count() or 1) // local_world))
    fault_point(rank, "join")
    timeout = timedelta(seconds=tc.dist_timeout_s)
    try:
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout)
        ctl = dist.new_group(backend=backend, timeout=CTL_TIMEOUT)
        # the leader: the first rank whose host holds the triple store (torchrun's c10d
        # rendezvous numbers hosts by name, not by where the data are); 0 if none has it
        here = torch.tensor([float((cfg.data_dir / "triples.lmdb").exists())])
        here = here.to(device) if device.type == "cuda" else here
        flags = [torch.zeros_like(here) for _ in range(world)]
        dist.all_gather(flags, here)
    except (RuntimeError, dist.DistError) as e:
        raise DistError(f"the process group of {world} ranks did not form within dist_timeout_s = "
                        f"{tc.dist_timeout_s:g} s: " + " ".join(str(e).split())[:300]) from e
    lead = next((g for g in range(world) if float(flags[g]) > 0), 0)
    return DistContext(rank=(rank - lead) % world, world=world,
                       ranks=[(lead + v) % world for v in range(world)], device=device,
                       group=None, ctl=ctl, timeout_s=tc.dist_timeout_s, verbose=verbose)


def describe_failure(e: BaseException, timeout_s: float | None = None) -> str:
    """One line: why this rank stopped."""
    msg = " ".join(str(e).split())[:300] or type(e).__name__
    low = msg.lower()
    if isinstance(e, MemoryError) or "out of memory" in low or "can't allocate memory" in low:
        return f"out of memory ({msg})"
    if "timed out" in low or "timeout" in low:
        t = f" dist_timeout_s = {timeout_s:g} s" if timeout_s else ""
        return f"a peer did not answer within{t} ({msg})"
    if isinstance(e, DistError):
        return f"lost a peer ({msg})"
    return f"{type(e).__name__}: {msg}"


def _write_error_file(line: str) -> None:
    """The elastic agent's error file (TORCHELASTIC_ERROR_FILE): the launcher reads this line."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        try:
            with open(path, "w") as f:
                json.dump({"message": line, "timestamp": int(time.time())}, f)
        except OSError:
            pass


def _lead(cfg, args, ctx) -> dict:
    from .lock import PublisherBusyError
    from .trainer import train_run

    try:
        res = train_run(cfg, force=args.force, skip_unchanged=args.skip_unchanged,
                        wait=not args.no_wait)
        out = {"status": res.status, "version": res.version}
    except PublisherBusyError as e:
        out = {"status": "busy", "message": str(e)}
    stop_followers(ctx)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mcrecall.train.distributed",
                                description="one rank of `mcrecall train` on torch.distributed "
                                            "(start with torchrun or `mcrecall train --nproc N`)")
    p.add_argument("--config", help="TOML configuration file (the same on every host)")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("--force", action="store_true", help="as `mcrecall train --force`")
    p.add_argument("--no-wait", action="store_true", help="as `mcrecall train --no-wait`")
    p.add_argument("--skip-unchanged", action="store_true",
                   help="do nothing when the store has no new triples (what --every does)")
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    """One rank: rank 0 trains and publishes, the others follow its fits."""
    from mcrecall.core.config import ConfigError, load_config
    from mcrecall.core.logs import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    rank = os.environ.get("RANK", "?")
    launched = bool(os.environ.get(LAUNCHED_ENV))
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"mcrecall train: rank {rank}: configuration error: {e}", file=sys.stderr)
        return 2
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        print("mcrecall train: start this module with torchrun (or `mcrecall train --nproc N`): "
              "RANK and WORLD_SIZE are not set", file=sys.stderr)
        return 2
    try:
        ctx = init_from_env(cfg, verbose=args.verbose > 0)
        with using(ctx):
            if ctx.leader:
                out = _lead(cfg, args, ctx)
            else:
                while follow(ctx):
                    pass
                out = {}
        dist.destroy_process_group()
    except KeyboardInterrupt:  # the launcher passed on Ctrl-C / SIGTERM
        return 130
    except (Exception, MemoryError) as e:
        line = describe_failure(e, cfg.train.dist_timeout_s)
        _write_error_file(line)
        _record_failure(args.result_file, rank, line)
        if not launched:
            print(f"mcrecall train: rank {rank}: {line}; nothing published", file=sys.stderr, flush=True)
        return 1
    if not ctx.leader:
        return 0
    if args.result_file:
        with open(args.result_file, "w") as f:
            json.dump(out, f)
        return 0
    if out.get("status") == "busy":
        print(f"mcrecall train: {out['message']}; not waiting (--no-wait)", file=sys.stderr)
    return _STATUS_CODE[out["status"]]


# -- `mcrecall train --nproc N` -----------------------------------------------------------------
def failure_line(failures: dict, recorded: dict | None = None) -> str:
    """One line from the elastic agent's failures (global rank -> ProcessFailure) and the lines
    the ranks recorded themselves (global rank -> line, see ``_record_failure``).

    The cause, in this order: a rank killed by a signal (the others failed because it did), a
    rank's own error, a rank that lost its peer or timed out waiting for it, then the
    consequences: SIGABRT (a survivor's collective library aborting once a peer is gone) and
    SIGTERM (the agent stopping the survivors). A rank's recorded line counts even when the agent
    stopped it before it exited: it may abort its peer on the way out and be seen second.
    """
    recorded = recorded or {}
    consequence = {-signal.SIGABRT: 3, -signal.SIGTERM: 4}
    lines = {}
    for rank, f in failures.items():
        code = f.exitcode
        if code < 0:
            name = f.signal_name()
            cause = f"killed by {name}"
            if name == "SIGKILL":
                cause += " (kill -9, or the kernel's out-of-memory killer)"
            lines[rank] = (consequence.get(code, 0), f.timestamp, cause)
        else:
            msg = f.message if isinstance(f.message, str) else ""
            cause = msg if msg and not msg.startswith("To enable traceback") else f"exited with status {code}"
            lines[rank] = (2 if _waited_for_peer(cause) else 1, f.timestamp, cause)
    for rank, cause in recorded.items():
        key = (2 if _waited_for_peer(cause) else 1, 0, cause)
        if rank not in lines or lines[rank][0] >= 3 or lines[rank][2].startswith("exited with status"):
            lines[rank] = key
    rank, (_, _, cause) = min(lines.items(), key=lambda kv: (kv[1][0], kv[1][1], kv[0]))
    return f"rank {rank}: {cause}"


def _waited_for_peer(cause: str) -> bool:
    return cause.startswith(("lost a peer", "a peer did not answer"))


def _record_failure(result_file: str | None, rank: str, line: str) -> None:
    """This rank's cause beside the launcher's result file, before the process exits: its exit
    can abort a peer whose SIGABRT the agent then sees first."""
    if not result_file:
        return
    try:
        with open(f"{result_file}.rank{int(rank)}", "w") as f:
            f.write(line)
    except (OSError, ValueError):
        pass


def _recorded_failures(result_file: str) -> dict:
    import glob

    out = {}
    for path in glob.glob(glob.escape(result_file) + ".rank*"):
        try:
            with open(path) as f:
                out[int(path.rsplit(".rank", 1)[1])] = f.read().strip()
        except (OSError, ValueError):
            pass
    return out


def launch_once(nproc: int, worker_args: list[str], timeout_s: float) -> tuple[dict | None, str | None]:
    """One training on ``nproc`` local ranks: (rank 0's result, None) or (None, failure line)."""
    import logging
    import tempfile
    import uuid

    quiet = not logging.getLogger("mcrecall").isEnabledFor(logging.DEBUG)
    if quiet:  # torch.distributed.elastic sets each of its loggers' level from LOGLEVEL
        os.environ.setdefault("LOGLEVEL", "CRITICAL")
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if quiet:  # we say what failed; loggers made before LOGLEVEL was set
        for name in list(logging.root.manager.loggerDict):  # elastic sets each logger's level
            if name.startswith("torch.distributed"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ[LAUNCHED_ENV] = "1"
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # c10d's socket warnings: we say what failed
    with tempfile.TemporaryDirectory(prefix="mcrecall-dist-") as tmp:
        result = os.path.join(tmp, "result.json")
        lc = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0",
                          rdzv_configs={"timeout": max(1, int(timeout_s)),
                                        "join_timeout": max(1, int(timeout_s))},
                          max_restarts=0, monitor_interval=0.1, start_method="spawn",
                          local_addr="127.0.0.1")
        try:
            elastic_launch(lc, sys.executable)("-m", "mcrecall.train.distributed", *worker_args,
                                               "--result-file", result)
        except ChildFailedError as e:
            return None, failure_line(e.failures, _recorded_failures(result))
        except SignalException as e:  # Ctrl-C / SIGTERM: the agent has stopped the ranks
            raise KeyboardInterrupt(str(e)) from None
        try:
            with open(result) as f:
                return json.load(f), None
        except (OSError, ValueError):
            return None, "rank 0: ended without a result"


def launch_local(cfg, nproc: int, *, config: str | None, verbose: int = 0, force: bool = False,
                 every: float | None = None, wait: bool = True) -> int:
    """``mcrecall train --nproc N``: the exit status of ``mcrecall train`` (train/cli.py)."""
    base = (["--config", str(config)] if config else []) + ["-v"] * int(verbose)
    base += ["--force"] * bool(force) + ["--no-wait"] * (not wait)
    timeout = cfg.train.dist_timeout_s
    if not every:
        out, failed = launch_once(nproc, base, timeout)
        if failed:
            print(f"train: distributed training on {nproc} ranks failed: {failed}; nothing "
                  "published, the current version keeps serving", file=sys.stderr, flush=True)
            return 1
        if out["status"] == "busy":
            print(f"mcrecall train: {out['message']}; not waiting (--no-wait)", file=sys.stderr,
                  flush=True)
        return _STATUS_CODE[out["status"]]
    print(f"train: retraining every {every:g} s on {nproc} ranks (Ctrl-C stops)", flush=True)
    try:
        while True:
            started = time.monotonic()
            out, failed = launch_once(nproc, base + ["--skip-unchanged"], timeout)
            if failed:
                print(f"train: distributed training on {nproc} ranks failed: {failed}; the current "
                      "version is unchanged; trying again next period", file=sys.stderr, flush=True)
            elif out["status"] == "busy":
                print(f"train: {out['message']}; skipping this round (--no-wait)", flush=True)
            time.sleep(max(0.0, every - (time.monotonic() - started)))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    # run the imported module's main, not this __main__ copy: the trainer's hook reads the
    # process group from mcrecall.train.distributed
    from mcrecall.train.distributed import main as _main

    raise SystemExit(_main())
