"""The deployment files in ``deploy/`` against the code they deploy.

Each test catches a mistake that would only show up on a real machine: a file
that does not parse, a ``miyaq`` command or flag that does not exist, a
``MIYAQ_*`` variable no part of miyaq reads (a typo silently ignored), a
node setting with a value the node refuses, or a stop timeout shorter than
the drain it must allow. No containers or systemd are needed.
"""
from __future__ import annotations

import argparse
import configparser
import inspect
import os
import re
import shlex
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

import miyaq.cli.ring_cmd
from miyaq.cli.main import build_parser
from miyaq.config import NodeConfig
from miyaq.gateway.permissions import is_open
from miyaq.security.exposure import exposure_warning
from miyaq.worker.config import WorkerConfig

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
ENV_FILE = DEPLOY / "systemd" / "miyaq.env"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s" / "miyaq.yaml"
SAMPLE_APP = "yourpackage.tasks:app"
VAR = re.compile(r"\bMIYAQ_[A-Z0-9_]+\b")

NODE_VARS = {"MIYAQ_CONFIG"} | {"MIYAQ_" + f.name.upper() for f in fields(NodeConfig)}


def _read_by(module: Any) -> set[str]:
    """The MIYAQ_* names a CLI module reads (they appear in its source as string literals)."""
    return set(re.findall(r"[\"'](MIYAQ_[A-Z0-9_]+)[\"']", inspect.getsource(module)))


WORKER_VARS = {"MIYAQ_" + f.name.upper() for f in fields(WorkerConfig)}
RING_VARS = _read_by(miyaq.cli.ring_cmd)
ALL_VARS = NODE_VARS | WORKER_VARS | RING_VARS
ROLE_VARS = {"node": NODE_VARS, "worker": WORKER_VARS}


# -- commands -------------------------------------------------------------------


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def check_command(argv: list[str], where: str) -> None:
    """``miyaq ARGV`` names real (sub)commands, only their flags, and parses as a whole."""
    parser = build_parser()
    current, path = parser, ["miyaq"]
    for token in argv:
        subs = _subcommands(current)
        if token in subs:
            current, path = subs[token], [*path, token]
        elif not subs or not token.startswith("-"):
            break
    assert len(path) > 1, f"{where}: `miyaq {' '.join(argv)}`: {argv[:1]} is not a miyaq command"
    for token in argv:
        if token.startswith("--"):
            flag = token.split("=", 1)[0]
            assert flag in current._option_string_actions, (
                f"{where}: {flag} is not an option of `{' '.join(path)}`")
    try:
        parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `miyaq {' '.join(argv)}` does not parse")


def unit_sections(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string(path.read_text(), source=str(path))
    return parser


def unit_values(path: Path, key: str) -> list[str]:
    """Every value of ``key`` (systemd allows repeating a key; configparser keeps the last)."""
    return [m.group(1).strip() for m in re.finditer(rf"^{key}=(.*)$", path.read_text(), re.MULTILINE)]


def env_file(path: Path) -> dict[str, str]:
    """KEY=value lines, including commented-out ``#MIYAQ_X=`` examples a user may enable."""
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", line)
        if m and (not line.startswith("#") or m.group(1).startswith("MIYAQ_")):
            out[m.group(1)] = m.group(2)
    return out


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def role(argv: list[str]) -> str:
    return argv[0] if argv and argv[0] in ROLE_VARS else "other"


#: A compose file's ``${VAR:?message}``: a value the operator must export first.
REQUIRED = re.compile(r"^\$\{[A-Z0-9_]+:\?[^}]*\}$")
#: What the operator exports for it (deploy/docker-compose.yml: ``openssl rand -hex 24``).
EXPORTED = "0123456789abcdef" * 3


def check_node_values(values: dict[str, str], where: str) -> None:
    """The node accepts these settings (types, ranges, choices) and starts
    with them: a node bound beyond loopback has keys (issue 9's safe default).
    A required compose variable stands for the value its comment exports."""
    environ = {k: EXPORTED if REQUIRED.match(v) else v for k, v in values.items() if k in NODE_VARS}
    try:
        exposure_warning(NodeConfig.load({}, environ))
    except Exception as exc:  # noqa: BLE001 - the message is the point
        pytest.fail(f"{where}: the node refuses these settings: {exc}")


def duration(text: str | int) -> float:
    """Seconds of a systemd/compose duration (``45``, ``45s``, ``1m``, ``1m30s``)."""
    if isinstance(text, int):
        return float(text)
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)?", str(text)):
        total += float(number) * {"ms": 0.001, "s": 1, "": 1, "m": 60, "h": 3600}[unit]
    return total


