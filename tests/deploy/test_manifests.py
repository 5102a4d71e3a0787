"""deploy/: the Helm chart (rendered by Helm's own engine), plain manifests and examples,
validated offline against the Kubernetes OpenAPI schemas and checked for wiring."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from mxfs_csi import DEFAULT_DRIVER_NAME
from mxfs_csi.volume import parse_volume_context

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
VALUES = {None: None} | {
    p.stem: yaml.safe_load(p.read_text()) for p in sorted((DEPLOY / "helm" / "values").glob("*.yaml"))
}
K8S_VERSIONS = ["1.27.0", kubernetes_validate.latest_version()]  # chart: kubeVersion >=1.27
# Maps in values.yaml whose keys are the user's own (free-form).
FREE_FORM = {
    "resources",
    "env",
    "nodeSelector",
    "affinity",
    "podAnnotations",
    "annotations",
    "commonLabels",
    "modelsVolume",
    "requests",
    "limits",
}


def _load_render_module():
    spec = importlib.util.spec_from_file_location("mxfs_deploy_render", DEPLOY / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _load_render_module()


def validate(doc: dict[str, Any], version: str) -> None:
    """Strict schema validation (unknown fields rejected); raises on failure."""
    kubernetes_validate.validate(doc, version, strict=True)


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod_spec["containers"] if c["name"] == name)


def mount(c: dict[str, Any], name: str) -> dict[str, Any]:
    return next(m for m in c["volumeMounts"] if m["name"] == name)


def volume(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    return next(v for v in pod_spec["volumes"] if v["name"] == name)


def flag(args: list[str], name: str) -> str:
    return next(a.split("=", 1)[1] for a in args if a.startswith(f"--{name}="))


def load_format(c: dict[str, Any]) -> str | None:
    """vLLM's --load-format, written as one argument or two."""
    args = c.get("args", [])
    for i, arg in enumerate(args):
        if arg.startswith("--load-format="):
            return arg.split("=", 1)[1]
        if arg == "--load-format" and i + 1 < len(args):
            return args[i + 1]
    return None


def test_chart_lints_clean() -> None:
    for values in VALUES.values():
        report = helm_python.lint(DEPLOY / "helm" / "mxfs", values, strict=True)
        assert not report["errors"], report
        assert all(m["severity"] < 2 for m in report["messages"]), report


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("values_name", list(VALUES), ids=lambda n: n or "default")
def test_chart_render_validates(values_name: str | None, version: str) -> None:
    docs = render.documents(VALUES[values_name])
    kinds = {d["kind"] for d in docs}
    assert {
        "Deployment",
        "Service",
        "PersistentVolumeClaim",
        "DaemonSet",
        "CSIDriver",
        "ServiceAccount",
        "ConfigMap",
    } <= kinds
    for doc in docs:
        validate(doc, version)


def _unknown_keys(given: Any, defaults: Any, path: str = "") -> list[str]:
    if not isinstance(given, dict) or not isinstance(defaults, dict):
        return []
    unknown = []
    for key, value in given.items():
        where = f"{path}.{key}" if path else key
        if key not in defaults:
            unknown.append(where)
        elif key not in FREE_FORM and where != "client.env":
            unknown += _unknown_keys(value, defaults[key], where)
    return unknown


@pytest.mark.parametrize("values_name", [n for n in VALUES if n])
def test_values_files_use_only_chart_keys(values_name: str) -> None:
    """Helm ignores unknown keys silently: a typo would pass every render."""
    defaults = yaml.safe_load((DEPLOY / "helm" / "mxfs" / "values.yaml").read_text())
    assert _unknown_keys(VALUES[values_name], defaults) == []


def test_plain_manifests_are_the_chart_render() -> None:
    assert (DEPLOY / "manifests" / "mxfs.yaml").read_text() == render.plain_manifests(), (
        "deploy/manifests/mxfs.yaml is stale: run python deploy/render.py"
    )


def _example_documents() -> list[tuple[str, dict[str, Any]]]:
    files = sorted((DEPLOY / "manifests").glob("*.yaml")) + sorted((DEPLOY / "examples").glob("*.yaml"))
    return [(f.name, d) for f in files for d in yaml.safe_load_all(f.read_text()) if d]


