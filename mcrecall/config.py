"""Configuration: embedded defaults < TOML file (``--config``) < ``MCRECALL_<SECTION>_<KEY>``.

Every key has a typed default below; a TOML file or an environment variable may override it.
Unknown sections or keys are an error (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

ENV_PREFIX = "MCRECALL_"
DEFAULT_CONFIG_ENV = "MCRECALL_CONFIG"  # path of a TOML file used when none is given
TEST_ENV_PREFIX = "MCRECALL_TEST_"  # reserved for the test harness (tests/fixtures_*.py)


class ConfigError(ValueError):
    """A configuration value or key is invalid."""


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = "mcrecall.events"
    group_id: str = "mcrecall-ingest"
    session_timeout_ms: int = 10000
    max_poll_records: int = 5000
    partitions: int = 4  # used when the topic is created by `mcrecall produce` / the demo


@dataclass(frozen=True)
class StoreConfig:
    data_dir: str = "mcrecall-data"
    map_size_gb: float = 8.0  # LMDB address space reserved (sparse file; not allocated)


@dataclass(frozen=True)
class TrainConfig:
    dim: int = 32
    epochs: int = 10
    similarity: str = "dot"  # dot | cosine
    objective: str = "squared"  # squared (seed, ALS) | bce (SGD) | implicit (weighted ALS)
    reg: float = 0.1
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    holdout_fraction: float = 0.1
    max_rmse_regression: float = 0.05
    popular_items: int = 100
    negatives: int = 4  # sampled negatives per positive for the bce objective
    lr: float = 0.2  # bce: Adagrad step size
    batch_size: int = 8192  # bce mini-batch (positives); sparse Adagrad wants many steps
    threads: int = 0  # 0 = torch default
    alpha: float = 3.0  # implicit: confidence c = 1 + alpha * score
    reg_bce: float = 0.01  # bce: L2 weight per example (the ALS objectives use reg)
    eval_users: int = 5000  # at most this many users ranked in the held-out evaluation
    warm_start: bool = True  # start known users/items from the current version's vectors


@dataclass(frozen=True)
class IndexConfig:
    backend: str = "milvus"  # milvus | faiss | hnswlib | exact | <entry point>
    uri: str = ""  # milvus: file path or http://host:port; "" = <data_dir>/milvus.db
    collection: str = "mcrecall_items"
    metric: str = "IP"  # L2 | IP | COSINE
    # AUTOINDEX = the backend's best: milvus FLAT or IVF_FLAT sized to the version, faiss/hnswlib HNSW, exact FLAT;
    # or FLAT | HNSW | IVF_FLAT | IVF_SQ8 (what the backend supports; Milvus Lite: FLAT, IVF_FLAT)
    index_type: str = "AUTOINDEX"
    hnsw_m: int = 16
    ef_construction: int = 200
    ef_search: int = 128
    nlist: int = 1024
    nprobe: int = 32
    timeout_s: float = 10.0  # searches and reads; publishing (flush, index, load) has its own
    # milvus credentials and TLS (MCRECALL_INDEX_TOKEN etc.); secrets never printed or stored
    token: str = ""  # "user:password" or an API key
    user: str = ""
    password: str = ""
    secure: bool = False  # TLS to the Milvus server
    server_pem_path: str = ""  # CA / server certificate for TLS


@dataclass(frozen=True)
class ServeConfig:
    fold_in: bool = True  # users changed since the version was trained get an on-the-fly vector
    max_k: int = 10000  # larger k is refused (Milvus caps a search at 16384)
    # exclude_seen: up to exclude_direct_max seen items go to the vector store's exclude list
    # (one search of k + |seen|); more seen items: rounds of overfetch * k + exclude_direct_max,
    # x4 each round, filtered here
    overfetch: int = 2
    exclude_direct_max: int = 256
    item_cache_size: int = 100_000  # item vectors kept per client (fold-in, score), all versions
    foldin_cache_size: int = 50_000  # fold-in vectors keyed by (version, user, user_seq)


@dataclass(frozen=True)
class Config:
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    source: str = "<defaults>"

    @property
    def data_dir(self) -> Path:
        return Path(self.store.data_dir)

    def with_overrides(self, **sections: Mapping[str, Any]) -> "Config":
        """Return a copy with ``section={key: value}`` overrides applied (validated)."""
        return _apply(self, {k: dict(v) for k, v in sections.items()}, origin="override")


_SECTION_TYPES = {
    "kafka": KafkaConfig,
    "store": StoreConfig,
    "train": TrainConfig,
    "index": IndexConfig,
    "serve": ServeConfig,
}


def _coerce(section: str, key: str, value: Any, typ: type, origin: str) -> Any:
    where = f"[{section}] {key} (from {origin})"
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"}:
            return True
        if isinstance(value, str) and value.strip().lower() in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{where}: expected a boolean, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            if isinstance(value, str):
                return int(value.strip())
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return str(value)


_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


def _apply(cfg: Config, data: Mapping[str, Mapping[str, Any]], origin: str) -> Config:
    new_sections = {}
    for section, values in data.items():
        cls = _SECTION_TYPES.get(section)
        if cls is None:
            raise ConfigError(
                f"unknown config section [{section}] (from {origin}); "
                f"known: {', '.join(_SECTION_TYPES)}"
            )
        if not isinstance(values, Mapping):
            raise ConfigError(f"[{section}] (from {origin}) must be a table")
        current = new_sections.get(section, getattr(cfg, section))
        known = {f.name: f for f in fields(cls)}
        changes = {}
        for key, value in values.items():
            f = known.get(key)
            if f is None:
                raise ConfigError(
                    f"unknown config key [{section}] {key} (from {origin}); "
                    f"known: {', '.join(known)}"
                )
            typ = _TYPES[f.type] if isinstance(f.type, str) else f.type
            changes[key] = _coerce(section, key, value, typ, origin)
        new_sections[section] = replace(current, **changes)
    return _validate(replace(cfg, **new_sections))


def _validate(cfg: Config) -> Config:
    t, i = cfg.train, cfg.index
    if t.similarity not in ("dot", "cosine"):
        raise ConfigError(f"[train] similarity must be 'dot' or 'cosine', got {t.similarity!r}")
    if t.objective not in ("squared", "bce", "implicit"):
        raise ConfigError(
            f"[train] objective must be 'squared', 'bce' or 'implicit', got {t.objective!r}"
        )
    if min(t.reg, t.reg_bce, t.alpha) < 0 or min(t.lr, t.negatives, t.batch_size) <= 0:
        raise ConfigError("[train] reg, reg_bce, alpha must be >= 0; lr, negatives, batch_size > 0")
    if t.max_rmse_regression < 0 or t.popular_items < 0 or t.eval_users <= 0:
        raise ConfigError("[train] max_rmse_regression, popular_items >= 0; eval_users > 0")
    if t.device not in ("auto", "cpu", "cuda") and not t.device.startswith("cuda:"):
        raise ConfigError(f"[train] device must be auto, cpu or cuda[:N], got {t.device!r}")
    if t.dim <= 0 or t.epochs <= 0:
        raise ConfigError("[train] dim and epochs must be positive")
    if not 0.0 < t.holdout_fraction < 1.0:
        raise ConfigError("[train] holdout_fraction must be in (0, 1)")
    if i.secure and i.server_pem_path and not Path(i.server_pem_path).is_file():
        raise ConfigError(f"[index] server_pem_path {i.server_pem_path!r} is not a file")
    if i.token and (i.user or i.password):
        raise ConfigError("[index] set either token or user/password, not both")
    if i.metric.upper() not in ("L2", "IP", "COSINE"):
        raise ConfigError(f"[index] metric must be L2, IP or COSINE, got {i.metric!r}")
    if cfg.kafka.partitions <= 0:
        raise ConfigError("[kafka] partitions must be positive")
    sv = cfg.serve
    if sv.max_k <= 0 or sv.overfetch <= 0 or sv.exclude_direct_max < 0:
        raise ConfigError("[serve] max_k and overfetch must be positive, exclude_direct_max >= 0")
    if sv.item_cache_size < 0 or sv.foldin_cache_size < 0:
        raise ConfigError("[serve] item_cache_size and foldin_cache_size must be >= 0")
    return replace(cfg, index=replace(i, metric=i.metric.upper()))


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        if (not name.startswith(ENV_PREFIX) or name == DEFAULT_CONFIG_ENV
                or name.startswith(TEST_ENV_PREFIX)):
            continue
        rest = name[len(ENV_PREFIX):].lower()
        section, _, key = rest.partition("_")
        if section not in _SECTION_TYPES or not key:
            raise ConfigError(
                f"environment variable {name}: expected MCRECALL_<SECTION>_<KEY> with a section "
                f"among {', '.join(s.upper() for s in _SECTION_TYPES)}"
            )
        out.setdefault(section, {})[key] = value
    return out


def load_config(
    path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Load the configuration.

    Parameters
    ----------
    path : path of a TOML file, optional. When omitted, ``$MCRECALL_CONFIG`` is used if set,
        else the embedded defaults.
    environ : mapping used for ``MCRECALL_<SECTION>_<KEY>`` overrides (default ``os.environ``).
    """
    environ = os.environ if environ is None else environ
    cfg = Config()
    if path is None and environ.get(DEFAULT_CONFIG_ENV):
        path = environ[DEFAULT_CONFIG_ENV]
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {p} is not valid TOML: {e}") from None
        cfg = _apply(cfg, data, origin=str(p))
        cfg = replace(cfg, source=str(p))
    env = _env_overrides(environ)
    if env:
        cfg = _apply(cfg, env, origin="environment")
    return _validate(cfg)


SECRET_KEYS = {"index": ("token", "password")}  # redacted wherever a config is shown or stored


def as_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """The configuration as plain nested dicts (for printing and for version metadata);
    secrets (:data:`SECRET_KEYS`) read ``"***"`` when set."""
    from dataclasses import asdict

    d = asdict(cfg)
    d.pop("source", None)
    for section, keys in SECRET_KEYS.items():
        for key in keys:
            if d[section].get(key):
                d[section][key] = "***"
    return d
