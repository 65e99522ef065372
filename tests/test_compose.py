"""compose.yaml, Dockerfile and .dockerignore: the production shape stays consistent.

``docker compose config`` validates the file where Docker Compose v2 is installed (the ``docker
compose`` plugin, or a standalone v2 ``docker-compose``); that test alone is skipped elsewhere.
The structural checks need only PyYAML and run everywhere: services and their references,
two ingest replicas in one consumer group, the shared LMDB volume, health checks, and every
``MCRECALL_*`` variable named in compose.yaml being a real key of core/config.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from mcrecall.core.config import ENV_PREFIX, Config, load_config

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose.yaml"

# services that run for good (the rest: one-shot kafka-init, the `tools` profile)
LONG_RUNNING = {"kafka", "etcd", "minio", "milvus", "ingest", "trainer", "refresher", "recall"}
ONE_SHOT = {"kafka-init"}
CREDENTIALS = {"MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "MILVUS_ROOT_PASSWORD"}  # .env.example
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def _yaml():
    # In CI a missing PyYAML is a broken test environment, not a reason to skip.
    if os.environ.get("CI"):
        import yaml
        return yaml
    return pytest.importorskip("yaml", reason="PyYAML is needed (test dependency 'pyyaml')")


@pytest.fixture(scope="module")
def raw() -> str:
    return COMPOSE.read_text(encoding="utf-8")


def _interpolate(value, environ: dict[str, str]):
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default} on every string (``$$`` is a ``$``)."""
    if isinstance(value, dict):
        return {k: _interpolate(v, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, environ) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m):
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3) or ""
        have = environ.get(name)
        if op in (":-", ":?"):
            return have if have else arg
        if op in ("-", "?"):
            return have if have is not None else arg
        if op == ":+":
            return arg if have else ""
        if op == "+":
            return arg if have is not None else ""
        return have or ""

    parts = value.split("$$")
    return "$".join(_VAR.sub(sub, p) for p in parts)


