"""Offline checks of deploy/: the Kubernetes manifests and the Dockerfile (no cluster, no Docker daemon).

* every manifest validates strictly against the newest Kubernetes schemas kubernetes-validate ships;
* hadolint passes over the Dockerfile;
* checkov fails no check over both (each skipped check carries its reason in the file);
* the KubeRay overlay's RayJob (deploy/k8s/ray/) validates strictly against the RayJob CRD's published schema,
  vendored with its KubeRay version (deploy/schemas/ray.io_rayjobs.yaml.gz), and its pod templates against the
  Kubernetes schemas;
* the manifests agree with the code: the ConfigMap's files load with each process's own config class, and
  ports, health service names, probes, drain/grace times vs deadlines, snapshot paths, env keys, images
  and labels line up, so a change on one side that the other does not follow fails here.

The tools are dev dependencies (pyproject.toml), so a missing one is a failure, not a skip.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from common.config import load_config
from cluster.launcher import MODULES, STAGES
from gateway.config import GatewayConfig
from gateway.stage_target import HEALTH_SERVICE, SERVICE_CONFIG, stage_target
from rank_server.config import RankConfig
from recall_server.config import RecallConfig
from rerank_server.config import RerankConfig

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
RAY = K8S / "ray"   # the overlay with the export on KubeRay (issue 29)
RAYJOB_CRD = ROOT / "deploy" / "schemas" / "ray.io_rayjobs.yaml.gz"   # gzip: 1.4 MB of YAML, 0.1 MB stored
KUBERAY_VERSION = "v1.7.0"   # the release the vendored CRD comes from (its header names tag and commit)
# sha256 of the vendored CRD below its header: the file as KubeRay published it, not edited here
RAYJOB_CRD_SHA256 = "01a5cf3b17c1769fda44af7e82debcd98722f0c27b9ab84d084681c6649121f5"
RAY_PATCHES = {"drop-export-cronjob.yaml"}   # kustomize patches in ray/, not objects
DOCKERFILE = ROOT / "Dockerfile"
NAMESPACE = "recsys"
CONFIGS = {"recall": RecallConfig, "rank": RankConfig, "rerank": RerankConfig, "gateway": GatewayConfig}
TLS_DIR = "/etc/recsys/tls"
GATEWAY_TLS_DIR = "/etc/recsys/gateway-tls"  # the gateway's own client certificate to the stages (issue 31)
TLS_KEYS = {"tls_cert", "tls_key", "tls_client_ca", "stage_tls_ca", "stage_tls_cert", "stage_tls_key",
            "tls_allowed_clients", "metrics_host"}
GATEWAY_IDENTITY = "URI:spiffe://recsys/gateway"
KEEP_PREVIOUS_S = 60.0  # common.reload.Reloader's default keep_previous_s, which the servers use


def tool(name: str) -> str:
    """A dev tool installed beside this interpreter (make test installs .[dev]); missing is a failure."""
    path = Path(sys.executable).parent / name
    assert path.exists(), f"{name} is not installed: pip install -e '.[dev]'"
    return str(path)


def manifest_files() -> list[Path]:
    """Every Kubernetes object file: the base, the mtls overlay's patch and the ray overlay's objects (not the
    kustomizations, nor the ray overlay's delete patch)."""
    return sorted(p for p in [*K8S.glob("*.yaml"), *K8S.glob("mtls/*.yaml"), *RAY.glob("*.yaml")]
                  if p.name != "kustomization.yaml" and p.name not in RAY_PATCHES)


def is_custom(doc: dict) -> bool:
    """An object of a CRD (KubeRay's ray.io), which the Kubernetes schemas do not know."""
    return doc["apiVersion"].split("/")[0].endswith("ray.io")


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    """The base's objects (what ``kubectl apply -k deploy/k8s`` creates)."""
    return [d for p in manifest_files() if p.parent == K8S for d in yaml.safe_load_all(p.read_text()) if d]


def find(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def configs(docs) -> dict[str, object]:
    """Each process's config, loaded from the ConfigMap's file with the process's own config class."""
    data = find(docs, "ConfigMap", "recsys-config")["data"]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cls in CONFIGS.items():
            path = Path(tmp) / f"{name}.toml"
            path.write_text(data[f"{name}.toml"])
            out[name] = load_config(cls, path)  # unknown keys or wrong types raise here
    return out


def test_kustomization_lists_every_manifest():
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in manifest_files() if p.parent == K8S)
    overlay = yaml.safe_load((K8S / "mtls" / "kustomization.yaml").read_text())
    assert overlay["resources"] == ["../"] and overlay["patches"] == [{"path": "config-tls.yaml"}]


def test_manifests_validate_strictly_against_the_newest_schemas():
    from kubernetes_validate import utils

    version = utils.latest_version()  # the newest minor the installed kubernetes-validate ships
    count = 0
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and is_custom(doc):
                # a CRD's object: its own schema (below); the pod templates it holds, as Pods
                for template in rayjob_pod_templates(doc).values():
                    utils.validate({"apiVersion": "v1", "kind": "Pod", **template}, version, strict=True)
                    count += 1
            elif doc:
                utils.validate(doc, version, strict=True)  # raises ValidationError naming the field
                count += 1
    assert count >= 24


def test_dockerfile_passes_hadolint():
    result = subprocess.run([tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_checkov_fails_no_check_and_every_skip_has_a_reason(tmp_path):
    # checkov skips custom resources, so the RayJob's pod templates go to it as Pods (with their annotations)
    pods = tmp_path / "rayjob-pods.yaml"
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and is_custom(doc):
                pods.write_text(yaml.safe_dump_all([
                    {"apiVersion": "v1", "kind": "Pod", "spec": template["spec"],
                     "metadata": {**template["metadata"], "name": f"{doc['metadata']['name']}-{role}",
                                  "namespace": doc["metadata"]["namespace"]}}
                    for role, template in rayjob_pod_templates(doc).items()]))
    assert pods.exists()
    result = subprocess.run(
        [tool("checkov"), "-f", *map(str, manifest_files()), str(pods), str(DOCKERFILE), "--framework", "kubernetes",
         "dockerfile", "--skip-download", "--compact", "-o", "json"],
        capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, BC_SKIP_MAPPING="TRUE"))
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert {r["check_type"] for r in reports} == {"kubernetes", "dockerfile"}, result.stderr[-2000:]
    failed = [(c["check_id"], c["resource"], c["file_path"]) for r in reports for c in r["results"]["failed_checks"]]
    assert failed == []
    skipped = [c for r in reports for c in r["results"]["skipped_checks"]]
    assert all(len(c["check_result"].get("suppress_comment") or "") > 20 for c in skipped), skipped
    assert sum(r["summary"]["passed"] for r in reports) > 600
    # the RayJob's three pods were checked
    assert {c["resource"] for r in reports for c in r["results"]["passed_checks"]
            if c["file_path"].endswith(pods.name)} >= {f"Pod.recsys.export-{role}" for role in ("submitter", "head")}


def container(deployment: dict) -> dict:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def port_named(c: dict, name: str) -> int:
    return next(p["containerPort"] for p in c["ports"] if p["name"] == name)


@pytest.mark.parametrize("name", [*STAGES, "gateway"])
def test_deployment_matches_its_config(docs, configs, name):
    cfg = configs[name]
    dep = find(docs, "Deployment", name)
    pod = dep["spec"]["template"]["spec"]
    c = container(dep)
    assert c["image"].startswith("recsys-serving:")
    assert c["args"][:3] == [MODULES[name], "--config", f"/etc/recsys/{name}.toml"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["config"]["mountPath"] == "/etc/recsys" and volumes["config"]["configMap"]["name"] == "recsys-config"
    # the snapshot root the config names is the read-only snapshot volume
    assert cfg.snapshot == mounts["snapshots"]["mountPath"] and mounts["snapshots"]["readOnly"] is True
    assert volumes["snapshots"]["persistentVolumeClaim"]["claimName"] == "recsys-snapshots"
    # numba's cache (NUMBA_CACHE_DIR in the Dockerfile) needs the writable /tmp on a read-only root
    assert mounts["tmp"]["mountPath"] == "/tmp" and "emptyDir" in volumes["tmp"]
    # the optional mTLS Secret (mtls/), where the overlay's config files look for it
    assert mounts["tls"]["mountPath"] == TLS_DIR and mounts["tls"]["readOnly"] is True
    assert volumes["tls"]["secret"] == {"secretName": "recsys-tls", "optional": True, "defaultMode": 0o440}
    # ports: the server binds every interface on the port the probes, the Service and the peers use
    assert cfg.server.host == "0.0.0.0"
    assert port_named(c, "grpc") == cfg.server.port and port_named(c, "metrics") == cfg.server.metrics_port
    # probes hit the plaintext health-only port (kubelet gRPC probes cannot speak TLS), same statuses
    assert port_named(c, "health") == cfg.server.health_port
    assert len({cfg.server.port, cfg.server.metrics_port, cfg.server.health_port}) == 3
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc_probe = c[probe]["grpc"]
        assert grpc_probe["port"] == cfg.server.health_port, probe
        assert grpc_probe.get("service", "") == HEALTH_SERVICE, probe  # the whole-server status
    # drain: readiness fails within drain_s, the pod gets drain_s + grace_s (+ margin) before SIGKILL
    ready = c["readinessProbe"]
    assert ready["periodSeconds"] * ready["failureThreshold"] + ready["timeoutSeconds"] <= cfg.server.drain_s
    assert pod["terminationGracePeriodSeconds"] >= cfg.server.drain_s + cfg.server.grace_s + 3
    # in-flight calls finish: no request outlives the gateway's largest deadline
    assert cfg.server.grace_s * 1000 >= configs["gateway"].max_deadline_ms
    assert dep["metadata"]["labels"]["app.kubernetes.io/name"] == name
    assert dep["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": name}
    hpa = find(docs, "HorizontalPodAutoscaler", name)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert c["resources"]["requests"]["cpu"]  # HPA utilisation is relative to the request
    pdb = find(docs, "PodDisruptionBudget", name)
    assert pdb["spec"]["selector"] == dep["spec"]["selector"]
    svc = find(docs, "Service", name)
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(cfg.server.port, "grpc")]


@pytest.mark.parametrize("stage", STAGES)
def test_gateway_dials_each_stage_through_its_headless_service(docs, configs, stage):
    addr = getattr(configs["gateway"], f"{stage}_addr")
    svc = find(docs, "Service", stage)
    assert svc["spec"]["clusterIP"] == "None"  # headless: one A record per ready pod
    assert addr == f"dns:///{stage}.{NAMESPACE}.svc.cluster.local:{configs[stage].server.port}"
    assert stage_target(addr) == (addr, [("grpc.service_config", SERVICE_CONFIG)])  # round_robin + health


def test_gateway_service_is_a_normal_cluster_ip(docs):
    assert find(docs, "Service", "gateway")["spec"].get("clusterIP") != "None"


def test_shutdown_order_and_reload_timing(configs):
    gateway = configs["gateway"].server
    for stage in STAGES:
        # everything stopping at once (rollout of all, node drain): the gateway is gone before a stage refuses
        assert configs[stage].server.drain_s > gateway.drain_s + gateway.grace_s, stage
        # dns:/// clients find new replicas only when a connection ends
        assert 0 < configs[stage].server.max_connection_age_s
    # the gateway pins each request's version and switches last, once the stages report holding the new one
    # (or after reload_activate_timeout_s); every stage keeps the previous version long enough for that
    gateway_cfg = configs["gateway"]
    stages_poll = max(configs[s].reload_poll_s for s in STAGES)
    assert gateway_cfg.reload_activate_timeout_s + gateway_cfg.reload_poll_s + stages_poll < KEEP_PREVIOUS_S


def test_network_policy_lets_only_the_gateway_reach_the_stages(docs, configs):
    policy = find(docs, "NetworkPolicy", "stages-from-gateway")
    stage_labels = [find(docs, "Deployment", s)["spec"]["template"]["metadata"]["labels"] for s in STAGES]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert all(selector.items() <= labels.items() for labels in stage_labels)
    gateway_labels = find(docs, "Deployment", "gateway")["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= gateway_labels.items()
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchLabels"].items() <= gateway_labels.items() and "namespaceSelector" not in peer
    assert sorted(p["port"] for p in rule["ports"]) == sorted(configs[s].server.port for s in STAGES)
    deny = find(docs, "NetworkPolicy", "default-deny-ingress")["spec"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"] and "ingress" not in deny


def test_only_the_scraper_reaches_metrics_and_only_the_gateway_holds_its_client_identity(docs, configs):
    metrics_ports = {cfg.server.metrics_port for cfg in configs.values()}
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = {p["port"] for p in rule.get("ports", [])}
            if policy["metadata"]["name"] != "metrics-from-monitoring":
                assert ports and not ports & metrics_ports, policy["metadata"]["name"]
                continue
            assert ports == metrics_ports
            for peer in rule["from"]:  # a namespace AND a pod selector: the scraper's pods, not its namespace
                assert peer["namespaceSelector"]["matchLabels"] and peer["podSelector"]["matchLabels"], peer
    for name in CONFIGS:
        pod = find(docs, "Deployment", name)["spec"]["template"]["spec"]
        secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        assert ("recsys-gateway-client-tls" in secrets) == (name == "gateway"), name
        # logs: stderr only under Kubernetes (the runtime collects and rotates them): no log volume or file
        assert not any("log" in m["mountPath"] for m in container(find(docs, "Deployment", name))["volumeMounts"])
        assert not any("log" in a for a in container(find(docs, "Deployment", name))["args"])


def test_export_job_publishes_where_the_servers_read(docs, configs):
    cron = find(docs, "CronJob", "export")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["image"].startswith("recsys-export:")
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    out = next(a.split("=", 1)[1] for a in c["args"] if a.startswith("out="))
    assert out == mounts["snapshots"]["mountPath"] and not mounts["snapshots"].get("readOnly")
    assert volumes["snapshots"]["persistentVolumeClaim"]["claimName"] == "recsys-snapshots"
    assert all(cfg.snapshot == out for cfg in configs.values())
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["RECSYS_DATA_DIR"] == mounts["data"]["mountPath"]
    assert "RECSYS_DATA_DIR" in (ROOT / "export" / "data" / "atomic.py").read_text()  # the name the export reads
    claims = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert claims["recsys-snapshots"]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_dockerfile_matches_the_manifests(docs, configs):
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    exposed = {int(p) for line in lines if line.startswith("EXPOSE ") for p in line.split()[1:]}
    assert exposed == {cfg.server.port for cfg in configs.values()}
    user = next(line.split()[1] for line in lines if line.startswith("USER "))
    targets = {line.split()[-1] for line in lines if line.startswith("FROM ") and " AS " in line}
    assert {"serving", "export"} <= targets
    pods = [find(docs, "Deployment", n)["spec"]["template"]["spec"] for n in CONFIGS]
    pods.append(find(docs, "CronJob", "export")["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    for pod in pods:
        ctx = pod["securityContext"]
        assert f"{ctx['runAsUser']}:{ctx['runAsGroup']}" == user
        sec = pod["containers"][0]["securityContext"]
        assert sec["readOnlyRootFilesystem"] and not sec["allowPrivilegeEscalation"]
        assert sec["capabilities"]["drop"] == ["ALL"]
    assert 'ENTRYPOINT ["python", "-m"]' in lines and 'ENTRYPOINT ["python", "-m", "export"]' in lines


def test_mtls_overlay_only_adds_tls_and_loads_with_real_certificates(docs, tmp_path):
    """mtls/ = the base config plus TLS keys pointing into the Secret's mount; with certificates there, every
    process's config loads (check_pair reads each file)."""
    from tests.test_tls import make_pki

    pki = make_pki(tmp_path)
    files = {"tls.crt": pki["server.pem"], "tls.key": pki["server.key"], "ca.crt": pki["ca.pem"]}
    client_files = {"tls.crt": pki["client.pem"], "tls.key": pki["client.key"]}
    base = find(docs, "ConfigMap", "recsys-config")["data"]
    (patch,) = yaml.safe_load_all((K8S / "mtls" / "config-tls.yaml").read_text())
    assert patch["metadata"] == {"name": "recsys-config", "namespace": NAMESPACE}
    assert sorted(patch["data"]) == sorted(base)
    import tomllib

    for name, cls in CONFIGS.items():
        text = patch["data"][f"{name}.toml"]
        overlay, plain = tomllib.loads(text), tomllib.loads(base[f"{name}.toml"])
        added = {k: overlay.pop(k) for k in TLS_KEYS & overlay.keys()}
        added |= {f"server.{k}": overlay["server"].pop(k) for k in TLS_KEYS & overlay["server"].keys()}
        assert overlay == plain, name  # nothing but TLS differs from the base
        assert {"server.tls_cert", "server.tls_key", "server.tls_client_ca"} <= added.keys(), name
        # metrics stay reachable by the scraper (the NetworkPolicy admits only it), not loopback-only under TLS
        assert added.pop("server.metrics_host") == "0.0.0.0", name
        if name == "gateway":
            assert {"stage_tls_ca", "stage_tls_cert", "stage_tls_key"} <= added.keys()
            assert "server.tls_allowed_clients" not in added  # callers: any certificate of the CA
            for key in ("stage_tls_cert", "stage_tls_key"):  # its own identity, from a Secret only it mounts
                path = added.pop(key)
                assert Path(path).parent == Path(GATEWAY_TLS_DIR) and Path(path).name in client_files, path
        else:  # the stages serve the gateway's identity only
            assert added.pop("server.tls_allowed_clients") == [GATEWAY_IDENTITY], name
        for path in added.values():
            assert Path(path).parent == Path(TLS_DIR) and Path(path).name in files, path
        for secret_name, local in files.items():
            text = text.replace(f"{TLS_DIR}/{secret_name}", local)
        for secret_name, local in client_files.items():
            text = text.replace(f"{GATEWAY_TLS_DIR}/{secret_name}", local)
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        cfg = load_config(cls, path)
        assert cfg.server.tls_client_ca == pki["ca.pem"]


# ---- the export on KubeRay (deploy/k8s/ray, issue 29) ----

def rayjob_pod_templates(job: dict) -> dict[str, dict]:
    """The pod templates of a RayJob: its submitter, the head and each worker group."""
    spec = job["spec"]
    out = {"submitter": spec["submitterPodTemplate"], "head": spec["rayClusterSpec"]["headGroupSpec"]["template"]}
    for group in spec["rayClusterSpec"].get("workerGroupSpecs", []):
        out[f"worker-{group['groupName']}"] = group["template"]
    return out


def strict_crd_schema(schema: dict) -> dict:
    """A CRD's structural openAPIV3Schema as JSON Schema that rejects unknown fields, as the API server does
    for a custom resource under ``kubectl apply --validate=strict`` (fields a schema does not declare are
    errors, except under ``x-kubernetes-preserve-unknown-fields``); ``x-kubernetes-int-or-string`` is the
    anyOf it means. The ``x-kubernetes-validations`` (CEL) rules are not evaluated here."""
    if isinstance(schema, list):
        return [strict_crd_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_crd_schema(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields") \
            and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def rayjob_schema() -> dict:
    import gzip
    import hashlib

    text = gzip.decompress(RAYJOB_CRD.read_bytes()).decode()
    header, body = text.split("\n---\n", 1)
    assert KUBERAY_VERSION in header
    assert hashlib.sha256(("---\n" + body).encode()).hexdigest() == RAYJOB_CRD_SHA256, "the vendored CRD was edited"
    crd = yaml.safe_load(body)
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == "RayJob"
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    assert v1["served"] and v1["storage"]
    return strict_crd_schema(v1["schema"]["openAPIV3Schema"])


@pytest.fixture(scope="module")
def rayjob() -> dict:
    (job,) = [d for d in yaml.safe_load_all((RAY / "export-rayjob.yaml").read_text()) if d]
    return job


def test_rayjob_validates_strictly_against_the_vendored_crd_schema(rayjob, rayjob_schema):
    import jsonschema

    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    validator = jsonschema.Draft7Validator(rayjob_schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(rayjob)]
    assert errors == []
    # the check is strict: a misspelt field, a wrong type, or a field in the wrong place fails it
    import copy

    for path, key, value in [((), "shutdownAfterJobFinish", True), (("rayClusterSpec",), "rayVersion", 2.52),
                             (("rayClusterSpec", "headGroupSpec", "template", "spec"), "containerz", [])]:
        bad = copy.deepcopy(rayjob)
        node = bad["spec"]
        for p in path:
            node = node[p]
        node[key] = value
        assert list(validator.iter_errors(bad)), (path, key)


def test_ray_overlay_replaces_the_export_pod_with_the_rayjob(docs):
    kustomization = yaml.safe_load((RAY / "kustomization.yaml").read_text())
    assert kustomization["resources"][0] == "../"
    assert sorted(kustomization["resources"][1:]) == sorted(p.name for p in RAY.glob("*.yaml")
                                                            if p.name != "kustomization.yaml" and p.name not in RAY_PATCHES)
    assert kustomization["patches"] == [{"path": name} for name in sorted(RAY_PATCHES)]
    (patch,) = yaml.safe_load_all((RAY / "drop-export-cronjob.yaml").read_text())
    cron = find(docs, "CronJob", "export")
    assert patch == {"$patch": "delete", "apiVersion": cron["apiVersion"], "kind": "CronJob",
                     "metadata": {"name": "export", "namespace": NAMESPACE}}


def test_rayjob_publishes_where_the_servers_read(docs, configs, rayjob):
    """The same contract as the single pod's (test_export_job_publishes_where_the_servers_read): the driver (on
    the head) writes the snapshot to the shared volume the servers read, from the data volume; the entrypoint's
    --set keys load with ExportConfig and ask for the Ray engine on the RayJob's own cluster, with as many
    workers as the worker groups offer CPUs."""
    from export.config import ExportConfig

    assert rayjob["metadata"]["namespace"] == NAMESPACE
    spec = rayjob["spec"]
    argv = spec["entrypoint"].split()
    assert argv[:3] == ["python", "-m", "export"]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    assert len(sets) * 2 == len(argv) - 3
    cfg = load_config(ExportConfig, None, sets)   # unknown keys or wrong types raise here
    assert cfg.engine == "ray" and cfg.ray.address == "auto"
    groups = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert cfg.ray.workers == sum(g["replicas"] * int(g["rayStartParams"]["num-cpus"]) for g in groups)
    assert all(g["minReplicas"] == g["replicas"] == g["maxReplicas"] for g in groups)
    head = spec["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"   # tasks and Train workers never share the driver's CPUs
    templates = rayjob_pod_templates(rayjob)
    pod = templates["head"]["spec"]
    (c,) = pod["containers"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert cfg.out == mounts["snapshots"]["mountPath"] and not mounts["snapshots"].get("readOnly")
    assert volumes["snapshots"]["persistentVolumeClaim"]["claimName"] == "recsys-snapshots"
    assert all(conf.snapshot == cfg.out for conf in configs.values())
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["RECSYS_DATA_DIR"] == mounts["data"]["mountPath"] and mounts["data"]["readOnly"]
    # Ray Train's checkpoint goes back to the driver through <out>/.ray-train-*: every worker mounts <out> too
    for name, template in templates.items():
        if name.startswith("worker-"):
            (w,) = template["spec"]["containers"]
            wm = {m["name"]: m for m in w["volumeMounts"]}
            assert wm["snapshots"]["mountPath"] == cfg.out, name
            wv = {v["name"]: v for v in template["spec"]["volumes"]}
            assert wv["snapshots"]["persistentVolumeClaim"]["claimName"] == "recsys-snapshots", name
            assert wv["shm"]["emptyDir"]["medium"] == "Memory", name


def test_rayjob_pods_run_the_export_ray_image_locked_down(rayjob):
    from tests.test_lock import _pins

    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    user = next(line.split()[1] for line in lines if line.startswith("USER "))
    targets = {line.split()[-1] for line in lines if line.startswith("FROM ") and " AS " in line}
    assert "export-ray" in targets and "-r requirements/kuberay.txt" in DOCKERFILE.read_text()
    ray_pin = _pins(ROOT / "requirements" / "kuberay.txt")["ray"]
    assert rayjob["spec"]["rayClusterSpec"]["rayVersion"] == ray_pin
    for name, template in rayjob_pod_templates(rayjob).items():
        labels = template["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "export", name
        pod = template["spec"]
        assert pod["automountServiceAccountToken"] is False, name
        ctx = pod["securityContext"]
        assert f"{ctx['runAsUser']}:{ctx['runAsGroup']}" == user and ctx["runAsNonRoot"], name
        assert ctx["seccompProfile"]["type"] == "RuntimeDefault", name
        for c in pod["containers"]:
            assert c["image"].startswith("recsys-export-ray:"), name
            assert "command" not in c and "args" not in c, name   # KubeRay sets them (ray start, ray job submit)
            sec = c["securityContext"]
            assert sec["readOnlyRootFilesystem"] and not sec["allowPrivilegeEscalation"], name
            assert sec["capabilities"]["drop"] == ["ALL"], name
            assert c["resources"]["requests"] and c["resources"]["limits"], name
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            assert "/tmp" in mounts, name   # HOME, Ray's session dir and numba's cache on a read-only root


def test_ray_network_policy_admits_only_the_exports_own_pods(rayjob):
    (policy,) = yaml.safe_load_all((RAY / "network-policy-ray.yaml").read_text())
    selector = policy["spec"]["podSelector"]["matchLabels"]
    for name, template in rayjob_pod_templates(rayjob).items():
        assert selector.items() <= template["metadata"]["labels"].items(), name
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    assert peer == {"podSelector": {"matchLabels": selector}}   # no namespace selector: this namespace only
