"""Small Kafka helpers shared by the worker, the producer and the tests.

Every Kafka client the project creates takes its authentication and encryption settings from
``[kafka] security_protocol, sasl_*, ssl_*`` through :func:`kafka_security_kwargs` (kafka-python)
or :func:`confluent_security_conf` (librdkafka).
"""

from __future__ import annotations

import os
import ssl
import time
from typing import Any, Mapping

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError


class KafkaUnavailable(RuntimeError):
    """The broker could not be reached."""


# What a client of the project's own local (tansu, plaintext) broker uses, whatever the
# environment says about the production cluster: the demo applies it to its configuration.
PLAINTEXT_OVERRIDES = {"security_protocol": "PLAINTEXT", "sasl_username": "", "sasl_password": "",
                       "ssl_cafile": "", "ssl_certfile": "", "ssl_keyfile": ""}


def _kafka_section(cfg):
    return getattr(cfg, "kafka", cfg)  # a Config or its KafkaConfig


def check_tls_files(cfg) -> None:
    """Raise ConfigError (one line) unless the configured PEM files load.

    kafka-python reads them only inside its network loop, where a missing or malformed file
    becomes an endless "unable to bootstrap"; loading them here names the file instead.
    """
    from mcrecall.core.config import ConfigError

    k = _kafka_section(cfg)
    if not k.security_protocol.endswith("SSL"):
        return
    for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(k, key)
        if path and not (os.path.isfile(path) and os.access(path, os.R_OK)):
            raise ConfigError(f"[kafka] {key} {path}: not a readable file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if k.ssl_cafile:
            ctx.load_verify_locations(cafile=k.ssl_cafile)
    except (ssl.SSLError, ValueError) as e:
        raise ConfigError(f"[kafka] ssl_cafile {k.ssl_cafile}: not a PEM CA bundle ({e})") from None
    try:
        if k.ssl_certfile:
            # a callback, so an encrypted key fails here instead of prompting on the terminal
            ctx.load_cert_chain(k.ssl_certfile, k.ssl_keyfile or None, password=lambda: b"")
    except (ssl.SSLError, ValueError) as e:
        raise ConfigError(f"[kafka] ssl_certfile {k.ssl_certfile} / ssl_keyfile {k.ssl_keyfile or '-'}: "
                          f"not a PEM certificate with its unencrypted private key ({e})") from None


def kafka_security_kwargs(cfg) -> dict[str, Any]:
    """Keyword arguments for every kafka-python client (KafkaConsumer, KafkaProducer,
    KafkaAdminClient) from ``[kafka] security_protocol, sasl_*, ssl_*``.

    Parameters
    ----------
    cfg : core.config.Config (or its ``kafka`` section).

    Raises
    ------
    core.config.ConfigError : a configured certificate or key file does not load.
    """
    k = _kafka_section(cfg)
    check_tls_files(k)
    kw: dict[str, Any] = {"security_protocol": k.security_protocol}
    if k.security_protocol.startswith("SASL_"):
        kw.update(sasl_mechanism=k.sasl_mechanism, sasl_plain_username=k.sasl_username,
                  sasl_plain_password=k.sasl_password)
    if k.security_protocol.endswith("SSL"):
        kw["ssl_check_hostname"] = True
        for ours, theirs in (("ssl_cafile", "ssl_cafile"), ("ssl_certfile", "ssl_certfile"),
                             ("ssl_keyfile", "ssl_keyfile")):
            if getattr(k, ours):
                kw[theirs] = getattr(k, ours)
    return kw


def confluent_security_conf(cfg) -> dict[str, str]:
    """The same settings as :func:`kafka_security_kwargs`, under librdkafka's property names
    (confluent-kafka ``Consumer`` / ``Producer`` / ``AdminClient`` configuration)."""
    k = _kafka_section(cfg)
    check_tls_files(k)
    conf = {"security.protocol": k.security_protocol}
    if k.security_protocol.startswith("SASL_"):
        conf.update({"sasl.mechanism": k.sasl_mechanism, "sasl.username": k.sasl_username,
                     "sasl.password": k.sasl_password})
    if k.security_protocol.endswith("SSL"):
        for ours, theirs in (("ssl_cafile", "ssl.ca.location"), ("ssl_certfile", "ssl.certificate.location"),
                             ("ssl_keyfile", "ssl.key.location")):
            if getattr(k, ours):
                conf[theirs] = getattr(k, ours)
    return conf


def dlq_topic(topic: str) -> str:
    return f"{topic}.dlq"


def admin_client(bootstrap: str, timeout_s: float = 10.0,
                 security: Mapping[str, Any] | None = None) -> KafkaAdminClient:
    """An admin client; ``security``: :func:`kafka_security_kwargs` of the configuration."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            # bounded by our deadline (kafka-python's own default waits 30 s per attempt)
            bounded = {"bootstrap_timeout_ms": max(1000, int((deadline - time.monotonic()) * 1000))}
            if "bootstrap_timeout_ms" not in KafkaAdminClient.DEFAULT_CONFIG:  # kafka-python < 3
                bounded = {}
            return KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000,
                                    **bounded, **(security or {}))
        except (KafkaError, OSError) as e:
            if time.monotonic() > deadline:
                protocol = (security or {}).get("security_protocol", "PLAINTEXT")
                hint = "" if protocol == "PLAINTEXT" else (
                    f" (security_protocol {protocol}: check the credentials / certificates too)")
                raise KafkaUnavailable(f"cannot reach Kafka at {bootstrap}: {e}{hint}") from None
            time.sleep(0.5)


def ensure_topic(bootstrap: str, topic: str, partitions: int, timeout_s: float = 10.0,
                 security: Mapping[str, Any] | None = None) -> bool:
    """Create ``topic`` (and its ``.dlq``) if missing; return True if the topic was created."""
    admin = admin_client(bootstrap, timeout_s, security)
    try:
        existing = set(admin.list_topics())
        created = False
        wanted = [(topic, partitions), (dlq_topic(topic), 1)]
        new = [NewTopic(t, num_partitions=n, replication_factor=1) for t, n in wanted if t not in existing]
        if new:
            try:
                admin.create_topics(new)
                created = topic not in existing
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        admin.close()
