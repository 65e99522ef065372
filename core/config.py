"""Configuration: embedded defaults < TOML file (``--config``) < ``MCRECALL_<SECTION>_<KEY>``.

Every key has a typed default below; a TOML file or an environment variable may override it.
Unknown sections or keys are an error (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import math
import os
import re
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
    # authentication and encryption (DESIGN: passed to every Kafka client the project creates)
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    sasl_mechanism: str = "PLAIN"  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512 (SASL_* protocols)
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)  # a secret: never printed or logged
    ssl_cafile: str = ""  # PEM CA bundle that signed the brokers' certificates ("" = system CAs)
    ssl_certfile: str = ""  # PEM client certificate (mutual TLS)
    ssl_keyfile: str = ""  # PEM private key of ssl_certfile
    # a stored offset outside the partition's [beginning, end] (the broker lost its data, the
    # topic was recreated, retention removed it): fail (stop, one line) | earliest | latest
    offset_reset: str = "fail"
    # the worker's Kafka client: kafka-python (pure Python, the default) or confluent
    # (confluent-kafka on librdkafka, the optional extra `mcrecall[fast]`: ~3x the consume rate)
    client: str = "kafka-python"


@dataclass(frozen=True)
class StoreConfig:
    data_dir: str = "mcrecall-data"
    map_size_gb: float = 8.0  # LMDB address space reserved (sparse file; not allocated)


@dataclass(frozen=True)
class IngestConfig:
    # a dead letter (key + value + headers) is cut to this many bytes; keep it at or below the
    # dead-letter topic's max.message.bytes (Kafka's default: 1048588)
    max_message_bytes: int = 1_000_000
    # the worker gathers polls into one LMDB write transaction until it holds this many events,
    # its first poll is batch_wait_ms old, or a poll comes back empty (bigger transactions cost
    # less per event; a crash loses nothing either way: the offsets are in the same transaction)
    batch_events: int = 50_000
    batch_wait_ms: int = 1000


@dataclass(frozen=True)
class TrainConfig:
    dim: int = 32
    epochs: int = 10
    similarity: str = "dot"  # dot | cosine
    # implicit (weighted ALS; the best-ranking, default) | squared (ALS on the observed scores: the
    # original matrix-completion objective, docs/design.md §9) | bce (SGD)
    objective: str = "implicit"
    reg: float = 0.1
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    holdout_fraction: float = 0.1
    max_rmse_regression: float = 0.05  # gate of squared: held-out RMSE may rise this much
    max_recall_regression: float = 0.01  # gate of implicit/bce: Recall@10 may fall this much
    popular_items: int = 100
    negatives: int = 4  # sampled negatives per positive for the bce objective
    lr: float = 0.2  # bce: Adagrad step size
    batch_size: int = 8192  # bce mini-batch (positives); sparse Adagrad wants many steps
    threads: int = 0  # 0 = torch default
    alpha: float = 3.0  # implicit: confidence c = 1 + alpha * score
    reg_bce: float = 0.01  # bce: L2 weight per example (the ALS objectives use reg)
    eval_users: int = 5000  # at most this many users ranked in the held-out evaluation
    warm_start: bool = True  # start known users/items from the current version's vectors
    # after evaluation, sweeps (bce: epochs) over ALL triples warm-started from the evaluated
    # model, so every user/item with triples is served; 0 = serve the evaluated model as it is
    refit_sweeps: int = 2
    # a ranking objective's evaluation also fits the squared-error baseline (objective squared,
    # dot) on the same split for this many sweeps and reports it beside the model; 0 = not measured
    compare_squared_sweeps: int = 5
    # ALS row solver: cg (a few conjugate-gradient steps per row, warm-started; the default,
    # several times faster a sweep) | cholesky (exact; cosine rows are always exact)
    solver: str = "cg"
    cg_steps: int = 3  # solver = cg: CG steps per row and half-sweep
    # the hybrid model (train/attributes.py): a vector = its ID embedding + the mean of its
    # attribute tokens' embeddings, whenever the store holds attributes; false = ID only
    attributes: bool = True
    min_token_count: int = 2  # tokens held by fewer entities than this are dropped
    # `train --nproc N` / torchrun: a collective, the join of every rank or a peer's reply waits
    # at most this long; past it the training ends, nothing is published (train/distributed.py)
    dist_timeout_s: float = 300.0


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
    # a version with at most this many items gets a FLAT (exact) index whatever index_type says
    flat_max_items: int = 10_000
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
    # `mcrecall serve`: a replica whose lag (replica_status()["lag_s"]) exceeds this is not
    # ready (GET /readyz answers 503); inf = never
    max_lag_s: float = 60.0
    max_batch_users: int = 1000  # POST /recall: at most this many user_ids in one request


@dataclass(frozen=True)
class ReplicationConfig:
    # every publication and refresh cycle is also written to the model log (docs/design.md
    # "Model log") and becomes current only once Kafka acknowledged it (acks=all)
    publish: bool = False
    topic: str = ""  # the model log's control topic; "" = "<kafka.topic>.models"
    timeout_s: float = 30.0  # how long a publication retries an unreachable Kafka, then fails


@dataclass(frozen=True)
class Config:
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    replication: ReplicationConfig = field(default_factory=ReplicationConfig)
    source: str = "<defaults>"

    @property
    def data_dir(self) -> Path:
        return Path(self.store.data_dir)

    @property
    def model_log_topic(self) -> str:
        """The model log's control topic: ``[replication] topic`` or ``<kafka.topic>.models``."""
        return self.replication.topic or f"{self.kafka.topic}.models"

    def with_overrides(self, *, origin: str = "override", **sections: Mapping[str, Any]) -> "Config":
        """Return a copy with ``section={key: value}`` overrides applied (validated); ``origin``
        names their source in error messages (``(from <origin>)``)."""
        return _validate(_apply(self, {k: dict(v) for k, v in sections.items()}, origin=origin))