@pytest.fixture(scope="module")
def compose(raw) -> dict:
    """compose.yaml parsed, with every variable at its default (an empty environment)."""
    doc = _yaml().safe_load(raw)
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict)
    return _interpolate(doc, {})


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _command(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def _mounts(service: dict) -> list[tuple[str, str]]:
    out = []
    for v in service.get("volumes") or []:
        if isinstance(v, str):
            src, _, rest = v.partition(":")
            out.append((src, rest.split(":")[0]))
        else:
            out.append((str(v.get("source", "")), str(v["target"])))
    return out


def _depends(service: dict) -> dict[str, str]:
    dep = service.get("depends_on") or {}
    if isinstance(dep, list):
        return {d: "service_started" for d in dep}
    return {k: (v or {}).get("condition", "service_started") for k, v in dep.items()}


REPLICA_PROFILE = "replica"


def _lmdb_users(compose, replica: bool = False) -> dict[str, dict]:
    """The services that open the LMDB data directory (they set MCRECALL_STORE_DATA_DIR): the
    primary's, or (``replica``) those of the ``replica`` profile, which have their own."""
    return {n: s for n, s in compose["services"].items() if "MCRECALL_STORE_DATA_DIR" in _env(s)
            and (REPLICA_PROFILE in (s.get("profiles") or [])) == replica}


# ---------------------------------------------------------------------------------- docker compose
def _compose_cli() -> list[str] | None:
    def works(cmd):
        try:
            p = subprocess.run([*cmd, "version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return p.returncode == 0 and re.search(r"\bv?2\.\d+", p.stdout) is not None

    if shutil.which("docker") and works(["docker", "compose"]):
        return ["docker", "compose"]
    for cand in (shutil.which("docker-compose"), str(Path(sys.executable).with_name("docker-compose"))):
        if cand and Path(cand).exists() and works([cand]):
            return [cand]
    return None


def test_docker_compose_config_validates():
    cli = _compose_cli()
    if cli is None:
        pytest.skip("Docker Compose v2 is not installed (neither `docker compose` nor a v2 "
                    "`docker-compose`): `docker compose config` not run")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(ENV_PREFIX) and not k.startswith("COMPOSE_") and k not in CREDENTIALS}
    base = [*cli, "--project-directory", str(ROOT), "-f", str(COMPOSE)]
    # without credentials compose refuses, naming the missing variable
    p = subprocess.run([*base, "config", "--quiet"], capture_output=True, text=True, env=env, timeout=120)
    out = p.stderr + p.stdout
    assert p.returncode != 0 and ("MINIO_ACCESS_KEY" in out or "MILVUS_ROOT_PASSWORD" in out), out
    env.update(_example_credentials())
    p = subprocess.run([*base, "config", "--quiet"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([*base, "--profile", "tools", "config", "--format", "json"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    model = json.loads(p.stdout)
    svcs = model["services"]
    assert LONG_RUNNING | ONE_SHOT | {"mcrecall"} <= set(svcs)
    assert svcs["ingest"]["deploy"]["replicas"] == 2
    # a bind mount for the data directory, as docs/operations.md describes
    p = subprocess.run([*base, "config", "--format", "json"], capture_output=True, text=True,
                       env={**env, "RECALL_DATA_DIR": "/srv/mcrecall"}, timeout=120)
    assert p.returncode == 0, p.stderr
    vol = [v for v in json.loads(p.stdout)["services"]["trainer"]["volumes"] if v["target"] == "/data"]
    assert vol and vol[0]["type"] == "bind" and vol[0]["source"] == "/srv/mcrecall"


def _example_credentials() -> dict[str, str]:
    lines = (ROOT / ".env.example").read_text(encoding="utf-8").splitlines()
    return dict(ln.split("=", 1) for ln in lines if ln.strip() and not ln.startswith("#"))


def test_credentials_come_from_the_environment(compose, raw):
    """No MinIO/Milvus credential is written in compose.yaml; .env.example names each one."""
    assert "minioadmin" not in raw and "Milvus" not in re.findall(r"PASSWORD: (\S+)", raw)
    assert set(_example_credentials()) == CREDENTIALS
    svcs = compose["services"]
    env_of = {name: _env(s) for name, s in svcs.items()}
    assert env_of["minio"]["MINIO_ROOT_USER"].startswith("set MINIO_ACCESS_KEY")  # unset -> the error text
    filled = _interpolate(_yaml().safe_load(raw), _example_credentials())
    m, mi = _env(filled["services"]["milvus"]), _env(filled["services"]["minio"])
    assert m["MINIO_ACCESS_KEY_ID"] == mi["MINIO_ROOT_USER"] == _example_credentials()["MINIO_ACCESS_KEY"]
    assert m["MINIO_SECRET_ACCESS_KEY"] == mi["MINIO_ROOT_PASSWORD"]
    assert m["COMMON_SECURITY_AUTHORIZATION_ENABLED"] == "true"
    for name, s in _lmdb_users(filled).items():
        cfg = load_config(environ=_env(s))
        assert cfg.index.token == "root:" + _example_credentials()["MILVUS_ROOT_PASSWORD"], name
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines() if (ROOT / ".gitignore").exists() else []
    assert ".env" in ignored, ".env holds secrets: keep it out of git"


# ------------------------------------------------------------------------------------- structure
def test_services_images_and_references(compose):
    svcs = compose["services"]
    assert LONG_RUNNING | ONE_SHOT <= set(svcs), sorted(svcs)
    assert svcs["kafka"]["image"].startswith("apache/kafka:")
    assert svcs["milvus"]["image"].startswith("milvusdb/milvus:")
    assert _command(svcs["milvus"])[-2:] == ["run", "standalone"]
    assert {"etcd:2379", "minio:9000"} <= set(_env(svcs["milvus"]).values())
    declared = set(compose.get("volumes") or {})
    for name, s in svcs.items():
        for dep in _depends(s):
            assert dep in svcs, f"{name} depends on unknown service {dep}"
        for src, _target in _mounts(s):
            if src and not src.startswith(("/", ".", "~", "$")):
                assert src in declared, f"{name} mounts undeclared volume {src}"
        net = str(s.get("network_mode", ""))
        if net.startswith("service:"):
            assert net.split(":", 1)[1] in svcs


def test_kafka_is_kraft_single_broker(compose):
    env = _env(compose["services"]["kafka"])
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].count("@") == 1
    assert "INTERNAL://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env["CLUSTER_ID"]), "CLUSTER_ID: base64 of 16 bytes"


def test_built_services_use_the_project_image(compose):
    built = {n: s for n, s in compose["services"].items() if "build" in s}
    assert {"ingest", "trainer", "kafka-init"} <= set(built)
    for name, s in built.items():
        b = s["build"]
        ctx, dockerfile = ((b, "Dockerfile") if isinstance(b, str)
                           else (b.get("context", "."), b.get("dockerfile", "Dockerfile")))
        assert (ROOT / ctx / dockerfile).is_file(), name
        assert s.get("pull_policy") == "build", f"{name} must not pull a registry image named like ours"
        assert s.get("entrypoint") in (None, ["python", "-c"]), name


def test_ingest_two_replicas_in_one_group_and_periodic_trainer(compose):
    svcs = compose["services"]
    ingest = svcs["ingest"]
    assert _command(ingest)[:1] == ["ingest"]
    assert "--until-idle" not in _command(ingest)
    replicas = (ingest.get("deploy") or {}).get("replicas", ingest.get("scale", 1))
    assert replicas == 2
    assert "container_name" not in ingest, "replicas cannot share a fixed container name"
    workers = [s for s in svcs.values() if _command(s)[:1] == ["ingest"]]
    groups = {load_config(environ=_env(s)).kafka.group_id for s in workers}
    topics = {load_config(environ=_env(s)).kafka.topic for s in workers}
    assert len(groups) == 1 and len(topics) == 1, (groups, topics)
    assert load_config(environ=_env(ingest)).kafka.partitions >= replicas
    train = _command(svcs["trainer"])
    assert train[:1] == ["train"] and "--every" in train
    assert train[train.index("--every") + 1] == "10m"


def test_refresher_runs_refresh_every_few_seconds(compose):
    svcs = compose["services"]
    cmd = _command(svcs["refresher"])
    assert cmd[:1] == ["refresh"] and cmd[cmd.index("--every") + 1] == "2s"
    assert _depends(svcs["refresher"]).get("milvus") == "service_healthy"
    assert "build" in svcs["refresher"] and svcs["refresher"].get("pull_policy") == "build"


def test_recall_service_serves_http_on_the_primarys_volume(compose):
    svcs = compose["services"]
    recall = svcs["recall"]
    cmd = _command(recall)
    assert cmd[:1] == ["serve"], cmd
    port = cmd[cmd.index("--port") + 1]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"  # inside the container: the published port
    assert int(cmd[cmd.index("--workers") + 1]) >= 1
    assert [p.rsplit(":", 1)[1] for p in recall["ports"]] == [port]
    assert recall["ports"][0].startswith("127.0.0.1:")
    assert _mounts(recall) == _mounts(svcs["trainer"]), "the primary's data volume"
    assert recall.get("pid") == "host" and "build" in recall
    hc = " ".join(recall["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/readyz" in hc
    assert _depends(recall).get("milvus") == "service_healthy"
    # the ingest workers expose their counters on the compose network
    ingest = _command(svcs["ingest"])
    assert "--metrics-port" in ingest and "ports" not in svcs["ingest"]
    # every python -c health check imports the installed package (mcrecall.*), nothing stale
    for name, s in svcs.items():
        code = " ".join(map(str, (s.get("healthcheck") or {}).get("test") or [])) + " ".join(_command(s))
        assert not re.search(r"\bfrom (core|ingest|plugins|serve|train)[ .]", code), name


def test_lmdb_data_dir_is_one_shared_volume_in_one_pid_namespace(compose):
    users = _lmdb_users(compose)
    assert {"ingest", "trainer", "kafka-init", "refresher", "recall"} <= set(users)
    sources = set()
    for name, s in users.items():
        data_dir = _env(s)["MCRECALL_STORE_DATA_DIR"]
        mounts = dict((t, src) for src, t in _mounts(s))
        assert data_dir in mounts, f"{name}: {data_dir} is not a mounted volume"
        sources.add(mounts[data_dir])
        # LMDB's reader table is keyed by pid: same-pid processes in two pid namespaces clash
        assert s.get("pid") == "host", f"{name} opens LMDB and needs pid: host"
    assert len(sources) == 1, f"the LMDB data dir must be ONE volume, got {sources}"
    (src,) = sources
    assert src in (compose.get("volumes") or {}), "the default data volume is a declared named volume"


def test_every_mcrecall_variable_is_a_config_key(compose, raw):
    known = {s.name: {k.name for k in fields(s.default_factory)} for s in fields(Config)
             if s.name != "source"}
    doc = _yaml().safe_load(raw)
    names: set[str] = set()

    def walk(v):
        if isinstance(v, dict):
            for k, x in v.items():
                walk(k)
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, str):
            names.update(m.group(1) or m.group(4) for m in _VAR.finditer(v.replace("$$", "")))
            names.update(re.findall(r"\b(MCRECALL_[A-Z0-9_]+)\b", v))

    walk(doc)
    for s in compose["services"].values():
        names.update(_env(s))
    mc = sorted(n for n in names if n.startswith(ENV_PREFIX))
    assert mc, "compose.yaml configures mcrecall through MCRECALL_* variables"
    for name in mc:
        if name == "MCRECALL_CONFIG":
            continue
        section, _, key = name[len(ENV_PREFIX):].lower().partition("_")
        assert key in known.get(section, ()), f"{name} is not a key of core/config.py"
    # ... and the values load and validate like the services will load them
    for name, s in _lmdb_users(compose).items():
        cfg = load_config(environ=_env(s))
        assert cfg.index.backend == "milvus", name
        assert cfg.index.uri == "http://milvus:19530", name
        assert cfg.kafka.bootstrap_servers == "kafka:9092", name
        host = cfg.kafka.bootstrap_servers.split(":")[0]
        assert host in compose["services"], name
    # every compose-level variable has a default, except the credentials: those are required
    for v in re.finditer(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?][^}]*)?\}", raw.replace("$$", "")):
        if v.group(1) in CREDENTIALS:
            assert (v.group(2) or "").startswith(":?"), f"${{{v.group(1)}}} must be required, not defaulted"
        else:
            assert v.group(2) and not v.group(2).startswith(":?"), f"${{{v.group(1)}}} has no default"


def test_health_checks_and_start_order(compose):
    svcs = compose["services"]
    for name in LONG_RUNNING:
        hc = svcs[name].get("healthcheck") or {}
        assert hc.get("test") and not hc.get("disable"), f"{name} has no health check"
    for name, s in svcs.items():
        for dep, cond in _depends(s).items():
            if cond == "service_healthy":
                assert (svcs[dep].get("healthcheck") or {}).get("test"), f"{name} waits on {dep}'s health"
            if cond == "service_completed_successfully":
                assert dep in ONE_SHOT, f"{name} waits for {dep} to exit"
    assert _depends(svcs["ingest"]).get("kafka") == "service_healthy"
    assert _depends(svcs["ingest"]).get("kafka-init") == "service_completed_successfully"
    assert _depends(svcs["trainer"]).get("milvus") == "service_healthy"
    assert {"etcd", "minio"} <= set(_depends(svcs["milvus"]))


def test_published_ports_bind_loopback_by_default(compose):
    for name, s in compose["services"].items():
        for port in s.get("ports") or []:
            spec = (port if isinstance(port, str)
                    else f"{port.get('host_ip', '')}:{port.get('published')}:{port['target']}")
            assert spec.startswith("127.0.0.1:"), f"{name} publishes {spec} beyond loopback by default"


def test_dockerfile_and_dockerignore_match_the_project():
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", dockerfile, re.M) or \
        re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.M)
    assert "--index-url" in dockerfile and "download.pytorch.org/whl/cpu" in dockerfile
    pin = re.search(r"TORCH_VERSION=(\S+)", dockerfile).group(1)
    assert pin == "2.13.0"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    from packaging.requirements import Requirement

    torch_req = next(Requirement(d) for d in project["project"]["dependencies"]
                     if Requirement(d).name == "torch")
    assert torch_req.specifier.contains(pin), f"torch=={pin} outside pyproject's {torch_req}"
    assert 'ENTRYPOINT ["mcrecall"]' in dockerfile
    ignore = [ln.strip() for ln in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
              if ln.strip() and not ln.lstrip().startswith("#")]
    assert ignore[0] == "*", "an allowlist .dockerignore: everything out, then what the build needs"
    # every package's folder (package-dir maps mcrecall.core to core/, ...) is in the build context
    for pkg, folder in project["tool"]["setuptools"]["package-dir"].items():
        assert f"!{folder}/" in ignore, f".dockerignore leaves out package {pkg} ({folder}/)"
    for f in ("pyproject.toml", "README.md"):
        assert f"!{f}" in ignore


# ---------------------------------------------------------------------------------- issue 20
def test_the_image_installs_the_tune_and_fast_extras():
    """`mcrecall tune` and `[kafka] client = "confluent"` work in the image."""
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    install = re.search(r'pip install --constraint \S+ "?/src\[([a-z,]+)\]"?', dockerfile)
    assert install, "the project is installed without extras"
    assert {"tune", "fast"} <= set(install.group(1).split(","))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert {"tune", "fast"} <= set(project["project"]["optional-dependencies"])
    assert "import torch" in dockerfile and "optuna" in dockerfile and "confluent_kafka" in dockerfile


def test_inline_python_imports_the_installed_package(compose):
    """The wheel holds one top-level package, mcrecall: `from core...` fails in the image."""
    for name, svc in compose["services"].items():
        texts = [*_command(svc), *[str(t) for t in ((svc.get("healthcheck") or {}).get("test") or [])]]
        for t in texts:
            for m in re.finditer(r"^\s*(?:from|import)\s+([A-Za-z_][\w.]*)", t, re.M):
                top = m.group(1).split(".")[0]
                assert top not in {"core", "ingest", "train", "serve", "plugins"}, (name, m.group(0))


def test_kafka_init_uses_the_kafka_security_settings(compose):
    """Topics are created with the [kafka] security settings, like the workers' clients."""
    code = "\n".join(_command(compose["services"]["kafka-init"]))
    assert "kafka_security_kwargs" in code and "security=kafka_security_kwargs(" in code


def test_the_tested_server_versions_are_named(raw):
    """compose.yaml and docs/operations.md say which server versions the tests run."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    deps = [d for ds in project["project"]["optional-dependencies"].values() for d in ds]
    milvus = next(d for d in deps if d.replace(" ", "").startswith("milvus=="))
    tested = milvus.split("==")[1].split()[0].strip('",')
    lite = next(d for d in project["project"]["dependencies"] + deps if d.startswith("milvus-lite"))
    sys.path.insert(0, str(ROOT / "tests"))
    from fixtures_kafka import DEFAULT_IMAGE

    ops = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    for text in (raw, ops):
        assert f"standalone {tested}" in text, "the tested Milvus server version is not named"
        assert DEFAULT_IMAGE in text
    assert "Tested versions" in ops and lite.split("==")[-1].split(",")[0].lstrip(">=<~") in ops
    image = re.search(r"MILVUS_IMAGE:-milvusdb/milvus:v([\d.]+)", raw).group(1)
    if image != tested:  # an untested default must say so
        assert "NOT run by the tests" in raw


def test_replica_profile_has_its_own_volume_group_and_serve(compose):
    svcs = compose["services"]
    reps = _lmdb_users(compose, replica=True)
    assert {"replica", "replica-recall"} <= set(reps), sorted(reps)
    assert _command(svcs["replica"])[:1] == ["replica"]
    assert _command(svcs["replica-recall"])[:1] == ["serve"]
    primary_src = {dict((t, src) for src, t in _mounts(s))["/data"] for s in _lmdb_users(compose).values()}
    sources = set()
    for name, s in reps.items():
        mounts = dict((t, src) for src, t in _mounts(s))
        sources.add(mounts[_env(s)["MCRECALL_STORE_DATA_DIR"]])
        assert s.get("pid") == "host", f"{name} opens LMDB and needs pid: host"
    assert len(sources) == 1 and not sources & primary_src, (sources, primary_src)
    assert sources <= set(compose.get("volumes") or {})
    # its own consumer group: it must read every event, not share them with the primary's workers
    assert _env(svcs["replica"])["MCRECALL_KAFKA_GROUP_ID"] != _env(svcs["ingest"])["MCRECALL_KAFKA_GROUP_ID"]
    assert (svcs["replica"].get("healthcheck") or {}).get("test")
    # the primary publishes to the model log the replicas read
    assert _env(svcs["trainer"])["MCRECALL_REPLICATION_PUBLISH"] == "true"
    assert _env(svcs["refresher"])["MCRECALL_REPLICATION_PUBLISH"] == "true"