def _pod_templates(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The pod specs in a Kubernetes object or a DynamoGraphDeployment."""
    if doc["kind"] == "Pod":
        return [doc["spec"]]
    if doc["kind"] == "DynamoGraphDeployment":
        return [c["podTemplate"]["spec"] for c in doc["spec"]["components"]]
    if "template" in doc.get("spec", {}):
        return [doc["spec"]["template"]["spec"]]
    return []


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_and_examples_validate(version: str) -> None:
    docs = _example_documents()
    assert {d["kind"] for _, d in docs} >= {
        "Namespace",
        "Pod",
        "PersistentVolume",
        "DynamoGraphDeployment",
        "Deployment",
    }
    for name, doc in docs:
        if doc["kind"] == "DynamoGraphDeployment":
            # A CRD: no Kubernetes schema; each component's podTemplate is a PodTemplateSpec.
            assert doc["apiVersion"] == "nvidia.com/v1beta1", name
            for component in doc["spec"]["components"]:
                assert {"name", "type", "podTemplate"} <= set(component), name
                validate(
                    {
                        "apiVersion": "v1",
                        "kind": "PodTemplate",
                        "metadata": {"name": component["name"].lower()},
                        "template": component["podTemplate"],
                    },
                    version,
                )
        else:
            validate(doc, version)


def test_examples_ask_the_driver_for_parseable_read_only_models() -> None:
    csi_volumes = []
    for name, doc in _example_documents():
        if doc["kind"] == "PersistentVolume":
            csi_volumes.append((name, doc["spec"]["csi"], doc["spec"]["accessModes"]))
        for spec in _pod_templates(doc):
            for vol in spec.get("volumes", []):
                if "csi" in vol:
                    csi_volumes.append((name, vol["csi"], None))
                    mounts = [
                        m for c in spec["containers"] for m in c.get("volumeMounts", []) if m["name"] == vol["name"]
                    ]
                    assert mounts and all(m["mountPath"] == "/models" for m in mounts), name
    assert len(csi_volumes) >= 4
    for name, csi, access_modes in csi_volumes:
        assert csi["driver"] == DEFAULT_DRIVER_NAME, name
        assert csi["readOnly"] is True, name
        assert parse_volume_context(csi["volumeAttributes"]).name, name
        assert access_modes in (None, ["ReadOnlyMany"]), name


def test_vllm_examples_load_with_mx_from_the_chart_server() -> None:
    server = "mxfs-server.mxfs.svc:8001"  # the chart's server Service, release mxfs
    docs = {d["kind"]: d for _, d in _example_documents()}
    for kind in ("Deployment", "DynamoGraphDeployment"):
        specs = _pod_templates(docs[kind])
        workers = [
            c
            for s in specs
            for c in s["containers"]
            if "mx" in " ".join(c.get("args", [])).split("--load-format")[-1][:4]
        ]
        assert workers, kind
        for c in workers:
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            assert env["MODEL_EXPRESS_URL"] == server, kind
    configmap = next(d for d in render.documents() if d["kind"] == "ConfigMap")
    assert configmap["data"]["MODEL_EXPRESS_URL"] == server


@pytest.mark.parametrize("values_name", list(VALUES), ids=lambda n: n or "default")
def test_node_daemonset_is_wired_for_fuse_and_csi(values_name: str | None) -> None:
    values = VALUES[values_name] or {}
    docs = render.documents(VALUES[values_name])
    [ds] = by_kind(docs, "DaemonSet")
    [driver] = by_kind(docs, "CSIDriver")
    spec = ds["spec"]["template"]["spec"]
    daemon, csi = container(spec, "mxfsd"), container(spec, "csi")
    registrar = container(spec, "node-driver-registrar")

    # the daemon: privileged FUSE, its mount propagated to the host
    assert daemon["securityContext"]["privileged"] is True
    assert volume(spec, "fuse")["hostPath"] == {"path": "/dev/fuse", "type": "CharDevice"}
    assert mount(daemon, "models")["mountPropagation"] == "Bidirectional"
    assert daemon["args"][:2] == ["mount", mount(daemon, "models")["mountPath"]]
    assert volume(spec, "cache")["hostPath"]["path"] == values.get("node", {}).get("hostCacheDir", "/var/cache/mxfs")
    assert flag(daemon["args"], "cache-dir") == mount(daemon, "cache")["mountPath"]

    # the plugin sees the daemon's mount and publishes into kubelet's pod dirs
    assert csi["securityContext"]["privileged"] is True
    assert mount(csi, "models")["mountPropagation"] == "HostToContainer"
    assert flag(csi["args"], "mountpoint") == mount(csi, "models")["mountPath"]
    pods = mount(csi, "pods-dir")
    assert pods["mountPropagation"] == "Bidirectional"
    assert pods["mountPath"] == volume(spec, "pods-dir")["hostPath"]["path"]  # same path

    # socket: plugin endpoint == registrar address; kubelet path == plugin-dir on the host
    endpoint = flag(csi["args"], "endpoint").removeprefix("unix://")
    assert endpoint == "/csi/csi.sock" and mount(csi, "plugin-dir")["mountPath"] == "/csi"
    assert flag(registrar["args"], "csi-address") == endpoint
    host_plugin_dir = volume(spec, "plugin-dir")["hostPath"]["path"]
    assert flag(registrar["args"], "kubelet-registration-path") == f"{host_plugin_dir}/csi.sock"
    assert host_plugin_dir.endswith(f"/plugins/{driver['metadata']['name']}")
    assert flag(csi["args"], "driver-name") == driver["metadata"]["name"] == DEFAULT_DRIVER_NAME
    assert mount(registrar, "registration-dir")["mountPath"] == "/registration"

    # CSIDriver: node-only, pod info, inline and static volumes
    assert driver["spec"]["attachRequired"] is False
    assert driver["spec"]["podInfoOnMount"] is True
    assert set(driver["spec"]["volumeLifecycleModes"]) == {"Ephemeral", "Persistent"}

    # RDMA profiles request the device plugin's resource
    rdma = values.get("rdma", {})
    limits = daemon["resources"].get("limits", {})
    assert (rdma.get("resourceName", "rdma/rdma_shared_device_a") in limits) == bool(rdma.get("enabled"))
    assert spec.get("hostNetwork") == values.get("node", {}).get("hostNetwork", False)
    worker_host = next(e for e in daemon["env"] if e["name"] == "MX_WORKER_HOST")
    assert worker_host["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"


@pytest.mark.parametrize("values_name", list(VALUES), ids=lambda n: n or "default")
def test_server_ports_and_addresses_agree(values_name: str | None) -> None:
    values = VALUES[values_name] or {}
    docs = render.documents(VALUES[values_name])
    server = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "mxfs-server")
    service = next(d for d in by_kind(docs, "Service") if d["metadata"]["name"] == "mxfs-server")
    pod = server["spec"]["template"]["spec"]
    main = container(pod, "server")
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports == {"grpc": 8001, "metrics": 9091, "data": 8002}
    assert flag(main["args"], "port") == "8001" and flag(main["args"], "metrics-port") == "9091"
    assert flag(main["args"], "data-port") == "8002"
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == ports
    assert service["spec"]["selector"].items() <= pod_labels(server).items()
    pvc = by_kind(docs, "PersistentVolumeClaim")[0]
    assert volume(pod, "cache")["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert mount(main, "cache")["mountPath"] == flag(main["args"], "cache-dir")

    [ds] = by_kind(docs, "DaemonSet")
    daemon = container(ds["spec"]["template"]["spec"], "mxfsd")
    scheme = "https://" if values.get("tls", {}).get("secret") else ""
    assert flag(daemon["args"], "server") == f"{scheme}mxfs-server.mxfs.svc:8001"
    # the daemon refuses a peer port without a cluster token: the port only comes with one
    daemon_ports = {p["name"]: p["containerPort"] for p in daemon["ports"]}
    if values.get("peerTokenSecret") or values.get("auth", {}).get("tokenSecret"):
        assert flag(daemon["args"], "peer-port") == "9093"
        assert daemon_ports["peer"] == 9093
    else:
        assert not any(a.startswith("--peer-port") for a in daemon["args"])
        assert "peer" not in daemon_ports

    redis = [d for d in by_kind(docs, "Service") if d["metadata"]["name"] == "mxfs-redis"]
    env = {e["name"]: e.get("value") for e in main["env"]}
    if values.get("redis", {}).get("enabled"):
        assert redis and env["MX_METADATA_BACKEND"] == "redis"
        assert env["REDIS_URL"] == "redis://mxfs-redis.mxfs.svc:6379/0"
    else:
        assert not redis and "MX_METADATA_BACKEND" not in env and "REDIS_URL" not in env

    # one peer token for server and nodes, or none
    token_users = [c for c in (main, daemon) if any(e["name"] == "MXFS_PEER_TOKEN" for e in c["env"])]
    assert len(token_users) == (2 if values.get("peerTokenSecret") else 0)


# Values beyond the shipped profiles whose rendered commands the real CLI must accept too.
CLI_CASES = {
    "peer-token-only": {"peerTokenSecret": "mxfs-peer-token"},
    "auth-reads": {"auth": {"tokenSecret": "mxfs-auth", "requireForReads": True}},
    "eviction": {"server": {"eviction": {"minFree": "50Gi", "maxModels": 1000000, "maxUnusedSecs": 604800}}},
    "eviction-off": {"server": {"eviction": {"minFree": "", "maxModels": 0, "maxUnusedSecs": 0}}},
    "ports-off": {"server": {"metricsPort": 0, "dataPort": 0}, "node": {"metricsPort": 0}},
    "origins": {"server": {"origins": ["hf", "s3://models/prefix", "/srv/models"],
                           "modelUris": ["acme/llama-ft=gs://bucket/llama-ft"], "originMode": "hydrate"}},
}
FIELD_VALUES = {"status.podIP": "10.1.2.3", "spec.nodeName": "node-a"}


def _mxfs_containers(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod spec, container) of every rendered ``mxfs server`` and ``mxfs mount`` container."""
    found = []
    for doc in docs:
        for spec in _pod_templates(doc):
            for c in spec["containers"]:
                if c["image"].startswith("localhost/mxfs:") and c.get("args", [""])[0] in ("server", "mount"):
                    found.append((spec, c))
    return found


def _pod_env(c: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the pod would have it: secrets and fields as dummies,
    ``$(VAR)`` expanded as kubelet does."""
    env: dict[str, str] = {}
    for e in c.get("env", []):
        if "value" in e:
            value = str(e["value"])
        elif "secretKeyRef" in e["valueFrom"]:
            value = f"dummy-{e['name'].lower()}"
        else:
            value = FIELD_VALUES[e["valueFrom"]["fieldRef"]["fieldPath"]]
        env[e["name"]] = _expand(value, env)
    return env


def _expand(text: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), text)


def _local_args(spec: dict[str, Any], c: dict[str, Any], env: dict[str, str], tmp: Path) -> list[str]:
    """The container's args, ``$(VAR)`` expanded, files of mounted Secrets replaced by local
    files with dummy contents (the Secrets' files do not exist here)."""
    secret_dirs = [
        m["mountPath"] for m in c.get("volumeMounts", []) if "secret" in volume(spec, m["name"])
    ]
    args = []
    for arg in c["args"]:
        arg = _expand(arg, env)
        name, eq, value = arg.partition("=")
        if eq and any(value.startswith(d.rstrip("/") + "/") for d in secret_dirs):
            local = tmp / value.lstrip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text("dummy-secret-file\n")
            arg = f"{name}={local}"
        args.append(arg)
    return args


@pytest.mark.parametrize("values_name", list(VALUES) + list(CLI_CASES), ids=lambda n: n or "default")
def test_rendered_commands_pass_the_cli_validation(values_name: str | None, tmp_path: Path) -> None:
    """Every rendered ``mxfs server`` / ``mxfs mount`` command line, with the pod's environment,
    is accepted by the real CLI (``--validate-config`` checks it and exits before serving)."""
    values = CLI_CASES[values_name] if values_name in CLI_CASES else VALUES[values_name]
    containers = _mxfs_containers(render.documents(values))
    assert sorted(c["args"][0] for _, c in containers) == ["mount", "server"]
    base = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    for i, (spec, c) in enumerate(containers):
        env = _pod_env(c)
        args = _local_args(spec, c, env, tmp_path / str(i))
        proc = subprocess.run(
            [sys.executable, "-m", "mxfs", *args, "--validate-config"],
            env=base | env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        assert proc.stdout.startswith("config OK"), proc.stdout


def _server_args(values: dict[str, Any] | None) -> list[str]:
    docs = render.documents(values)
    server = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "mxfs-server")
    return container(server["spec"]["template"]["spec"], "server")["args"]


def flags(args: list[str], name: str) -> list[str]:
    return [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]


def test_server_origins_reach_the_server() -> None:
    """``server.origins`` (default hf, so the examples' Hugging Face models resolve),
    ``server.modelUris`` and ``server.originMode`` become the server's origin flags."""
    from mxfs.origins.uri import parse_binding, parse_origin_uri

    args = _server_args(None)
    assert flags(args, "origin") == ["hf"]
    assert flags(args, "model-uri") == [] and flags(args, "origin-mode") == []
    for name in VALUES:
        assert flags(_server_args(VALUES[name]), "origin") == ["hf"], name
    values = CLI_CASES["origins"]
    args = _server_args(values)
    assert flags(args, "origin") == values["server"]["origins"]
    assert flags(args, "model-uri") == values["server"]["modelUris"]
    assert flags(args, "origin-mode") == ["hydrate"]
    for uri in flags(args, "origin"):
        parse_origin_uri(uri)
    assert [parse_binding(b)[0] for b in flags(args, "model-uri")] == ["acme/llama-ft"]
    assert flags(_server_args({"server": {"origins": []}}), "origin") == []  # modelsDir only


def _service_accounts(values: dict[str, Any] | None) -> tuple[set[str], dict[str, str]]:
    """(ServiceAccounts rendered, workload -> the ServiceAccount its pods run as)."""
    docs = render.documents(values)
    accounts = {d["metadata"]["name"] for d in by_kind(docs, "ServiceAccount")}
    used = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"].get("serviceAccountName", "default")
        for d in docs
        if d["kind"] in ("Deployment", "DaemonSet") and d["metadata"]["name"] != "mxfs-redis"
    }
    return accounts, used


@pytest.mark.parametrize("values_name", list(VALUES), ids=lambda n: n or "default")
def test_pods_run_as_service_accounts_that_exist(values_name: str | None) -> None:
    accounts, used = _service_accounts(VALUES[values_name])
    assert used == {"mxfs-server": "mxfs-server", "mxfs-node": "mxfs-node"}
    assert set(used.values()) == accounts


def test_service_account_names_and_create_false() -> None:
    """``serviceAccount.create: false`` must not name ServiceAccounts nobody creates: the pods
    run as ``serviceAccount.name.<component>``, else the namespace's ``default``."""
    accounts, used = _service_accounts({"serviceAccount": {"create": False}})
    assert accounts == set() and used == {"mxfs-server": "default", "mxfs-node": "default"}
    accounts, used = _service_accounts({"serviceAccount": {"create": False, "name": {"node": "gpu-nodes"}}})
    assert accounts == set() and used == {"mxfs-server": "default", "mxfs-node": "gpu-nodes"}
    accounts, used = _service_accounts({"serviceAccount": {"name": {"server": "models", "node": "fuse"}}})
    assert accounts == {"models", "fuse"} and used == {"mxfs-server": "models", "mxfs-node": "fuse"}


def test_server_eviction_values_reach_the_server() -> None:
    """The server evicts nothing by default; the chart's ``server.eviction`` turns bounds on
    (``minFree`` 20GiB by default) and the server parses what it renders."""
    from mxfs.cli import build_parser

    args = _server_args(None)
    assert flags(args, "min-free") == ["20GiB"]
    assert flags(args, "max-models") == [] and flags(args, "max-unused") == []
    args = _server_args(CLI_CASES["eviction"])
    assert flags(args, "max-models") == ["1000000"] and flags(args, "max-unused") == ["604800"]
    parsed = build_parser().parse_args(args)
    assert (parsed.min_free_bytes, parsed.max_models, parsed.max_unused_s) == (50 << 30, 1000000, 604800.0)
    args = _server_args(CLI_CASES["eviction-off"])
    assert not [a for a in args if a.startswith(("--min-free", "--max-models", "--max-unused"))]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_metrics_and_data_ports_0_are_off(version: str) -> None:
    """0 turns the server's metrics and data ports and the daemon's metrics port off: passed as
    0 (the server's own defaults are 9091 and 8002), no port 0 in a pod or Service, no scrape."""
    docs = render.documents(CLI_CASES["ports-off"])
    for doc in docs:
        validate(doc, version)
    server = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "mxfs-server")
    service = next(d for d in by_kind(docs, "Service") if d["metadata"]["name"] == "mxfs-server")
    [ds] = by_kind(docs, "DaemonSet")
    main = container(server["spec"]["template"]["spec"], "server")
    daemon = container(ds["spec"]["template"]["spec"], "mxfsd")
    assert flag(main["args"], "metrics-port") == "0" and flag(main["args"], "data-port") == "0"
    assert flag(daemon["args"], "metrics-port") == "0"
    assert [p["name"] for p in main["ports"]] == ["grpc"]
    assert [p["name"] for p in service["spec"]["ports"]] == ["grpc"]
    assert "ports" not in daemon  # and no peer port without a token
    for workload in (server, ds):
        assert "prometheus.io/scrape" not in workload["spec"]["template"]["metadata"]["annotations"]


# Read by the process or its libraries rather than by mxfs.envs.
PROCESS_ENV = {"HOME"}


@pytest.mark.parametrize("values_name", list(VALUES), ids=lambda n: n or "default")
def test_mxfs_containers_get_only_env_that_is_read(values_name: str | None) -> None:
    """Every variable the chart sets on an mxfs container is one mxfs reads (mxfs.envs), or one
    its args use as ``$(VAR)``: the daemon had a NODE_NAME that nothing read."""
    from mxfs import envs

    known = {v.name for v in envs.ALL} | PROCESS_ENV
    docs = render.documents(VALUES[values_name])
    [ds] = by_kind(docs, "DaemonSet")
    server = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "mxfs-server")
    pods = [server["spec"]["template"]["spec"], ds["spec"]["template"]["spec"]]
    checked = 0
    for c in (c for spec in pods for c in spec["containers"] if c["image"].startswith("localhost/mxfs:")):
        used = set(re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", " ".join(c["args"])))
        for e in c.get("env", []):
            assert e["name"] in known | used, (c["name"], e["name"])
            checked += 1
    assert checked


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


@pytest.mark.parametrize("values_name", list(VALUES), ids=lambda n: n or "default")
def test_token_and_tls_are_wired_when_turned_on(values_name: str | None) -> None:
    values = VALUES[values_name] or {}
    auth, tls = values.get("auth", {}), values.get("tls", {})
    docs = render.documents(VALUES[values_name])
    server = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "mxfs-server")
    main = container(server["spec"]["template"]["spec"], "server")
    [ds] = by_kind(docs, "DaemonSet")
    daemon = container(ds["spec"]["template"]["spec"], "mxfsd")
    # the daemon's metrics listen on the pod IP, not on every interface
    assert flag(daemon["args"], "metrics-host") == "$(POD_IP)"
    pod_ip = next(e for e in daemon["env"] if e["name"] == "POD_IP")
    assert pod_ip["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    for c, pod in ((main, server["spec"]["template"]["spec"]), (daemon, ds["spec"]["template"]["spec"])):
        has_token = any(a.startswith("--auth-token-file=") for a in c["args"])
        assert has_token == bool(auth.get("tokenSecret"))
        if has_token:
            assert flag(c["args"], "auth-token-file").startswith(mount(c, "auth-token")["mountPath"] + "/")
            assert volume(pod, "auth-token")["secret"]["secretName"] == auth["tokenSecret"]
        has_tls = any(a.startswith("--tls-cert-file=") for a in c["args"])
        assert has_tls == bool(tls.get("secret"))
        if has_tls:
            assert flag(c["args"], "tls-key-file").startswith(mount(c, "tls")["mountPath"] + "/")
            assert volume(pod, "tls")["secret"]["secretName"] == tls["secret"]
    assert ("--auth-reads" in main["args"]) == bool(auth.get("tokenSecret") and auth.get("requireForReads"))
    if tls.get("secret"):
        assert flag(daemon["args"], "tls-ca-file") == "/etc/mxfs/tls/ca.crt"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert "tcpSocket" in main[probe] and "grpc" not in main[probe]  # kubelet gRPC probes lack TLS


def test_more_server_replicas_need_redis_and_a_shared_cache_volume() -> None:
    """Replicas share one cache PVC: a ReadWriteOnce one (Recreate strategy) holds one replica,
    and the embedded registry is one replica's; the chart refuses what would not run."""
    with pytest.raises(helm_python.HelmError, match=r"redis\.enabled or redis\.url"):
        render.documents({"server": {"replicas": 2}})
    with pytest.raises(helm_python.HelmError, match="ReadWriteMany"):
        render.documents({"server": {"replicas": 2}, "redis": {"enabled": True}})
    shared = {"server": {"replicas": 3, "persistence": {"accessModes": ["ReadWriteMany"]}},
              "redis": {"url": "redis://redis.infra:6379/0"}}
    docs = render.documents(shared)
    server = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "mxfs-server")
    assert server["spec"]["replicas"] == 3 and "strategy" not in server["spec"]
    [pvc] = by_kind(docs, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    server = next(d for d in by_kind(render.documents(None), "Deployment") if d["metadata"]["name"] == "mxfs-server")
    assert server["spec"]["replicas"] == 1 and server["spec"]["strategy"] == {"type": "Recreate"}


def _client_env(values: dict[str, Any] | None) -> dict[str, str]:
    return next(d for d in render.documents(values) if d["kind"] == "ConfigMap")["data"]


@pytest.mark.parametrize("values_name", list(VALUES), ids=lambda n: n or "default")
def test_client_configmap_names_the_ca_with_tls(values_name: str | None) -> None:
    """An https:// server address comes with the CA file that verifies it (the clients' variable)."""
    from mxfs import envs

    env = _client_env(VALUES[values_name])
    if (VALUES[values_name] or {}).get("tls", {}).get("secret"):
        assert env["MODEL_EXPRESS_URL"].startswith("https://")
        assert env[envs.MX_TLS_CA_FILE.name] == "/etc/mxfs/tls/ca.crt"
    else:
        assert not env["MODEL_EXPRESS_URL"].startswith("https://")
        assert envs.MX_TLS_CA_FILE.name not in env
    mine = {"tls": {"secret": "t"}, "client": {"env": {"MX_TLS_CA_FILE": "/certs/ca.pem"}}}
    assert _client_env(mine)["MX_TLS_CA_FILE"] == "/certs/ca.pem"  # the user's own wins


REAPER_ENV = {"heartbeatTimeoutSecs": "MX_HEARTBEAT_TIMEOUT_SECS", "gcTimeoutSecs": "MX_GC_TIMEOUT_SECS",
              "scanIntervalSecs": "MX_REAPER_SCAN_INTERVAL_SECS"}


def _server_env(values: dict[str, Any] | None) -> dict[str, str]:
    docs = render.documents(values)
    server = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "mxfs-server")
    return {e["name"]: e.get("value") for e in container(server["spec"]["template"]["spec"], "server")["env"]}