_SECTION_TYPES = {
    "kafka": KafkaConfig,
    "store": StoreConfig,
    "ingest": IngestConfig,
    "train": TrainConfig,
    "index": IndexConfig,
    "serve": ServeConfig,
    "replication": ReplicationConfig,
}

# Keys whose value is a secret: shown as "<redacted>" in errors, as_dict() and repr().
SECRET_KEYS = frozenset({("kafka", "sasl_password"), ("index", "token"), ("index", "password")})
REDACTED = "<redacted>"


@dataclass(frozen=True)
class Range:
    """Allowed interval of a numeric key; NaN is never allowed, infinity only up to ``hi``."""

    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, x: float) -> bool:
        if isinstance(x, float) and math.isnan(x):
            return False
        above = x > self.lo if self.lo_open else x >= self.lo
        below = x < self.hi if self.hi_open else x <= self.hi
        return above and below

    def __str__(self) -> str:
        def num(v):
            return "inf" if v == math.inf else (str(v) if isinstance(v, int) else f"{v:g}")

        return f"{'(' if self.lo_open else '['}{num(self.lo)}, {num(self.hi)}{')' if self.hi_open else ']'}"


_I32 = 2**31 - 1  # Kafka protocol ints, LMDB / torch / numpy sizes: stay far from overflow
# Every int and float key has an entry (tests/test_config.py checks it): a value outside is an
# error when the configuration loads, not a traceback or an endless retry later.
RANGES: dict[tuple[str, str], Range] = {
    ("kafka", "session_timeout_ms"): Range(1000, 3_600_000),  # heartbeat = timeout / 3
    ("kafka", "max_poll_records"): Range(1, 1_000_000),
    ("kafka", "partitions"): Range(1, 100_000),
    ("store", "map_size_gb"): Range(0.0001, 65536.0),  # 64 TiB: under the 47-bit address space
    ("ingest", "max_message_bytes"): Range(4096, 1 << 30),  # room for the headers; Kafka's own cap
    ("ingest", "batch_events"): Range(1, 10_000_000),
    ("ingest", "batch_wait_ms"): Range(0, 3_600_000),
    ("train", "dim"): Range(1, 16_384),
    ("train", "epochs"): Range(1, 1_000_000),
    ("train", "refit_sweeps"): Range(0, 1_000_000),
    ("train", "compare_squared_sweeps"): Range(0, 1_000_000),
    ("train", "cg_steps"): Range(1, 1000),
    ("train", "min_token_count"): Range(1, _I32),
    ("train", "dist_timeout_s"): Range(0.0, 7 * 86400.0, lo_open=True),
    ("train", "reg"): Range(0.0, 1e9),
    ("train", "seed"): Range(0, 2**32 - 1),  # numpy's seed range
    ("train", "holdout_fraction"): Range(0.0, 1.0, lo_open=True, hi_open=True),
    ("train", "max_rmse_regression"): Range(0.0, math.inf),  # inf: never refuse to publish
    ("train", "max_recall_regression"): Range(0.0, 1.0),  # 1: never refuse (recall is in [0, 1])
    ("train", "popular_items"): Range(0, 10_000_000),
    ("train", "negatives"): Range(1, 10_000),
    ("train", "lr"): Range(0.0, 1e6, lo_open=True),
    ("train", "batch_size"): Range(1, _I32),
    ("train", "threads"): Range(0, 4096),
    ("train", "alpha"): Range(0.0, 1e9),
    ("train", "reg_bce"): Range(0.0, 1e9),
    ("train", "eval_users"): Range(1, _I32),
    ("index", "hnsw_m"): Range(2, 2048),
    ("index", "ef_construction"): Range(1, _I32),
    ("index", "ef_search"): Range(1, _I32),
    ("index", "nlist"): Range(1, 65_536),
    ("index", "nprobe"): Range(1, 65_536),
    ("index", "flat_max_items"): Range(0, 2**31 - 1),
    ("index", "timeout_s"): Range(0.0, 86_400.0, lo_open=True),
    ("serve", "max_k"): Range(1, 1_000_000),
    ("serve", "overfetch"): Range(1, 1000),
    ("serve", "exclude_direct_max"): Range(0, 1_000_000),
    ("serve", "item_cache_size"): Range(0, _I32),
    ("serve", "foldin_cache_size"): Range(0, _I32),
    ("serve", "max_lag_s"): Range(0.0, math.inf, lo_open=True),
    ("serve", "max_batch_users"): Range(1, 1_000_000),
    ("replication", "timeout_s"): Range(0.0, 86_400.0, lo_open=True),
}