# -- systemd --------------------------------------------------------------------


def test_unit_files_parse_and_run_real_commands():
    """Catches: a typo in a section or an ExecStart that runs a command or flag miyaq lacks."""
    assert {p.name for p in UNITS} == {"miyaq-node.service", "miyaq-worker@.service"}
    for path in UNITS:
        sections = unit_sections(path)
        assert {"Unit", "Service", "Install"} <= set(sections.sections()), path.name
        (exec_start,) = unit_values(path, "ExecStart")
        argv = shlex.split(exec_start.replace("%I", SAMPLE_APP).replace("%i", SAMPLE_APP))
        assert Path(argv[0]).name == "miyaq", f"{path.name}: ExecStart runs {argv[0]}"
        check_command(argv[1:], path.name)
        files = unit_values(path, "EnvironmentFile")
        required = [f for f in files if not f.startswith("-")]
        assert [Path(f).name for f in required] == [ENV_FILE.name], f"{path.name} must read {ENV_FILE.name}"
        for value in unit_values(path, "Environment"):
            for name in VAR.findall(value):
                assert name in ALL_VARS, f"{path.name}: {name} is read by no part of miyaq"


def test_env_file_variables_are_real_settings():
    """Catches: a MIYAQ_* name that nothing reads, or a node value the node rejects."""
    values = env_file(ENV_FILE)
    unknown = sorted(k for k in values if k.startswith("MIYAQ_") and k not in ALL_VARS)
    assert not unknown, f"{ENV_FILE.name}: no part of miyaq reads {unknown}"
    assert {"MIYAQ_ZK", "MIYAQ_CLUSTER", "MIYAQ_CONNECT", "MIYAQ_DATA_DIR"} <= set(values)
    check_node_values(values, ENV_FILE.name)


def test_unit_stop_timeouts_cover_the_drain():
    """Catches: systemd killing a node or worker before its SIGTERM drain may end."""
    values = env_file(ENV_FILE)
    drains = {"miyaq-node.service": float(values.get("MIYAQ_SHUTDOWN_GRACE", 30)),
              "miyaq-worker@.service": float(values.get("MIYAQ_GRACE", 30))}
    for path in UNITS:
        (timeout,) = unit_values(path, "TimeoutStopSec")
        assert duration(timeout) > drains[path.name], f"{path.name}: TimeoutStopSec {timeout}"


# -- Docker ---------------------------------------------------------------------


def test_dockerfile_runs_miyaq_node_by_default():
    """Catches: an image whose entrypoint or default command is not a miyaq command."""
    text = (DEPLOY / "Dockerfile").read_text()
    entrypoint = yaml.safe_load(re.search(r"^ENTRYPOINT (.*)$", text, re.MULTILINE).group(1))
    command = yaml.safe_load(re.search(r"^CMD (.*)$", text, re.MULTILINE).group(1))
    assert entrypoint == ["miyaq"]
    check_command(command, "Dockerfile CMD")
    assert re.search(r"^RUN pip install ", text, re.MULTILINE), "the image must pip-install the package"


