import pytest

from mcrecall.core.config import ConfigError, load_config


def test_defaults_then_file_then_environment(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[train]\ndim = 16\n[index]\nmetric = "l2"\nbackend = "faiss"\n')
    cfg = load_config(f, environ={"MCRECALL_TRAIN_DIM": "24", "MCRECALL_KAFKA_BOOTSTRAP_SERVERS": "h:1"})
    assert cfg.train.dim == 24 and cfg.index.metric == "L2" and cfg.index.backend == "faiss"
    assert cfg.kafka.bootstrap_servers == "h:1"
    assert load_config(environ={}).train.dim == 32


@pytest.mark.parametrize("text,msg", [
    ("[trian]\ndim=3\n", "unknown config section"),
    ("[train]\ndims=3\n", "unknown config key"),
    ("[train]\ndim='x'\n", "expected an integer"),
    ("[index]\nmetric='hamming'\n", "metric must be"),
    ("[train\n", "not valid TOML"),
])
def test_bad_config_is_a_clear_error(tmp_path, text, msg):
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=msg):
        load_config(f, environ={})


def test_bad_environment_override():
    with pytest.raises(ConfigError, match="MCRECALL_<SECTION>_<KEY>"):
        load_config(environ={"MCRECALL_NOPE_X": "1"})
    with pytest.raises(ConfigError, match="boolean"):
        load_config(environ={"MCRECALL_SERVE_FOLD_IN": "maybe"})


def test_test_harness_variables_are_not_config():
    cfg = load_config(environ={"MCRECALL_TEST_KAFKA_IMAGE": "x", "MCRECALL_TEST_KAFKA": "docker"})
    assert cfg.kafka == load_config(environ={}).kafka


# ------------------------------------------------------------------ every key validated at load
import dataclasses  # noqa: E402
import math  # noqa: E402

from mcrecall.core import config as config_mod  # noqa: E402
from mcrecall.core.config import CHOICES, RANGES, as_dict  # noqa: E402


def _typed_fields():
    for sec, cls in config_mod._SECTION_TYPES.items():
        for f in dataclasses.fields(cls):
            typ = config_mod._TYPES[f.type] if isinstance(f.type, str) else f.type
            yield sec, f, typ


def test_every_numeric_key_has_a_range_that_holds_its_default():
    numeric = {(sec, f.name) for sec, f, typ in _typed_fields() if typ in (int, float)}
    assert numeric - set(RANGES) == set(), "numeric keys without a range in config.RANGES"
    assert set(RANGES) - numeric == set(), "ranges for keys that do not exist"
    for sec, f, _ in _typed_fields():
        if (sec, f.name) in RANGES:
            assert f.default in RANGES[(sec, f.name)], (sec, f.name)
        if (sec, f.name) in CHOICES:
            assert f.default in CHOICES[(sec, f.name)], (sec, f.name)


def _outside(rng, typ):
    """Values just outside ``rng`` (and NaN for floats)."""
    step = 1 if typ is int else max(abs(rng.lo), abs(rng.hi) if rng.hi != math.inf else 0, 1) * 1e-6
    out = [rng.lo if rng.lo_open else rng.lo - step]
    if rng.hi != math.inf:
        out.append(rng.hi if rng.hi_open else rng.hi + step)
    if typ is float:
        out.append(math.nan)
    return out


@pytest.mark.parametrize("sec,key", sorted(RANGES))
def test_a_value_outside_its_range_is_a_one_line_error_at_load(sec, key):
    rng = RANGES[(sec, key)]
    typ = next(t for s, f, t in _typed_fields() if (s, f.name) == (sec, key))
    for bad in _outside(rng, typ):
        env = {f"MCRECALL_{sec.upper()}_{key.upper()}": str(typ(bad) if not math.isnan(bad) else "nan")}
        with pytest.raises(ConfigError, match=rf"\[{sec}\] {key} .*out of range") as e:
            load_config(environ=env)
        assert "\n" not in str(e.value) and "environment" in str(e.value)
    for good in (rng.lo, rng.hi):
        if good == math.inf or (good == rng.lo and rng.lo_open) or (good == rng.hi and rng.hi_open):
            continue
        cfg = load_config(environ={f"MCRECALL_{sec.upper()}_{key.upper()}": str(typ(good))})
        assert getattr(getattr(cfg, sec), key) == good