def test_source_reaper_defaults_are_upstreams_and_values_reach_the_server(monkeypatch) -> None:
    """The P2P source reaper's timings come from ``server.sourceReaper``; the defaults are the
    ones the server itself (and upstream ModelExpress) uses, and what the chart renders parses."""
    from mxfs import envs

    env = _server_env(None)
    for name in REAPER_ENV.values():
        assert env[name] == getattr(envs, name).default, name
    env = _server_env({"server": {"sourceReaper": {"heartbeatTimeoutSecs": 45, "gcTimeoutSecs": 7200,
                                                   "scanIntervalSecs": 2.5}}})
    assert [env[n] for n in REAPER_ENV.values()] == ["45", "7200", "2.5"]
    for name in REAPER_ENV.values():
        monkeypatch.setenv(name, env[name])
    assert [envs.seconds(getattr(envs, n)) for n in REAPER_ENV.values()] == [45.0, 7200.0, 2.5]


README = DEPLOY / "README.md"


def _readme_table(heading: str) -> dict[str, str]:
    """First cell (backquotes dropped) -> the whole row, of the first table after ``heading``."""
    text = README.read_text().split(heading, 1)[1]
    rows = {}
    for line in text.split("\n| --- |", 1)[1].splitlines()[1:]:
        if not line.startswith("|"):
            break
        rows[line.split("|")[1].strip().strip("`")] = line
    return rows