def compose_services() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_compose_parses_and_runs_real_commands():
    """Catches: a compose service that runs a command, flag or variable miyaq lacks."""
    services = compose_services()
    assert "zookeeper" in services
    miyaq_services = {k: s for k, s in services.items() if str(s.get("image", "")).startswith("miyaq")}
    roles = {}
    for name, service in miyaq_services.items():
        assert service["build"]["dockerfile"] == "deploy/Dockerfile", name
        argv = [str(a) for a in service.get("command", ["node"])]
        check_command(argv, f"compose service {name}")
        roles[name] = role(argv)
        env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
        for var in env:
            assert var in ROLE_VARS.get(roles[name], ALL_VARS), f"compose {name}: {roles[name]} does not read {var}"
        if roles[name] == "node":
            check_node_values(env, f"compose service {name}")
    nodes = {k for k, r in roles.items() if r == "node"}
    assert len(nodes) == 3 and "worker" in roles.values()
    ids = [miyaq_services[n]["environment"]["MIYAQ_NODE_ID"] for n in sorted(nodes)]
    assert len(set(ids)) == 3, f"node ids must be unique: {ids}"
    for name in nodes:
        service = miyaq_services[name]
        assert service["environment"]["MIYAQ_ZK"].split(":")[0] in services
        assert service["hostname"] == name, f"{name} must advertise a name the others resolve"
        assert duration(service["stop_grace_period"]) > 30
    for name, r in roles.items():
        if r == "worker":
            for endpoint in miyaq_services[name]["environment"]["MIYAQ_CONNECT"].split(","):
                host = re.match(r"tcp://([^:]+):\d+$", endpoint).group(1)
                assert host in nodes, f"compose {name}: {endpoint} is not a node service"


# -- Kubernetes -----------------------------------------------------------------


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml_documents(K8S)}