@pytest.mark.parametrize("text,msg", [
    ("[kafka]\nsession_timeout_ms = -5\n", r"\[kafka\] session_timeout_ms = -5 \(from .*c.toml\) is out of range"),
    ("[store]\nmap_size_gb = -1\n", r"\[store\] map_size_gb = -1.0 .* is out of range"),
    ("[store]\nmap_size_gb = 1e30\n", "map_size_gb .* out of range"),
    ("[store]\nmap_size_gb = inf\n", "map_size_gb .* out of range"),
    ("[train]\nseed = -1\n", "seed .* out of range"),
    ("[train]\nlr = nan\n", "lr .* out of range"),
    ("[train]\ndim = 100000000000000000000\n", "dim .* out of range"),
    ("[train]\nsimilarity = 'euclid'\n", "similarity must be one of dot, cosine"),
    ("[train]\nobjective = 'mse'\n", "objective must be one of"),
    ("[train]\ndevice = 'tpu'\n", "device must be"),
    ("[kafka]\nsecurity_protocol = 'TLS'\n", "security_protocol must be one of PLAINTEXT, SSL"),
    ("[kafka]\nsasl_mechanism = 'GSSAPI'\n", "sasl_mechanism must be one of"),
    ("[kafka]\nbootstrap_servers = 'kafka'\n", "bootstrap_servers must be host:port"),
    ("[kafka]\ntopic = 'a b'\n", "topic must be"),
    ("[kafka]\ngroup_id = ' '\n", "group_id must not be empty"),
    ("[store]\ndata_dir = ''\n", "data_dir must not be empty"),
    # issue 20 #13: a TOML string for a number was converted silently
    ("[train]\ndim = \"16\"\n", r"\[train\] dim .* expected an integer, got the string '16': write it without quotes"),
    ("[train]\nlr = \"0.1\"\n", "lr .* expected a number, got the string"),
    ("[train]\nwarm_start = \"true\"\n", "warm_start .* expected a boolean, got the string"),
])
def test_bad_values_are_one_line_errors_naming_the_key(tmp_path, text, msg):
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=msg) as e:
        load_config(f, environ={})
    assert "\n" not in str(e.value)


def test_enumerated_values_are_case_insensitive_and_stored_canonically():
    cfg = load_config(environ={"MCRECALL_TRAIN_SIMILARITY": "Cosine", "MCRECALL_INDEX_METRIC": "cosine",
                               "MCRECALL_KAFKA_SECURITY_PROTOCOL": "ssl",
                               "MCRECALL_KAFKA_SASL_MECHANISM": "scram-sha-256"})
    assert (cfg.train.similarity, cfg.index.metric, cfg.kafka.security_protocol, cfg.kafka.sasl_mechanism) == (
        "cosine", "COSINE", "SSL", "SCRAM-SHA-256")


@pytest.mark.parametrize("env,msg", [
    ({"MCRECALL_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs sasl_username and sasl_password"),
    ({"MCRECALL_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "MCRECALL_KAFKA_SASL_USERNAME": "u"},
     "needs sasl_username and sasl_password"),
    ({"MCRECALL_KAFKA_SASL_USERNAME": "u", "MCRECALL_KAFKA_SASL_PASSWORD": "p"}, "would not be used"),
    ({"MCRECALL_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "MCRECALL_KAFKA_SASL_USERNAME": "u",
      "MCRECALL_KAFKA_SASL_PASSWORD": "p", "MCRECALL_KAFKA_SSL_CAFILE": "/ca.pem"}, "ssl_cafile set but"),
    ({"MCRECALL_KAFKA_SECURITY_PROTOCOL": "SSL", "MCRECALL_KAFKA_SSL_KEYFILE": "/k.pem"},
     "ssl_keyfile is set without ssl_certfile"),
])
def test_security_settings_that_would_be_ignored_or_incomplete_are_errors(env, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(environ=env)


def test_the_password_may_come_from_the_environment_and_is_never_shown(tmp_path):
    secret = "s3cr3t-Pa55"
    f = tmp_path / "c.toml"
    f.write_text('[kafka]\nsecurity_protocol = "SASL_SSL"\nsasl_username = "ingest"\n')
    cfg = load_config(f, environ={"MCRECALL_KAFKA_SASL_PASSWORD": secret})
    assert cfg.kafka.sasl_password == secret
    assert secret not in repr(cfg) and secret not in str(cfg)
    assert as_dict(cfg)["kafka"]["sasl_password"] == "<redacted>" and secret not in str(as_dict(cfg))
    f.write_text(f'[kafka]\nsasl_password = ["{secret}"]\n')  # a malformed value: the error hides it
    with pytest.raises(ConfigError) as e:
        load_config(f, environ={})
    assert "sasl_password" in str(e.value) and secret not in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(environ={"MCRECALL_KAFKA_SASL_PASSWORD": secret})  # set, but PLAINTEXT
    assert secret not in str(e.value)


def test_secrets_are_redacted_in_every_log_line():
    import logging

    from mcrecall.core.logs import KeyValueFormatter, redact_in_logs

    secret = "hun'ter2\\ é\t" + "x" * 8
    redact_in_logs(secret)
    # kafka-python logs its whole configuration, and the SASL bytes, at debug level
    for msg, arg in [("Starting KafkaAdminClient with configuration: %s", {"sasl_plain_password": secret}),
                     ("Send: %r", bytearray(b'\x00"user\x00' + secret.encode())),
                     ("auth bytes %r", b"user\x00" + secret.encode())]:
        rec = logging.LogRecord("kafka", logging.DEBUG, __file__, 1, msg, (arg,), None)
        rec.error = f"auth failed for {secret}"
        line = KeyValueFormatter().format(rec)
        assert "hun" not in line and "<redacted>" in line, line


def test_a_config_path_that_cannot_be_read_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path, environ={})  # a directory
    f = tmp_path / "latin1.toml"
    f.write_bytes(b'[kafka]\ntopic = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(f, environ={})
