"""[kafka] security settings reach every Kafka client, and TLS works against a real broker.

tansu 0.6.0 (the local broker) cannot serve TLS itself (its --cert and --key flags exclude each
other) and keeps SASL/SCRAM credentials in its storage engine, which the memory engine cannot be
given once authentication is required. So TLS is tested for real through a TLS-terminating
relay in front of tansu that requires a client certificate (mutual TLS, Python's ssl module):
the clients verify the broker's certificate against ``ssl_cafile`` and present
``ssl_certfile``/``ssl_keyfile``. SASL is tested as far as the clients' own configuration.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import subprocess
import threading
import time
import uuid

import pytest

from ingest.broker import free_port, port_open, tansu_binary
from ingest.kafka_io import (admin_client, confluent_security_conf, ensure_topic,
                             kafka_security_kwargs)
from ingest.produce import produce_lines
from ingest.store import TripleStore
from ingest.worker import IngestWorker
from mcrecall.config import ConfigError, load_config
from eventlib import expected_scores, random_events, store_scores

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402


# ---------------------------------------------------------------- certificates (a throwaway CA)
def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject, issuer, key, issuer_key, *, ca=False, server=False):
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write(path, cert=None, key=None):
    data = b""
    if cert is not None:
        data += cert.public_bytes(serialization.Encoding.PEM)
    if key is not None:
        data += key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    path.write_bytes(data)
    return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca_key, other_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test CA", "test CA", ca_key, ca_key, ca=True)
    other_ca = _cert("other CA", "other CA", other_key, other_key, ca=True)
    srv_key, cli_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    return {
        "ca": _write(d / "ca.pem", ca),
        "other_ca": _write(d / "other-ca.pem", other_ca),
        "server_cert": _write(d / "server.pem", _cert("localhost", "test CA", srv_key, ca_key, server=True)),
        "server_key": _write(d / "server.key", key=srv_key),
        "client_cert": _write(d / "client.pem", _cert("mcrecall", "test CA", cli_key, ca_key)),
        "client_key": _write(d / "client.key", key=cli_key),
    }


# ---------------------------------------------------------------- tansu behind a mutual-TLS relay
class TlsRelay:
    """Accepts TLS on 127.0.0.1:port (client certificate required) and relays bytes to tansu."""

    def __init__(self, port, upstream_port, pki):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(pki["server_cert"], pki["server_key"])
        self.ctx.load_verify_locations(pki["ca"])
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.upstream = ("127.0.0.1", upstream_port)
        self.sock = socket.create_server(("127.0.0.1", port))
        self.handshakes = 0
        self.failed_handshakes = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw):
        try:
            tls = self.ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            self.failed_handshakes += 1
            raw.close()
            return
        self.handshakes += 1
        up = socket.create_connection(self.upstream)
        for a, b in ((tls, up), (up, tls)):
            threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self):
        self.sock.close()


@pytest.fixture(scope="module")
def tls_bootstrap(pki, tmp_path_factory):
    """``127.0.0.1:PORT`` of a real Kafka-protocol broker reachable only through mutual TLS."""
    relay_port, broker_port = free_port(), free_port()
    log = open(tmp_path_factory.mktemp("tls-broker") / "tansu.log", "wb")
    proc = subprocess.Popen(
        [str(tansu_binary()), "broker", "--listener-url", f"tcp://127.0.0.1:{broker_port}",
         # clients must come back through the relay for every broker connection
         "--advertised-listener-url", f"tcp://127.0.0.1:{relay_port}",
         "--storage-engine", "memory://tansu/"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    relay = None
    try:
        deadline = time.monotonic() + 30
        while not port_open("127.0.0.1", broker_port):
            assert proc.poll() is None and time.monotonic() < deadline, "tansu did not start"
            time.sleep(0.1)
        relay = TlsRelay(relay_port, broker_port, pki)
        relay.bootstrap = f"127.0.0.1:{relay_port}"
        yield relay
    finally:
        if relay is not None:
            relay.close()
        proc.terminate()
        proc.wait(10)
        log.close()


def _tls_cfg(bootstrap, pki, data_dir, topic, **kafka):
    tls = {"security_protocol": "SSL", "ssl_cafile": pki["ca"], "ssl_certfile": pki["client_cert"],
           "ssl_keyfile": pki["client_key"]}
    return load_config(environ={}).with_overrides(
        kafka={"bootstrap_servers": bootstrap, "topic": topic, "group_id": f"g-{topic}",
               "session_timeout_ms": 6000, **{**tls, **kafka}},
        store={"data_dir": str(data_dir)})


# ---------------------------------------------------------------- tests
@pytest.mark.kafka
def test_produce_admin_worker_and_dlq_producer_work_over_mutual_tls(tls_bootstrap, pki, tmp_path):
    topic = f"tls-{uuid.uuid4().hex[:8]}"
    cfg = _tls_cfg(tls_bootstrap.bootstrap, pki, tmp_path / "data", topic)
    lines = random_events(300, 20, 20, seed=3) + [b"not json"]
    stats = produce_lines(lines, cfg, validate=False)  # admin (topic creation) + producer
    assert stats.sent == len(lines)

    worker = IngestWorker(cfg, progress_every_s=60)
    thread = threading.Thread(target=worker.run, kwargs={"until_idle": 3.0}, daemon=True)
    thread.start()
    thread.join(120)
    if thread.is_alive():  # e.g. a client without the TLS settings never gets its partitions
        worker.stop()
        thread.join(30)
        pytest.fail("the worker did not consume the topic over TLS within 120 s")
    store = TripleStore(cfg.data_dir, readonly=True)
    assert store_scores(store) == expected_scores(lines[:-1])
    assert store.counts()["bad_events"] == 1  # went through the DLQ producer, over TLS too
    for client in (worker.consumer, worker.producer):
        c = client.config
        assert (c["security_protocol"], c["ssl_cafile"], c["ssl_certfile"], c["ssl_keyfile"]) == (
            "SSL", pki["ca"], pki["client_cert"], pki["client_key"]), type(client).__name__
        assert c["ssl_check_hostname"] is True
    admin = admin_client(cfg.kafka.bootstrap_servers, security=kafka_security_kwargs(cfg))
    try:
        assert admin.config["ssl_certfile"] == pki["client_cert"]
        assert {topic, f"{topic}.dlq"} <= set(admin.list_topics())
    finally:
        admin.close()
    assert tls_bootstrap.handshakes > 0


@pytest.mark.kafka
def test_a_broker_certificate_from_another_ca_is_refused(tls_bootstrap, pki, tmp_path):
    cfg = _tls_cfg(tls_bootstrap.bootstrap, pki, tmp_path / "data", "never", ssl_cafile=pki["other_ca"])
    before = tls_bootstrap.failed_handshakes
    with pytest.raises(RuntimeError, match="cannot reach Kafka"):
        ensure_topic(cfg.kafka.bootstrap_servers, "never", 1, timeout_s=1,
                     security=kafka_security_kwargs(cfg))
    assert tls_bootstrap.failed_handshakes > before  # the client did try TLS, and refused


def test_security_settings_map_to_both_clients_names(pki):
    env = {"MCRECALL_KAFKA_SECURITY_PROTOCOL": "sasl_ssl", "MCRECALL_KAFKA_SASL_MECHANISM": "scram-sha-512",
           "MCRECALL_KAFKA_SASL_USERNAME": "ingest", "MCRECALL_KAFKA_SASL_PASSWORD": "pa'ss\"wo\\rd é",
           "MCRECALL_KAFKA_SSL_CAFILE": pki["ca"], "MCRECALL_KAFKA_SSL_CERTFILE": pki["client_cert"],
           "MCRECALL_KAFKA_SSL_KEYFILE": pki["client_key"]}
    cfg = load_config(environ=env)
    assert kafka_security_kwargs(cfg) == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "ingest", "sasl_plain_password": "pa'ss\"wo\\rd é",
        "ssl_check_hostname": True, "ssl_cafile": pki["ca"], "ssl_certfile": pki["client_cert"],
        "ssl_keyfile": pki["client_key"]}
    assert confluent_security_conf(cfg) == {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "ingest",
        "sasl.password": "pa'ss\"wo\\rd é", "ssl.ca.location": pki["ca"],
        "ssl.certificate.location": pki["client_cert"], "ssl.key.location": pki["client_key"]}
    plain = load_config(environ={})
    assert kafka_security_kwargs(plain) == {"security_protocol": "PLAINTEXT"}
    assert confluent_security_conf(plain) == {"security.protocol": "PLAINTEXT"}
    sasl = load_config(environ={k: v for k, v in env.items() if "SSL_" not in k[14:]}
                       | {"MCRECALL_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"})
    assert "ssl_cafile" not in kafka_security_kwargs(sasl) and "ssl.ca.location" not in confluent_security_conf(sasl)


@pytest.mark.parametrize("which,content,msg", [
    ("ssl_cafile", None, "not a readable file"),
    ("ssl_cafile", b"not a certificate", "not a PEM CA bundle"),
    ("ssl_certfile", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "ssl_certfile"),
    ("ssl_keyfile", "wrong key", "ssl_keyfile"),
    ("ssl_keyfile", "encrypted", "ssl_keyfile"),
])
def test_a_certificate_file_that_does_not_load_is_one_clear_line(pki, tmp_path, which, content, msg):
    files = {"ssl_cafile": pki["ca"], "ssl_certfile": pki["client_cert"], "ssl_keyfile": pki["client_key"]}
    path = tmp_path / "f.pem"
    if content == "wrong key":
        path = pki["server_key"]  # a valid key, not the certificate's
    elif content == "encrypted":
        key = ec.generate_private_key(ec.SECP256R1())
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.BestAvailableEncryption(b"pw")))
    elif content is not None:
        path.write_bytes(content)
    files[which] = str(path)
    cfg = load_config(environ={}).with_overrides(kafka={"security_protocol": "SSL", **files})
    with pytest.raises(ConfigError, match=msg) as e:  # an encrypted key must not prompt either
        kafka_security_kwargs(cfg)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=msg):
        confluent_security_conf(cfg)
