"""The team set-up (infra/): the compose file against the compose-spec schema, the
Kubernetes manifests against the Kubernetes schemas (strict), the work pool template
through Prefect's own checks, and the team config held to "only addresses change".

No Docker engine or cluster runs here: these are the checks a parser can make. Each
validator is also shown a deliberately broken copy, so a check that passes nothing
cannot pass everything either.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from ftops.config import DEFAULT_CONFIG, load_config

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_DIR = ROOT / "infra" / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
TEAM_CONFIG = COMPOSE_DIR / "ftops.team.yaml"
K8S = ROOT / "infra" / "k8s"
WORK_POOL = K8S / "work-pool-gpu.json"
# The oldest Kubernetes minor still common on managed clusters, and the newest shipped
# by kubernetes-validate.
K8S_VERSIONS = ("1.31.0", "1.37.0")

# What the code and infra/README.md expect of the team column, by service name.
EXPECTED_SERVICES = {
    "postgres": "Prefect, MLflow and prediction-log database",
    "minio": "S3-compatible object store for MLflow artifacts",
    "prefect-server": "orchestration API + UI",
    "prefect-worker": "runs the flow runs (process work pool)",
    "mlflow": "tracking + registry server",
    "triton": "GPU Triton, onnxruntime_onnx",
    "gateway": "text in/out HTTP + prediction log",
    "evidently-ui": "drift dashboards",
}
ONE_SHOTS = {"minio-init", "ftops-init"}
# The only config keys allowed to differ from deploy/ftops.yaml.
ADDRESS_KEYS = ("uris.",)
RUNTIME_KEY = "serving.runtime"  # the one non-address difference: GPU Triton's own backend
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|API_KEY", re.IGNORECASE)
URL_WITH_PASSWORD = re.compile(r"[a-z0-9+.-]+://[^/\s:@'\"]+:[^/\s@'\"]+@", re.IGNORECASE)


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def k8s_docs() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in k8s_files() for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_services() -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in k8s_docs() if doc["kind"] == "Service"}


# ---------------------------------------------------------------- compose


def check_compose(path: Path) -> subprocess.CompletedProcess:
    """check-jsonschema with the compose-spec schema it vendors (no network)."""
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                           str(path)], capture_output=True, text=True, timeout=120)


def test_compose_file_follows_the_compose_spec(tmp_path):
    done = check_compose(COMPOSE)
    assert done.returncode == 0, done.stdout + done.stderr

    broken = compose()
    broken["services"]["triton"]["shm_sizes"] = "1gb"          # a typo
    broken["services"]["mlflow"]["ports"] = {"5000": 5000}     # a mapping where a list belongs
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken))
    done = check_compose(path)
    assert done.returncode == 1
    assert "shm_sizes" in done.stdout and "ports" in done.stdout


def test_compose_has_every_service_the_code_expects_with_healthchecks():
    services = compose()["services"]
    assert set(EXPECTED_SERVICES) <= set(services), set(EXPECTED_SERVICES) - set(services)
    for name, service in services.items():
        if name in ONE_SHOTS:
            assert service.get("restart") == "no", name
            continue
        assert "healthcheck" in service, f"{name} has no healthcheck"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        for dependency, condition in service.get("depends_on", {}).items():
            wanted = "service_completed_successfully" if dependency in ONE_SHOTS else "service_healthy"
            assert condition == {"condition": wanted}, (name, dependency)


RESTARTING = {"unless-stopped", "always", "on-failure"}
READINESS = {"triton": "/v2/health/ready", "gateway": "/health", "mlflow": "/health",
             "prefect-server": "/api/health"}  # what each answers once it can serve


def restart_findings(compose_doc: dict, docs: list[dict]) -> list[str]:
    """Long-running services that would stay down after a crash: a compose service without
    a restart policy, a pod that is not restarted or lacks a liveness / readiness probe."""
    found = [f"compose {name}: restart {service.get('restart')!r}"
             for name, service in compose_doc["services"].items()
             if name not in ONE_SHOTS and service.get("restart") not in RESTARTING]
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        name, pod = doc["metadata"]["name"], doc["spec"]["template"]["spec"]
        if pod.get("restartPolicy", "Always") != "Always":
            found.append(f"k8s {name}: restartPolicy {pod['restartPolicy']}")
        for container in pod["containers"]:
            found += [f"k8s {name}/{container['name']}: no {probe}" for probe in ("livenessProbe", "readinessProbe")
                      if probe not in container]
        path = pod["containers"][0].get("readinessProbe", {}).get("httpGet", {}).get("path")
        if name in READINESS and path != READINESS[name]:
            found.append(f"k8s {name}: readiness {path}, not {READINESS[name]}")
    return found


def test_every_long_running_service_is_restarted_when_it_fails():
    docs = [doc for _, doc in k8s_docs()]
    assert restart_findings(compose(), docs) == []
    # the checker finds what it is for
    broken_compose = compose()
    broken_compose["services"]["gateway"].pop("restart")
    broken_docs = copy.deepcopy(docs)
    triton = next(d for d in broken_docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "triton")
    del triton["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]
    mlflow = next(d for d in broken_docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow")
    mlflow["spec"]["template"]["spec"]["restartPolicy"] = "Never"
    assert sorted(restart_findings(broken_compose, broken_docs)) == [
        "compose gateway: restart None", "k8s mlflow: restartPolicy Never", "k8s triton/triton: no livenessProbe"]


def test_compose_services_are_the_team_column():
    services = compose()["services"]
    mlflow = services["mlflow"]["command"]
    assert mlflow[:2] == ["mlflow", "server"]
    assert mlflow[mlflow.index("--backend-store-uri") + 1].startswith("postgresql+psycopg://")
    assert mlflow[mlflow.index("--artifacts-destination") + 1].startswith("s3://")
    assert "--serve-artifacts" in mlflow
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "ftops-mlflow" in services["minio-init"]["command"][0]  # the bucket MLflow writes to
    prefect = services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert prefect.startswith("postgresql+asyncpg://") and prefect.endswith("/prefect")

    triton = services["triton"]
    assert "--model-control-mode=explicit" in triton["command"]
    repository = next(a for a in triton["command"] if a.startswith("--model-repository="))
    assert repository == "--model-repository=/srv/ftops/triton/repository"  # <project dir>/triton/repository
    assert "ftops-project:/srv/ftops:ro" in triton["volumes"]
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    dockerfile = (COMPOSE_DIR / triton["build"]["dockerfile"]).read_text()
    assert re.search(r"^ARG TRITON_IMAGE=nvcr\.io/nvidia/tritonserver:\S+-py3$", dockerfile, re.M)

    # the ftops containers share one project dir and read the team config
    for name in ("prefect-worker", "gateway", "evidently-ui", "ftops-init"):
        service = services[name]
        assert service["environment"]["FTOPS_CONFIG"] == "/etc/ftops/ftops.yaml", name
        assert service["environment"]["FTOPS_PROJECT__DIR"] == "/srv/ftops", name
        assert "./ftops.team.yaml:/etc/ftops/ftops.yaml:ro" in service["volumes"], name
        assert "ftops-project:/srv/ftops" in service["volumes"], name
    init_sql = (COMPOSE_DIR / "postgres-init" / "10-databases.sql").read_text()
    for database in ("prefect", "mlflow", "predictions"):
        assert f"CREATE DATABASE {database};" in init_sql


def test_compose_env_files_are_examples_and_git_ignored():
    ignored = [line.strip().lstrip("/") for line in (ROOT / ".gitignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for name, service in compose()["services"].items():
        for env_file in service.get("env_file", []):
            real = (COMPOSE_DIR / env_file).resolve().relative_to(ROOT)
            assert any(fnmatch.fnmatch(str(real), pattern) for pattern in ignored), f"{real} is not git-ignored"
            example = COMPOSE_DIR / f"{env_file}.example"
            assert example.is_file(), f"{name}: no {example.name}"
            assert "EXAMPLE ONLY" in example.read_text()


def test_ftops_image_installs_the_pinned_set():
    dockerfile = (COMPOSE_DIR / "Dockerfile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    torch_pin = re.search(r'"(torch==[^"]+)"', pyproject).group(1)
    assert torch_pin in dockerfile
    assert "-c requirements/constraints.txt -e ." in dockerfile
    assert "-r requirements/assets.txt" in dockerfile
    serving = (ROOT / "requirements" / "serving.txt").read_text()
    triton = (COMPOSE_DIR / "Dockerfile.triton").read_text()
    for package in ("numpy", "tokenizers"):  # what the python-backend steps import
        pin = re.search(rf"^({package}==\S+)", serving, re.M).group(1)
        assert pin in triton, pin


# ---------------------------------------------------------------- secrets


def secret_findings(files: dict[str, str]) -> list[str]:
    """Secret values written into deployable files: URLs with a password, secret-named
    variables with a literal value (compose `environment`, Kubernetes `value`), Secret
    manifests. Secrets belong in env files / `kubectl create secret`."""
    found = []
    for name, text in files.items():
        if URL_WITH_PASSWORD.search(text):
            found.append(f"{name}: a URL with a password")
        docs = [json.loads(text)] if name.endswith(".json") else list(yaml.safe_load_all(text))
        for doc in docs:
            found += [f"{name}: {item}" for item in _literal_secrets(doc)]
            if isinstance(doc, dict) and doc.get("kind") == "Secret":
                found.append(f"{name}: a Secret manifest")
    return found


def _literal_secrets(node, in_environment: bool = False):
    if isinstance(node, dict):
        if "name" in node and "value" in node and SECRET_NAME.search(str(node["name"])):
            yield f"{node['name']} has a literal value"
        for key, value in node.items():
            if in_environment and SECRET_NAME.search(str(key)):
                yield f"{key} is set in the file"
            yield from _literal_secrets(value, key == "environment")
    elif isinstance(node, list):
        for item in node:
            if in_environment and isinstance(item, str) and SECRET_NAME.search(item.split("=")[0]):
                yield f"{item.split('=')[0]} is set in the file"
            yield from _literal_secrets(item)


def deployable_files() -> dict[str, str]:
    paths = [COMPOSE, TEAM_CONFIG, WORK_POOL, *k8s_files(), *K8S.glob("extras/*.yaml"),
             *COMPOSE_DIR.glob("postgres-init/*")]
    return {str(p.relative_to(ROOT)): p.read_text() for p in paths}


def test_no_secret_values_in_the_deployable_files():
    assert secret_findings(deployable_files()) == []
    # the checker finds what it is for
    leaky_compose = compose()
    leaky_compose["services"]["mlflow"]["environment"]["AWS_SECRET_ACCESS_KEY"] = "hunter2"
    leaky_k8s = {"kind": "Deployment", "spec": {"containers": [{"env": [{"name": "PGPASSWORD", "value": "x"}]}]}}
    found = secret_findings({
        "compose.yaml": yaml.safe_dump(leaky_compose),
        "ftops.yaml": "uris:\n  prediction_log: postgresql+psycopg://ftops:hunter2@postgres/predictions\n",
        "deploy.yaml": yaml.safe_dump(leaky_k8s),
        "secret.yaml": "kind: Secret\nmetadata: {name: x}\n",
    })
    assert len(found) == 4, found


def test_example_env_files_hold_only_placeholders():
    for example in COMPOSE_DIR.glob("env/*.env.example"):
        for line in example.read_text().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                if SECRET_NAME.search(key):
                    assert value.startswith("CHANGE-ME"), f"{example.name}: {key} is not a placeholder"


# ---------------------------------------------------------------- the team config


def flat(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): node}


def config_differences(default_path: Path, team_path: Path) -> dict[str, tuple]:
    """Keys whose values differ between two config files, both loaded by ftops itself
    (no environment overrides)."""
    default = flat(load_config(default_path, env={}).model_dump(mode="json"))
    team = flat(load_config(team_path, env={}).model_dump(mode="json"))
    return {key: (default.get(key), team.get(key)) for key in default.keys() | team.keys()
            if default.get(key) != team.get(key)}


def not_addresses(differences: dict) -> set[str]:
    return {key for key in differences if not key.startswith(ADDRESS_KEYS) and key != RUNTIME_KEY}


def test_team_config_differs_from_the_default_only_in_addresses(tmp_path):
    differences = config_differences(DEFAULT_CONFIG, TEAM_CONFIG)
    assert not_addresses(differences) == set(), (
        f"{differences}: copy the change of deploy/ftops.yaml into infra/compose/ftops.team.yaml "
        "and infra/k8s/config.yaml; only addresses may differ")
    assert differences[RUNTIME_KEY] == ("python_onnxruntime", "onnxruntime_onnx")
    assert differences["uris.triton"] == (None, "http://triton:8000")
    for key in ("uris.mlflow_tracking", "uris.prefect_api", "uris.prediction_log"):
        assert key in differences, key

    # a gate (or any setting) changed in one file and not the other is caught
    changed = yaml.safe_load(TEAM_CONFIG.read_text())
    changed["gates"]["p99_ms"] = 250
    changed["candidates"][0]["learning_rate"] = 1e-3
    path = tmp_path / "team.yaml"
    path.write_text(yaml.safe_dump(changed))
    assert not_addresses(config_differences(DEFAULT_CONFIG, path)) == {"gates.p99_ms", "candidates"}


def team_hosts() -> dict[str, tuple[str, int | None]]:
    from sqlalchemy.engine import make_url

    cfg = load_config(TEAM_CONFIG, env={})
    hosts = {}
    for key in ("mlflow_tracking", "mlflow_ui", "prefect_api"):
        url = urlparse(getattr(cfg.uris, key))
        hosts[f"uris.{key}"] = (url.hostname, url.port)
    log = make_url(cfg.uris.prediction_log)
    hosts["uris.prediction_log"] = (log.host, log.port)
    triton = urlparse(cfg.uris.triton)
    hosts["uris.triton"] = (triton.hostname, triton.port)
    hosts["uris.triton (grpc)"] = (triton.hostname, cfg.serving.grpc_port)
    return hosts


def test_every_team_address_is_a_compose_service_and_a_kubernetes_service():
    compose_services = compose()["services"]
    services = k8s_services()
    for key, (host, port) in team_hosts().items():
        assert host in compose_services, f"{key}: {host} is no compose service"
        assert host in services, f"{key}: {host} is no Kubernetes Service"
        ports = {p["port"] for p in services[host]["spec"]["ports"]}
        assert port in ports, f"{key}: the {host} Service does not expose {port}"
    cfg = load_config(TEAM_CONFIG, env={})
    assert {cfg.serving.http_port, cfg.serving.grpc_port, cfg.serving.metrics_port} <= \
        {p["port"] for p in services["triton"]["spec"]["ports"]}
    assert cfg.serving.gateway_port in {p["port"] for p in services["gateway"]["spec"]["ports"]}
    assert cfg.monitoring.ui_port in {p["port"] for p in services["evidently-ui"]["spec"]["ports"]}
    assert set(EXPECTED_SERVICES) - {"minio", "prefect-worker"} <= set(services)


# ---------------------------------------------------------------- Kubernetes


def validate_k8s(doc: dict, version: str) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifests_follow_the_kubernetes_schemas(version):
    import kubernetes_validate

    docs = k8s_docs()
    assert {doc["kind"] for _, doc in docs} >= {
        "Namespace", "ConfigMap", "PersistentVolumeClaim", "Service", "Deployment", "StatefulSet",
        "ServiceAccount", "Role", "RoleBinding", "HorizontalPodAutoscaler"}
    for path, doc in docs:
        try:
            validate_k8s(doc, version)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name} {doc['kind']}/{doc['metadata']['name']}: "
                        f"{'.'.join(map(str, exc.path))}: {exc.message}")

    triton = next(doc for _, doc in docs if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "triton")
    broken = copy.deepcopy(triton)
    broken["spec"]["template"]["spec"]["containers"][0]["resource"] = {}  # typo of `resources`
    with pytest.raises(kubernetes_validate.ValidationError, match="resource"):
        validate_k8s(broken, version)
    del broken["spec"]["selector"]
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s(broken, version)


def test_kustomization_applies_every_manifest_and_the_work_pool():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in k8s_files())
    generated = {g["name"]: g for g in kustomization["configMapGenerator"]}
    assert generated["ftops-work-pool"]["files"] == [WORK_POOL.name]
    assert generated["ftops-work-pool"]["options"]["disableNameSuffixHash"] is True
    for _, doc in k8s_docs():
        assert doc["kind"] == "Namespace" or doc["metadata"]["namespace"] == kustomization["namespace"]


def test_kubernetes_config_is_the_team_config():
    config_maps = {doc["metadata"]["name"]: doc for _, doc in k8s_docs() if doc["kind"] == "ConfigMap"}
    assert config_maps["ftops-config"]["data"]["ftops.yaml"] == TEAM_CONFIG.read_text(), \
        "infra/k8s/config.yaml must hold infra/compose/ftops.team.yaml verbatim (indented under data.ftops.yaml)"
    assert config_maps["postgres-init"]["data"]["10-databases.sql"] == \
        (COMPOSE_DIR / "postgres-init" / "10-databases.sql").read_text()


def test_kubernetes_references_resolve():
    """Every ConfigMap, PVC and ServiceAccount a pod names exists; Secrets are referenced
    (created with kubectl, infra/README.md), never defined."""
    docs = k8s_docs()
    defined = {(doc["kind"], doc["metadata"]["name"]) for _, doc in docs}
    defined.add(("ConfigMap", "ftops-work-pool"))  # generated by kustomization.yaml
    pod_specs = [doc["spec"]["template"]["spec"] for _, doc in docs if doc["kind"] in ("Deployment", "StatefulSet")]
    pod_specs.append(filled_job_manifest()["spec"]["template"]["spec"])
    secrets = set()
    for spec in pod_specs:
        assert spec.get("enableServiceLinks") is False  # Service env vars would shadow MLFLOW_* / PREFECT_*
        if "serviceAccountName" in spec:
            assert ("ServiceAccount", spec["serviceAccountName"]) in defined
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in defined
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in defined
        for container in spec.get("initContainers", []) + spec["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    secrets.add((ref["name"], ref["key"]))
    assert secrets == {("ftops-db", "password"), ("ftops-s3", "AWS_ACCESS_KEY_ID"),
                       ("ftops-s3", "AWS_SECRET_ACCESS_KEY")}
    readme = (ROOT / "infra" / "README.md").read_text()
    for name, key in secrets:
        assert f"create secret generic {name}" in readme and key in readme


def test_triton_autoscales_on_a_metric_the_adapter_serves():
    docs = k8s_docs()
    hpa = next(doc for _, doc in docs if doc["kind"] == "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "triton"}
    metric = hpa["spec"]["metrics"][0]
    assert metric["type"] == "Pods"
    rules = yaml.safe_load((K8S / "extras" / "prometheus-adapter-values.yaml").read_text())["rules"]["custom"]
    served = {rule["name"]["as"]: rule for rule in rules}
    rule = served[metric["pods"]["metric"]["name"]]
    for triton_metric in ("nv_inference_queue_duration_us", "nv_inference_request_success"):
        assert triton_metric in rule["metricsQuery"]  # Triton's own counters (metrics.md)
    triton = next(doc for _, doc in docs if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "triton")
    pod = triton["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8002"
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "--model-control-mode=explicit" in container["args"]


# ---------------------------------------------------------------- the GPU work pool


def sample_values(template: dict) -> dict:
    """What a worker fills in: the variables' defaults + a flow run's name, env, labels, command."""
    values = {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}
    values.update(name="lifecycle-7f3a", env={"PREFECT_API_URL": "http://prefect-server:4200/api"},
                  labels={"prefect.io/flow-run-id": "0b1c2d3e"}, command="python -m prefect.engine")
    return values


def filled_job_manifest(template: dict | None = None) -> dict:
    """The Job a Kubernetes worker would create from the template, with Prefect's own
    templating; then what prefect-kubernetes does before submitting: `args` split into a
    list and the run's env prepended to the container's env list."""
    from prefect.utilities.templating import apply_values

    template = template or json.loads(WORK_POOL.read_text())
    values = sample_values(template)
    manifest = apply_values(template["job_configuration"], values)["job_manifest"]
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    container["args"] = shlex.split(container["args"])
    container["env"] = [{"name": k, "value": v} for k, v in values["env"].items()] + container["env"]
    return manifest


def test_gpu_work_pool_template_passes_prefects_checks():
    from prefect.server.schemas.actions import validate_base_job_template

    template = json.loads(WORK_POOL.read_text())
    validate_base_job_template(template)  # what the Prefect server runs on `work-pool create`
    broken = copy.deepcopy(template)
    broken["job_configuration"]["job_manifest"]["spec"]["activeDeadlineSeconds"] = "{{ deadline }}"
    with pytest.raises(ValueError, match="deadline"):
        validate_base_job_template(broken)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_gpu_work_pool_job_is_a_valid_kubernetes_job(version):
    import kubernetes_validate

    manifest = filled_job_manifest()
    pod = manifest["spec"]["template"]["spec"]
    # prefect-kubernetes refuses a template without these two (a pod-spec quirk of its
    # checks); the API server drops them. Present for Prefect, removed for the schema.
    assert pod.pop("parallelism") == 1 and pod.pop("completions") == 1
    assert pod["restartPolicy"] == "Never" and pod["containers"][0]["name"] == "prefect-job"
    validate_k8s(manifest, version)

    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert container["args"] == ["python", "-m", "prefect.engine"]
    assert {"name": "FTOPS_CONFIG", "value": "/etc/ftops/ftops.yaml"} in container["env"]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    ftops_image = next(i for i in kustomization["images"] if i["name"].endswith("/ftops"))
    assert container["image"] == f"{ftops_image['name']}:{ftops_image['newTag']}"

    broken = copy.deepcopy(manifest)
    broken["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = [1]
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s(broken, version)
