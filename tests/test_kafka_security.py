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
import struct
import subprocess
import threading
import time
import uuid

import pytest
from eventlib import expected_scores, random_events, store_scores

from mcrecall.core.config import ConfigError, load_config
from mcrecall.ingest.broker import free_port, port_open, tansu_binary
from mcrecall.ingest.kafka_io import admin_client, confluent_security_conf, ensure_topic, kafka_security_kwargs
from mcrecall.ingest.produce import produce_lines
from mcrecall.ingest.store import TripleStore
from mcrecall.ingest.worker import IngestWorker

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

# a Kafka-protocol broker per test, subprocesses, group joins: the slow lane
pytestmark = pytest.mark.slow


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


# ---------------------------------------------------------------- tansu behind a relay
def _recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def _read_frame(sock):
    size = struct.unpack(">i", _recv_exact(sock, 4))[0]
    return _recv_exact(sock, size)


def _uvarint(n):
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def _read_uvarint(buf, pos):
    n = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, pos


class Relay:
    """A Kafka-protocol relay on 127.0.0.1:port in front of tansu.

    ``tls``: accept TLS only, with a client certificate signed by the test CA (mutual TLS).
    ``sasl``: (user, password): answer SaslHandshake / SaslAuthenticate itself (mechanism PLAIN,
    as a Kafka broker does) and relay nothing but ApiVersions before a client authenticated.
    """

    SASL_HANDSHAKE, SASL_AUTHENTICATE, API_VERSIONS = 17, 36, 18

    def __init__(self, port, upstream_port, pki, *, tls=False, sasl=None):
        self.ctx = None
        if tls:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(pki["server_cert"], pki["server_key"])
            self.ctx.load_verify_locations(pki["ca"])
            self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.sasl = sasl
        self.upstream = ("127.0.0.1", upstream_port)
        self.sock = socket.create_server(("127.0.0.1", port))
        self.bootstrap = f"127.0.0.1:{port}"
        self.handshakes = self.failed_handshakes = 0
        self.logins: list[tuple[str, bool]] = []  # (user, accepted)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, client):
        if self.ctx is not None:
            try:
                client = self.ctx.wrap_socket(client, server_side=True)
            except (ssl.SSLError, OSError):
                self.failed_handshakes += 1
                client.close()
                return
            self.handshakes += 1
        up = socket.create_connection(self.upstream)
        try:
            if self.sasl is not None and not self._authenticate(client, up):
                raise ConnectionError("not authenticated")
        except (ConnectionError, OSError, struct.error, IndexError):
            client.close()
            up.close()
            return
        for a, b in ((client, up), (up, client)):
            threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _authenticate(self, client, up) -> bool:
        while True:
            frame = _read_frame(client)
            api_key, version, corr = struct.unpack(">hhi", frame[:8])
            if api_key == self.API_VERSIONS:  # before authentication only this reaches tansu
                up.sendall(struct.pack(">i", len(frame)) + frame)
                resp = _read_frame(up)
                client.sendall(struct.pack(">i", len(resp)) + resp)
            elif api_key == self.SASL_HANDSHAKE:
                mech = b"PLAIN"
                body = struct.pack(">hi", 0, 1) + struct.pack(">h", len(mech)) + mech
                self._reply(client, corr, body)
            elif api_key == self.SASL_AUTHENTICATE:
                return self._plain(client, frame, version, corr)
            else:
                return False

    def _plain(self, client, frame, version, corr) -> bool:
        pos = 8
        cid_len = struct.unpack(">h", frame[pos:pos + 2])[0]
        pos += 2 + max(cid_len, 0)
        if version >= 2:  # flexible: header tagged fields, compact bytes
            _, pos = _read_uvarint(frame, pos)
            n, pos = _read_uvarint(frame, pos)
            token = frame[pos:pos + n - 1]
        else:
            n = struct.unpack(">i", frame[pos:pos + 4])[0]
            token = frame[pos + 4:pos + 4 + n]
        _authzid, user, password = token.split(b"\0", 2)
        ok = (user.decode("utf-8"), password.decode("utf-8")) == self.sasl
        self.logins.append((user.decode("utf-8", "replace"), ok))
        err, msg = (0, None) if ok else (58, b"Authentication failed: invalid username or password")
        if version >= 2:
            body = struct.pack(">h", err) + (_uvarint(len(msg) + 1) + msg if msg else _uvarint(0))
            body += _uvarint(1) + struct.pack(">q", 0) + _uvarint(0)
            self._reply(client, corr, body, flexible=True)
        else:
            body = struct.pack(">h", err) + (struct.pack(">h", len(msg)) + msg if msg else struct.pack(">h", -1))
            body += struct.pack(">i", 0) + (struct.pack(">q", 0) if version >= 1 else b"")
            self._reply(client, corr, body)
        return ok

    @staticmethod
    def _reply(client, corr, body, flexible=False):
        head = struct.pack(">i", corr) + (_uvarint(0) if flexible else b"")
        client.sendall(struct.pack(">i", len(head) + len(body)) + head + body)

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