# Enumerated string keys (values compared case-insensitively, stored as written here).
CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("kafka", "security_protocol"): ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
    ("kafka", "sasl_mechanism"): ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
    ("kafka", "offset_reset"): ("fail", "earliest", "latest"),
    ("kafka", "client"): ("kafka-python", "confluent"),
    ("train", "similarity"): ("dot", "cosine"),
    ("train", "objective"): ("squared", "bce", "implicit"),
    ("train", "solver"): ("cg", "cholesky"),
    ("index", "metric"): ("L2", "IP", "COSINE"),
}
_DEVICE = re.compile(r"auto|cpu|cuda(:\d{1,3})?")
_HOST_PORT = re.compile(r"[^\s,:]+:\d{1,5}|\[[0-9A-Fa-f:.]+\]:\d{1,5}")
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,245}")  # Kafka's rule, leaving room for ".dlq"
# the model log's control topic; each version's topic is "<topic>.v<N>" (N < 2^32: 11 more)
_MODEL_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,238}")


def _shown(section: str, key: str, value: Any) -> str:
    return REDACTED if (section, key) in SECRET_KEYS else repr(value)


def _coerce(section: str, key: str, value: Any, typ: type, origin: str, typed: bool = False) -> Any:
    """``value`` as ``typ``. ``typed``: the source has types of its own (a TOML file), so a
    string for a number or a boolean is a mistake to report (``dim = "16"``), not to convert;
    the environment has only strings."""
    where = f"[{section}] {key} (from {origin})"
    got = _shown(section, key, value)
    if typed and typ in (bool, int, float) and isinstance(value, str):
        what = {bool: "a boolean", int: "an integer", float: "a number"}[typ]
        raise ConfigError(f"{where}: expected {what}, got the string {got}: write it without "
                          "quotes")
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"}:
            return True
        if isinstance(value, str) and value.strip().lower() in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{where}: expected a boolean, got {got}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {got}")
        try:
            if isinstance(value, str):
                return int(value.strip().replace("_", ""))
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{where}: expected an integer, got {got}") from None
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {got}")
        try:
            return float(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{where}: expected a number, got {got}") from None
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ConfigError(f"{where}: expected a string, got {got}")
    return str(value)


def _check_value(section: str, key: str, value: Any, origin: str) -> Any:
    """Range-check a numeric key, canonicalise an enumerated one; return the value to store."""
    where = f"[{section}] {key}"
    rng = RANGES.get((section, key))
    if rng is not None and value not in rng:
        raise ConfigError(f"{where} = {value!r} (from {origin}) is out of range: allowed {rng}")
    choices = CHOICES.get((section, key))
    if choices is not None:
        for c in choices:
            if value.strip().lower() == c.lower():
                return c
        raise ConfigError(f"{where} must be one of {', '.join(choices)}; got "
                          f"{_shown(section, key, value)} (from {origin})")
    return value


_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


def _apply(cfg: Config, data: Mapping[str, Mapping[str, Any]], origin: str, typed: bool = False) -> Config:
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
            changes[key] = _check_value(section, key, _coerce(section, key, value, typ, origin, typed),
                                        origin)
        new_sections[section] = replace(current, **changes)
    # checks across keys run once all sources are merged (a password may come from the environment)
    return replace(cfg, **new_sections)


def _validate(cfg: Config) -> Config:
    """Checks that involve more than one key, or a string's shape (single keys: _check_value)."""
    t, k = cfg.train, cfg.kafka
    if not _DEVICE.fullmatch(t.device):
        raise ConfigError(f"[train] device must be auto, cpu or cuda[:N], got {t.device!r}")
    if not all(_HOST_PORT.fullmatch(h.strip()) for h in k.bootstrap_servers.split(",")):
        raise ConfigError(f"[kafka] bootstrap_servers must be host:port[,host:port...], "
                          f"got {k.bootstrap_servers!r}")
    if not _TOPIC.fullmatch(k.topic):
        raise ConfigError(f"[kafka] topic must be 1..245 characters of A-Z a-z 0-9 . _ - "
                          f"(Kafka's rule; <topic>.dlq must fit too), got {k.topic!r}")
    if not k.group_id.strip():
        raise ConfigError("[kafka] group_id must not be empty")
    if not _MODEL_TOPIC.fullmatch(cfg.model_log_topic):
        where = "[replication] topic" if cfg.replication.topic else "<kafka.topic>.models"
        raise ConfigError(f"{where} must be 1..238 characters of A-Z a-z 0-9 . _ - (version "
                          f"topics <topic>.v<N> must fit Kafka's 249), got {cfg.model_log_topic!r}"
                          + ("" if cfg.replication.topic else "; set [replication] topic"))
    if cfg.model_log_topic == k.topic or cfg.model_log_topic == f"{k.topic}.dlq":
        raise ConfigError(f"[replication] topic {cfg.model_log_topic!r} must differ from the event "
                          "topic and its dead-letter topic")
    if not cfg.store.data_dir.strip():
        raise ConfigError("[store] data_dir must not be empty")
    i = cfg.index
    if i.secure and i.server_pem_path and not Path(i.server_pem_path).is_file():
        raise ConfigError(f"[index] server_pem_path {i.server_pem_path!r} is not a file")
    if i.token and (i.user or i.password):
        raise ConfigError("[index] set either token or user/password, not both")
    _validate_security(k)
    return cfg


def _validate_security(k: KafkaConfig) -> None:
    sasl = k.security_protocol.startswith("SASL_")
    tls = k.security_protocol.endswith("SSL")
    if sasl and not (k.sasl_username and k.sasl_password):
        raise ConfigError(f"[kafka] security_protocol = {k.security_protocol} needs sasl_username and "
                          "sasl_password (MCRECALL_KAFKA_SASL_PASSWORD keeps it out of the file)")
    if not sasl and (k.sasl_username or k.sasl_password):
        raise ConfigError(f"[kafka] sasl_username/sasl_password are set but security_protocol is "
                          f"{k.security_protocol}: they would not be used (SASL_SSL or SASL_PLAINTEXT?)")
    files = [n for n in ("ssl_cafile", "ssl_certfile", "ssl_keyfile") if getattr(k, n)]
    if files and not tls:
        raise ConfigError(f"[kafka] {', '.join(files)} set but security_protocol is "
                          f"{k.security_protocol}: they would not be used (SSL or SASL_SSL?)")
    if k.ssl_keyfile and not k.ssl_certfile:
        raise ConfigError("[kafka] ssl_keyfile is set without ssl_certfile")


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
        except (OSError, UnicodeDecodeError) as e:  # a directory, no permission, not UTF-8
            raise ConfigError(f"config file {p} cannot be read: {e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {p} is not valid TOML: {e}") from None
        cfg = _apply(cfg, data, origin=str(p), typed=True)
        cfg = replace(cfg, source=str(p))
    env = _env_overrides(environ)
    if env:
        cfg = _apply(cfg, env, origin="environment")
    return _validate(cfg)


def as_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """The configuration as plain nested dicts (for printing and for version metadata); secrets
    (:data:`SECRET_KEYS`) read ``"<redacted>"`` when set."""
    from dataclasses import asdict

    d = asdict(cfg)
    d.pop("source", None)
    for section, key in SECRET_KEYS:
        if d[section][key]:
            d[section][key] = REDACTED
    return d