def containers(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from obj["spec"]["template"]["spec"]["containers"]


def test_k8s_manifest_parses_and_runs_real_commands():
    """Catches: a pod that runs a command, flag or variable miyaq lacks, or bad node settings."""
    objects = k8s_objects()
    config = next(o for (kind, _), o in objects.items() if kind == "ConfigMap")
    roles_seen = set()
    for (kind, name), obj in objects.items():
        if kind not in ("StatefulSet", "Deployment"):
            continue
        for container in containers(obj):
            assert "command" not in container, f"{name}: keep the image's entrypoint (miyaq)"
            argv = [str(a) for a in container.get("args", ["node"])]
            check_command(argv, f"{kind}/{name}")
            r = role(argv)
            roles_seen.add((kind, r))
            values: dict[str, str] = {}
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] == config["metadata"]["name"]
                values.update(config["data"])
            # Variables set from the pod (valueFrom) have no value to check here, but
            # the pod's IP is an address others reach: the node must have keys.
            literal = {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}
            values.update(literal)
            for e in container.get("env", []):
                if e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "status.podIP":
                    values[e["name"]] = "10.1.2.3"
            for var in values.keys() | {e["name"] for e in container.get("env", [])}:
                if var.startswith("MIYAQ_"):
                    assert var in ROLE_VARS[r], f"{kind}/{name}: {r} does not read {var}"
            if r == "node":
                check_node_values(values, f"{kind}/{name}")
            grace = obj["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            drain = float(values.get("MIYAQ_SHUTDOWN_GRACE" if r == "node" else "MIYAQ_GRACE", 30))
            assert grace > drain, f"{kind}/{name}: terminationGracePeriodSeconds {grace} <= drain {drain}"
    assert roles_seen == {("StatefulSet", "node"), ("Deployment", "worker")}


def test_k8s_statefulset_identity_discovery_and_readiness():
    """Catches: node ids that change on restart, a missing headless Service, the log off its volume."""
    objects = k8s_objects()
    (sts,) = [o for (kind, _), o in objects.items() if kind == "StatefulSet"]
    service = objects[("Service", sts["spec"]["serviceName"])]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    (node,) = containers(sts)
    env = {e["name"]: e for e in node["env"]}
    assert env["MIYAQ_NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    config = next(o for (kind, _), o in objects.items() if kind == "ConfigMap")
    assert config["data"]["MIYAQ_ZK"], "the ZooKeeper connection string comes from the environment"
    mounts = {m["name"]: m["mountPath"] for m in node["volumeMounts"]}
    claims = {c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
    assert config["data"]["MIYAQ_DATA_DIR"] in {mounts[c] for c in claims}, "the log must live on the volume"
    (worker_deployment,) = [o for (kind, _), o in objects.items() if kind == "Deployment"]
    (worker,) = containers(worker_deployment)
    connect = {e["name"]: e.get("value") for e in worker["env"]}["MIYAQ_CONNECT"]
    for endpoint in connect.split(","):
        host = re.match(r"tcp://([^:]+):(\d+)$", endpoint)
        assert host and host.group(1).split(".")[1] == service["metadata"]["name"], endpoint


# -- the walkthrough ------------------------------------------------------------


def readme_commands() -> Iterator[list[str]]:
    """``miyaq ...`` command lines in the README's shell code blocks (also after ``exec X``, ``--``)."""
    language = None  # None: outside a fenced block
    for raw in (DEPLOY / "README.md").read_text().splitlines():
        line = raw.strip()
        if line.startswith("```"):
            language = line[3:].strip() if language is None else None
            continue
        if language not in ("sh", "bash", ""):
            continue
        m = re.search(r"(?:^|\bexec \S+ |-- |\bbin/)miyaq (.*)$", line.split(" #", 1)[0])
        if m:
            yield shlex.split(m.group(1))


def test_readme_commands_and_variables_exist():
    """Catches: the walkthrough telling users to run a command, flag or variable that does not exist."""
    commands = list(readme_commands())
    assert len(commands) >= 10
    for argv in commands:
        check_command(argv, "deploy/README.md")
    unknown = sorted(set(VAR.findall((DEPLOY / "README.md").read_text())) - ALL_VARS)
    assert not unknown, f"deploy/README.md names variables nothing reads: {unknown}"


# -- keys (issue 9) ------------------------------------------------------------


def test_systemd_runs_nodes_and_workers_with_keys():
    """Catches: a node without its key directory (it would refuse to start on
    MIYAQ_HOST), workers without their key, no way to reload the keys."""
    values = env_file(ENV_FILE)
    keys = values["MIYAQ_KEYS"]
    assert values["MIYAQ_KEY"].startswith(keys + "/") and values["MIYAQ_KEY"].endswith(".key_secret")
    assert values["MIYAQ_SERVER_KEY"] == keys + "/node.key"
    node_unit = next(p for p in UNITS if p.name == "miyaq-node.service")
    (reload,) = unit_values(node_unit, "ExecReload")
    assert "-HUP" in reload and "$MAINPID" in reload


def test_systemd_protects_the_clusters_znodes_with_zookeeper_credentials():
    """Catches: a production install from deploy/systemd with open znodes.
    The keys guard every ZeroMQ port and the tokens the gateway, but the
    environment file gave ZooKeeper no credentials, so anyone who reaches
    ZooKeeper could read the members' endpoints and rewrite the ring
    (docs/cluster.md, "ZooKeeper ACLs"); deploy/README.md did not mention
    them (the sre audit). Now the file names a credentials file, enabled,
    and the walkthrough makes it, readable by miyaq only, and passes it to
    the operator's ring commands."""
    line = next((raw for raw in ENV_FILE.read_text().splitlines() if "MIYAQ_ZK_AUTH_FILE=" in raw), "")
    assert line.startswith("MIYAQ_ZK_AUTH_FILE=/etc/miyaq/"), f"{ENV_FILE.name}: no MIYAQ_ZK_AUTH_FILE enabled"
    path = line.split("=", 1)[1]
    readme = (DEPLOY / "README.md").read_text()
    assert "umask 077; printf 'miyaq:%s\\n'" in readme and f"> {path})" in readme, "README makes no credentials file"
    ring = [raw for raw in readme.splitlines() if "/opt/miyaq/bin/miyaq ring" in raw]
    assert ring and all("--zk-auth-file" in raw for raw in ring), ring


def test_compose_mounts_the_keys_where_nodes_and_workers_read_them():
    """Catches: MIYAQ_KEYS / MIYAQ_KEY pointing where no volume is mounted, a
    node that may write its keys, a worker without a key."""
    services = compose_services()
    for name, service in services.items():
        env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
        miyaq_image = str(service.get("image", "")).startswith("miyaq")
        argv = [str(a) for a in service.get("command", ["node"])] if miyaq_image else []
        mounts = {v.split(":")[1]: v.split(":")[2:] for v in service.get("volumes", []) if ":" in v}
        if role(argv) == "node":
            assert mounts.get(env["MIYAQ_KEYS"]) == ["ro"], f"compose {name}: keys not mounted read-only"
        elif role(argv) == "worker":
            for var in ("MIYAQ_KEY", "MIYAQ_SERVER_KEY"):
                assert os.path.dirname(env[var]) in mounts, f"compose {name}: {var} is not on a mounted volume"
    keys = services["keys"]
    assert keys.get("profiles") == ["setup"] and "keys" in yaml.safe_load(COMPOSE.read_text())["volumes"]


def test_k8s_mounts_the_keys_from_secrets():
    """Catches: the node's key directory without its secret key or authorized/,
    a worker without its key, key files its user cannot read."""
    objects = k8s_objects()
    config = next(o for (kind, _), o in objects.items() if kind == "ConfigMap")
    for (kind, name), obj in objects.items():
        if kind not in ("StatefulSet", "Deployment"):
            continue
        pod = obj["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert pod["securityContext"].get("fsGroup") == pod["securityContext"]["runAsUser"], name
        (container,) = pod["containers"]
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        if kind == "StatefulSet":
            mount = mounts[config["data"]["MIYAQ_KEYS"]]
            assert mount["readOnly"] is True
            items = [i["path"] for s in volumes[mount["name"]]["projected"]["sources"] for i in s["secret"]["items"]]
            assert {"node.key", "node.key_secret"} <= set(items) and any(p.startswith("authorized/") for p in items)
        else:
            for var in ("MIYAQ_KEY", "MIYAQ_SERVER_KEY"):
                mount = mounts[os.path.dirname(env[var])]
                assert "secret" in volumes[mount["name"]], f"{name}: {var} does not come from a Secret"


# -- health probes, memory, pod security (the deployment audit) -----------------

#: What a node's RSS costs, measured by the audit: 1 GiB of 60 KB payloads
#: took 1.2 GiB, 1,000,000 tasks of 1,000 bytes 1.56 GiB (deploy/README.md, "Memory").
RSS_BASE = 100 * 2**20
RSS_PER_PAYLOAD_BYTE = 1.1
RSS_PER_TASK = 500


def node_rss_bound(values: dict[str, str]) -> float:
    """The most memory a node holds before it refuses submits, by the
    README's rule, for these settings (defaults for the ones not given)."""
    config = NodeConfig.load({}, {k: v for k, v in values.items() if k in NODE_VARS})
    return (RSS_BASE + RSS_PER_PAYLOAD_BYTE * (config.max_bytes + config.max_result_bytes)
            + RSS_PER_TASK * config.max_tasks)


def quantity(text: str) -> float:
    """Bytes of a Kubernetes memory quantity (``2Gi``, ``512Mi``)."""
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", str(text))
    assert m, text
    return int(m.group(1)) * {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[m.group(2)]


def test_k8s_probes_ask_the_node_whether_it_is_live_and_in_the_ring():
    """Fault: readiness and liveness were TCP connects to the service port,
    bound before the log's replay: a restarted node was Ready long before it
    was back in the ring (a rolling update stopped the next node meanwhile,
    leaving tasks on one holder of three), a frozen node passed, and every
    probe counted as a failed ZeroMQ handshake. Now readiness asks
    ``GET /readyz`` and liveness ``GET /livez`` on the HTTP port -- paths
    open without a token -- behind a startup probe with minutes for the
    replay, with the scheme the gateway serves, and the StatefulSet waits
    ``minReadySeconds`` and updates one pod at a time."""
    objects = k8s_objects()
    config = next(o for (kind, _), o in objects.items() if kind == "ConfigMap")["data"]
    (sts,) = [o for (kind, _), o in objects.items() if kind == "StatefulSet"]
    (node,) = containers(sts)
    ports = {p["name"]: p["containerPort"] for p in node["ports"]}
    scheme = "HTTPS" if config.get("MIYAQ_HTTP_CERT") else "HTTP"
    for kind, path in (("startupProbe", "/livez"), ("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
        probe = node[kind]
        assert set(probe) & {"tcpSocket", "exec", "grpc"} == set(), f"{kind}: probe the health endpoints"
        get = probe["httpGet"]
        assert get["path"] == path and is_open(path), kind
        assert ports.get(get["port"], get["port"]) == int(config["MIYAQ_HTTP_PORT"]), f"{kind}: not the HTTP port"
        assert get.get("scheme", "HTTP") == scheme, f"{kind}: the gateway serves {scheme}"
        assert "httpHeaders" not in get, f"{kind}: the probes need no token"
    startup = node["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "allow minutes for the log's replay"
    assert "initialDelaySeconds" not in node["livenessProbe"], "the startup probe covers the start"
    assert sts["spec"].get("minReadySeconds", 0) > 0
    strategy = sts["spec"].get("updateStrategy", {})
    assert strategy.get("type", "RollingUpdate") == "RollingUpdate"
    assert strategy.get("rollingUpdate", {}).get("maxUnavailable", 1) == 1, "one node at a time"


def test_compose_nodes_are_healthy_once_ready_and_workers_wait_for_them():
    """Fault: the compose nodes had no healthcheck and the workers started
    with the containers, before any node was in the ring. Now each node's
    healthcheck asks its own ``GET /readyz`` (no token), with a start
    period for the replay, and the workers wait until every node is healthy."""
    services = compose_services()
    nodes = {k: s for k, s in services.items()
             if str(s.get("image", "")).startswith("miyaq") and role([str(a) for a in s.get("command", [])]) == "node"}
    assert len(nodes) == 3
    for name, service in nodes.items():
        test = " ".join(service["healthcheck"]["test"])
        port = service["environment"]["MIYAQ_HTTP_PORT"]
        assert f"http://127.0.0.1:{port}/readyz" in test, f"compose {name}: healthcheck {test}"
        assert duration(service["healthcheck"]["start_period"]) >= 60, f"compose {name}: allow for the replay"
    worker = services["worker"]
    assert worker["depends_on"] == {n: {"condition": "service_healthy"} for n in nodes}


def test_k8s_node_memory_fits_its_limit():
    """Fault: the default limits (max_bytes 1 GiB, max_result_bytes 256 MiB,
    max_tasks 1,000,000) let a node grow to about 2 GiB, the container's
    limit: the OOM killer ended it before it refused a submit. Now the
    ConfigMap's settings keep the node within 80 % of its memory limit."""
    objects = k8s_objects()
    config = next(o for (kind, _), o in objects.items() if kind == "ConfigMap")["data"]
    (sts,) = [o for (kind, _), o in objects.items() if kind == "StatefulSet"]
    (node,) = containers(sts)
    limit = quantity(node["resources"]["limits"]["memory"])
    assert node_rss_bound(config) <= 0.8 * limit, (
        f"a node may hold {node_rss_bound(config) / 2**30:.2f} GiB, its limit is {limit / 2**30:.2f} GiB")
    assert node_rss_bound({}) > 0.8 * limit, "the rule no longer needs MIYAQ_MAX_BYTES here: say so in the README"


def test_k8s_pods_meet_the_restricted_pod_security_standard():
    """Fault: the pods ran with privilege escalation allowed, every default
    capability and no seccomp profile, so a namespace enforcing the
    restricted Pod Security Standard refused them. Now each pod and
    container sets what that standard asks, and a read-only root file
    system with /tmp on an emptyDir (the processes pool's socket directory)."""
    for (kind, name), obj in k8s_objects().items():
        if kind not in ("StatefulSet", "Deployment"):
            continue
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            assert security["readOnlyRootFilesystem"] is True, name
            (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert "emptyDir" in volumes[tmp["name"]], f"{name}: /tmp must be writable"


# -- the build context ------------------------------------------------------------

DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
#: What ``pip install`` reads from the context (setup.cfg's ``file:`` references are checked too).
INSTALL_NEEDS = {"miyaq", "setup.cfg", "pyproject.toml", "README.md"}
#: What an operator following deploy/README.md makes in the repository root, and other secrets.
SECRETS_IN_ROOT = ["keys/node.key_secret", "keys/ops.key_secret", "keys/authorized/ops.key", "http-tokens",
                   "data/00000000.log", "miyaq-data/00000001.log", ".env", "deploy/.env", ".git/config",
                   ".venv/bin/python", "tests/test_deploy.py", "miyaq/__pycache__/config.cpython-311.pyc"]


def docker_patterns(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def _docker_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore pattern (moby/patternmatcher): ``**`` any
    directories, ``*`` and ``?`` within one path element."""
    text = re.escape(pattern.strip("/")).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
    return re.compile("^" + text.replace(r"\*", "[^/]*").replace(r"\?", "[^/]") + "$")


def in_context(relative: str, patterns: list[str]) -> bool:
    """Whether Docker sends ``relative`` in the build context: the last
    pattern that matches it or one of its parent directories decides, and a
    ``!`` pattern lets it in again."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _docker_regex(pattern[1:] if negate else pattern)
        if any(regex.match(p) for p in prefixes):
            excluded = not negate
    return not excluded


def test_dockerignore_admits_only_what_the_install_needs():
    """Fault: the dockerignore listed a few caches to leave out, so
    following deploy/README.md from the repository root put keys/ (with
    every ``*.key_secret``), http-tokens and a data directory in the build
    context, and ``COPY . /src`` put them in a layer of the image. Now it is
    an allow-list: ``*`` first, then only ``!`` lines for what the install
    reads, and of the repository and those secrets only the package,
    setup.cfg, pyproject.toml and README.md reach the builder."""
    patterns = docker_patterns(DOCKERIGNORE)
    assert patterns[0] == "*", "start by leaving everything out"
    admitted = {p[1:] for p in patterns if p.startswith("!")}
    assert admitted <= INSTALL_NEEDS, f"admits more than the install needs: {sorted(admitted - INSTALL_NEEDS)}"
    setup = configparser.ConfigParser()
    setup.read(DEPLOY.parent / "setup.cfg")
    read_by_setup = {v.split("file:", 1)[1].strip() for section in setup.sections()
                     for v in setup[section].values() if v.strip().startswith("file:")}
    assert read_by_setup <= admitted, f"setup.cfg reads {sorted(read_by_setup - admitted)}, left out"
    root = DEPLOY.parent
    files = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
             and not {".git", ".venv", ".mypy_cache", ".ruff_cache"} & set(p.relative_to(root).parts)]
    context = {f for f in files + SECRETS_IN_ROOT if in_context(f, patterns)}
    outside = sorted(f for f in context if f.split("/")[0] not in INSTALL_NEEDS or "__pycache__" in f)
    assert not outside, f"in the build context: {outside[:20]}"
    assert {"setup.cfg", "README.md", "miyaq/__init__.py"} <= context


def dockerfile_stages(text: str) -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), stage by stage."""
    joined = re.sub(r"\\\n", " ", text)
    stages: list[list[str]] = [[]]
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages[1:]


def test_dockerfile_final_stage_copies_nothing_from_the_context():
    """Fault: ``COPY . /src`` in the image's only stage, then ``rm -rf
    /src`` in a later layer: the COPY layer kept the whole build context in
    the image's history. Now the package is installed in a build stage and
    the image copies only what was installed (``COPY --from=``)."""
    stages = dockerfile_stages((DEPLOY / "Dockerfile").read_text())
    assert len(stages) >= 2, "install in a build stage"
    for line in stages[-1]:
        if re.match(r"(COPY|ADD)\b", line, re.IGNORECASE):
            assert "--from=" in line, f"the image's stage copies from the build context: {line}"
        assert not re.search(r"--mount=type=bind(?![^ ]*,from=)", line), line
    assert any(re.match(r"COPY --from=\S+ /install /usr/local$", line) for line in stages[-1])