def test_deploy_texts_name_files_that_exist() -> None:
    """Every ``*.yaml`` the README, the chart's values, the profiles and the examples mention is a
    file of deploy/ (they named values-small.yaml and friends, which never existed)."""
    texts = [README, DEPLOY / "helm" / "mxfs" / "values.yaml", *(DEPLOY / "helm" / "values").glob("*.yaml"),
             *(DEPLOY / "examples").glob("*.yaml")]
    files = [f.relative_to(DEPLOY).as_posix() for f in DEPLOY.rglob("*.yaml")]
    for text in texts:
        for name in set(re.findall(r"[\w./-]*[\w-]\.yaml", text.read_text())) - {"mine.yaml"}:
            name = name.removeprefix("deploy/")
            assert any(f == name or f.endswith("/" + name) for f in files), (text.name, name)


def test_readme_profile_table_lists_every_values_file() -> None:
    rows = _readme_table("## Choosing values")
    assert set(rows) == {"(none)"} | {f"{n}.yaml" for n in VALUES if n}
    assert "200 Gi server cache" in rows["(none)"]  # the chart's default persistence.size
    defaults = yaml.safe_load((DEPLOY / "helm" / "mxfs" / "values.yaml").read_text())
    assert defaults["server"]["persistence"]["size"] == "200Gi"
    assert "--cache-size" not in defaults["node"]["extraArgs"]  # hence "no node cache bound"