SASL_USER, SASL_PASSWORD = "ingest", "pa'ss\"wo\\rd é\t$(x)"


@pytest.fixture(scope="module")
def relays(pki, tmp_path_factory):
    """Relays to one real Kafka-protocol broker: ``tls`` (mutual TLS only), ``sasl_ssl`` (TLS and
    SASL/PLAIN), ``sasl`` (SASL/PLAIN over plaintext). tansu advertises the relay a client came
    through, so each relay gets its own tansu process."""
    procs, out = [], {}
    log = open(tmp_path_factory.mktemp("relayed-broker") / "tansu.log", "wb")
    try:
        for name, tls, sasl in (("tls", True, None), ("sasl_ssl", True, (SASL_USER, SASL_PASSWORD)),
                                ("sasl", False, (SASL_USER, SASL_PASSWORD))):
            relay_port, broker_port = free_port(), free_port()
            procs.append(subprocess.Popen(
                [str(tansu_binary()), "broker", "--listener-url", f"tcp://127.0.0.1:{broker_port}",
                 # clients must come back through the relay for every broker connection
                 "--advertised-listener-url", f"tcp://127.0.0.1:{relay_port}",
                 "--storage-engine", "memory://tansu/"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True))
            deadline = time.monotonic() + 30
            while not port_open("127.0.0.1", broker_port):
                assert procs[-1].poll() is None and time.monotonic() < deadline, "tansu did not start"
                time.sleep(0.1)
            out[name] = Relay(relay_port, broker_port, pki, tls=tls, sasl=sasl)
        yield out
    finally:
        for relay in out.values():
            relay.close()
        for proc in procs:  # memory storage: nothing to flush
            proc.kill()
            proc.wait(10)
        log.close()


@pytest.fixture(scope="module")
def tls_bootstrap(relays):
    return relays["tls"]


def _tls_cfg(bootstrap, pki, data_dir, topic, **kafka):
    tls = {"security_protocol": "SSL", "ssl_cafile": pki["ca"], "ssl_certfile": pki["client_cert"],
           "ssl_keyfile": pki["client_key"]}
    return load_config(environ={}).with_overrides(
        kafka={"bootstrap_servers": bootstrap, "topic": topic, "group_id": f"g-{topic}",
               "session_timeout_ms": 6000, **{**tls, **kafka}},
        store={"data_dir": str(data_dir)})


# ---------------------------------------------------------------- tests
def _security(relay_name, pki, **extra):
    tls = {"ssl_cafile": pki["ca"], "ssl_certfile": pki["client_cert"], "ssl_keyfile": pki["client_key"]}
    sasl = {"sasl_mechanism": "PLAIN", "sasl_username": SASL_USER, "sasl_password": SASL_PASSWORD}
    return {**{"tls": {"security_protocol": "SSL", **tls},
               "sasl_ssl": {"security_protocol": "SASL_SSL", **tls, **sasl},
               "sasl": {"security_protocol": "SASL_PLAINTEXT", **sasl}}[relay_name], **extra}


def _cfg(relay, data_dir, topic, security):
    return load_config(environ={}).with_overrides(
        kafka={"bootstrap_servers": relay.bootstrap, "topic": topic, "group_id": f"g-{topic}",
               "session_timeout_ms": 6000, **security},
        store={"data_dir": str(data_dir)})


def _tls_cfg(bootstrap, pki, data_dir, topic, **kafka):
    class _R:
        pass
    r = _R()
    r.bootstrap = bootstrap
    return _cfg(r, data_dir, topic, _security("tls", pki, **kafka))


@pytest.mark.kafka
@pytest.mark.parametrize("relay_name", ["tls", "sasl_ssl", "sasl"])
def test_produce_admin_worker_and_dlq_producer_work_through_an_authenticating_broker(
        relays, pki, tmp_path, relay_name):
    relay = relays[relay_name]
    topic = f"sec-{uuid.uuid4().hex[:8]}"
    security = _security(relay_name, pki)
    cfg = _cfg(relay, tmp_path / "data", topic, security)
    lines = random_events(300, 20, 20, seed=3) + [b"not json"]
    stats = produce_lines(lines, cfg, validate=False)  # admin (topic creation) + producer
    assert stats.sent == len(lines)

    worker = IngestWorker(cfg, progress_every_s=60)
    thread = threading.Thread(target=worker.run, kwargs={"until_idle": 3.0}, daemon=True)
    thread.start()
    thread.join(120)
    if thread.is_alive():  # e.g. a client without the settings never gets its partitions
        worker.stop()
        thread.join(30)
        pytest.fail(f"the worker did not consume the topic through the {relay_name} relay within 120 s")
    store = TripleStore(cfg.data_dir, readonly=True)
    assert store_scores(store) == expected_scores(lines[:-1])
    assert store.counts()["bad_events"] == 1  # went through the DLQ producer, secured too

    admin = admin_client(cfg.kafka.bootstrap_servers, security=kafka_security_kwargs(cfg))
    try:
        assert {topic, f"{topic}.dlq"} <= set(admin.list_topics())
        clients = {"consumer": worker.consumer, "dlq producer": worker.producer, "admin": admin}
        for name, client in clients.items():  # the real clients' own configuration
            c = client.config
            assert c["security_protocol"] == security["security_protocol"], name
            if "ssl_cafile" in security:
                assert (c["ssl_cafile"], c["ssl_certfile"], c["ssl_keyfile"], c["ssl_check_hostname"]) == (
                    pki["ca"], pki["client_cert"], pki["client_key"], True), name
            if "sasl_username" in security:
                assert (c["sasl_mechanism"], c["sasl_plain_username"], c["sasl_plain_password"]) == (
                    "PLAIN", SASL_USER, SASL_PASSWORD), name
    finally:
        admin.close()
    if relay.ctx is not None:
        assert relay.handshakes > 0
    if relay.sasl is not None:
        assert relay.logins and all(ok for _, ok in relay.logins), relay.logins


@pytest.mark.kafka
def test_a_broker_certificate_from_another_ca_is_refused(tls_bootstrap, pki, tmp_path):
    cfg = _tls_cfg(tls_bootstrap.bootstrap, pki, tmp_path / "data", "never", ssl_cafile=pki["other_ca"])
    before = tls_bootstrap.failed_handshakes
    with pytest.raises(RuntimeError, match="cannot reach Kafka"):
        ensure_topic(cfg.kafka.bootstrap_servers, "never", 1, timeout_s=1,
                     security=kafka_security_kwargs(cfg))
    assert tls_bootstrap.failed_handshakes > before  # the client did try TLS, and refused


@pytest.mark.kafka
def test_a_wrong_sasl_password_is_refused_and_never_shown(relays, pki, tmp_path):
    relay = relays["sasl"]
    wrong = "not-the-password-" + uuid.uuid4().hex
    cfg = _cfg(relay, tmp_path / "data", "never", _security("sasl", pki, sasl_password=wrong))
    n = len(relay.logins)
    with pytest.raises(RuntimeError, match="cannot reach Kafka") as e:
        ensure_topic(cfg.kafka.bootstrap_servers, "never", 1, timeout_s=1,
                     security=kafka_security_kwargs(cfg))
    assert wrong not in str(e.value)
    assert relay.logins[n:] and not any(ok for _, ok in relay.logins[n:])  # it did try, as "ingest"
    assert {user for user, _ in relay.logins[n:]} == {SASL_USER}


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


@pytest.mark.kafka
def test_the_command_line_over_sasl_never_shows_the_password_even_in_debug_logs(relays, pki, tmp_path):
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    relay = relays["sasl"]
    events = tmp_path / "e.jsonl"
    events.write_bytes(b"\n".join(random_events(50, 5, 5, seed=1)) + b"\n")
    env = dict(os.environ, PYTHONPATH=str(root), MCRECALL_KAFKA_BOOTSTRAP_SERVERS=relay.bootstrap,
               MCRECALL_KAFKA_TOPIC=f"cli-{uuid.uuid4().hex[:8]}", MCRECALL_STORE_DATA_DIR=str(tmp_path / "d"),
               **{f"MCRECALL_KAFKA_{k.upper()}": v for k, v in _security("sasl", pki).items()})
    p = subprocess.run([sys.executable, "-m", "mcrecall", "-vv", "produce", str(events)], env=env,
                       capture_output=True, text=True, timeout=120, cwd=root)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "sent 50 events" in p.stdout
    assert "sasl_plain_password" in p.stderr  # kafka-python did log its configuration ...
    for shown in (SASL_PASSWORD, repr(SASL_PASSWORD)[1:-1], "pa'ss", "pa\\'ss"):
        assert shown not in p.stdout + p.stderr  # ... without the password, in any spelling
    env["MCRECALL_KAFKA_SASL_PASSWORD"] = "wrong-" + SASL_PASSWORD
    p = subprocess.run([sys.executable, "-m", "mcrecall", "produce", str(events)], env=env,
                       capture_output=True, text=True, timeout=120, cwd=root)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "check the credentials" in p.stderr, p.stderr
    assert "pa'ss" not in p.stderr


def test_the_local_broker_overrides_clear_every_production_security_setting(pki):
    from mcrecall.ingest.kafka_io import PLAINTEXT_OVERRIDES

    cfg = load_config(environ={k: v for k, v in {
        f"MCRECALL_KAFKA_{k.upper()}": v for k, v in _security("sasl_ssl", pki).items()}.items()})
    local = cfg.with_overrides(kafka=PLAINTEXT_OVERRIDES)  # what the demo does for its own broker
    assert kafka_security_kwargs(local) == {"security_protocol": "PLAINTEXT"}
    # and the same through the environment, as the demo hands it to its worker process
    env = {f"MCRECALL_KAFKA_{k.upper()}": v for k, v in _security("sasl_ssl", pki).items()}
    env.update({f"MCRECALL_KAFKA_{k.upper()}": v for k, v in PLAINTEXT_OVERRIDES.items()})
    assert kafka_security_kwargs(load_config(environ=env)) == {"security_protocol": "PLAINTEXT"}


@pytest.mark.kafka
@pytest.mark.parametrize("relay_name", ["tls", "sasl_ssl", "sasl"])
def test_the_confluent_worker_and_dlq_producer_work_through_an_authenticating_broker(
        relays, pki, tmp_path, relay_name):
    pytest.importorskip("confluent_kafka", reason="confluent-kafka (mcrecall[fast]) is not installed")
    relay = relays[relay_name]
    topic = f"secc-{uuid.uuid4().hex[:8]}"
    security = _security(relay_name, pki)
    cfg = _cfg(relay, tmp_path / "data", topic, {**security, "client": "confluent"})
    lines = random_events(300, 20, 20, seed=3) + [b"not json"]
    assert produce_lines(lines, cfg, validate=False).sent == len(lines)
    logins_before = len(relay.logins) if relay.sasl is not None else 0

    worker = IngestWorker(cfg, progress_every_s=60)
    thread = threading.Thread(target=worker.run, kwargs={"until_idle": 3.0}, daemon=True)
    thread.start()
    thread.join(120)
    if thread.is_alive():
        worker.stop()
        thread.join(30)
        pytest.fail(f"the confluent worker did not consume the topic through the {relay_name} relay")
    store = TripleStore(cfg.data_dir, readonly=True)
    assert store_scores(store) == expected_scores(lines[:-1])
    assert store.counts()["bad_events"] == 1  # the dead letter went through the secured producer
    for name, client in {"consumer": worker.consumer, "dlq producer": worker.producer}.items():
        c = client.config  # librdkafka's property names
        assert c["security.protocol"] == security["security_protocol"], name
        if "ssl_cafile" in security:
            assert (c["ssl.ca.location"], c["ssl.certificate.location"], c["ssl.key.location"]) == (
                pki["ca"], pki["client_cert"], pki["client_key"]), name
        if "sasl_username" in security:
            assert (c["sasl.mechanism"], c["sasl.username"], c["sasl.password"]) == (
                "PLAIN", SASL_USER, SASL_PASSWORD), name
    if relay.sasl is not None:
        new_logins = relay.logins[logins_before:]  # (earlier tests here log in with wrong passwords)
        assert new_logins and all(ok for _, ok in new_logins), new_logins