def test_readme_node_pod_table_names_every_mount() -> None:
    """The README's "key mounts" of each node-pod container name every volume it mounts (by
    mount path or by volume name), e.g. the csi plugin's host cache dir with the daemon's socket."""
    rows = _readme_table("## How the node pod is wired")
    [ds] = by_kind(render.documents(), "DaemonSet")
    for c in ds["spec"]["template"]["spec"]["containers"]:
        cell = rows[c["name"]].split("|")[3]
        for m in c.get("volumeMounts", []):
            assert m["mountPath"] in cell or m["name"].replace("-", " ") in cell, (c["name"], m)


@pytest.mark.parametrize(("env", "path"), [({}, "/etc/mxfs/tls/ca.crt"),
                                           ({"MX_TLS_CA_FILE": "/my/ca.pem"}, "/my/ca.pem")])
def test_notes_name_the_ca_path_the_configmap_sets(env: dict[str, str], path: str) -> None:
    chart = helm_python.Chart.load(DEPLOY / "helm" / "mxfs")
    out = chart.render({"tls": {"secret": "s"}, "client": {"env": env}}, name="mxfs", namespace="mxfs",
                       is_install=True)
    notes = next(text for name, text in out.items() if name.endswith("NOTES.txt"))
    configmap = next(doc for doc in yaml.safe_load_all(out["mxfs/templates/client-configmap.yaml"]) if doc)
    assert configmap["data"]["MX_TLS_CA_FILE"] == path
    assert f"{path} (MX_TLS_CA_FILE in that ConfigMap" in notes
