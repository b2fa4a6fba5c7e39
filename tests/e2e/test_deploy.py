"""``deploy/kubernetes`` and the ``Dockerfile``: valid, and what the README promises of them.

No cluster here. The manifests are validated against the Kubernetes API's own schemas, which
``kubernetes-validate`` ships (strict: an unknown field is an error; no network needed), for the
oldest and the newest version we claim; the ServiceMonitor, a CRD it has no schema for, against
the subset schema in ``deploy/kubernetes/schemas/``. Then the manifests are read for the probes,
the non-root user and restricted security context, the secrets as files, and the triggers job.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.support import ROOT

K8S = ROOT / "deploy" / "kubernetes"
VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
NOT_BUILT_IN = {"kustomization.yaml", "servicemonitor.yaml"}  # kustomize's own file; a CRD
SECRET_VARIABLES = ("DATABASE_URL", "BETTER_AUTH_SECRET", "REDIS_URL")


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifest(kind: str) -> dict[str, Any]:
    found = [doc for path in K8S.glob("*.yaml") for doc in documents(path) if doc.get("kind") == kind]
    assert len(found) == 1, kind
    return found[0]


def built_in() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name not in NOT_BUILT_IN)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", [*built_in(), ROOT / "examples" / "ingress-nginx" / "ingress.yaml"], ids=str)
def test_manifest_is_valid_for_kubernetes(path: Path, version: str) -> None:
    """Every resource validates, strictly, against that Kubernetes version's API schema."""
    for doc in documents(path):
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validation_can_fail() -> None:
    """A misspelt field, or a wrongly typed one, is refused (the check above is not vacuous)."""
    deployment = manifest("Deployment")
    misspelt = copy.deepcopy(deployment)
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    mistyped = copy.deepcopy(deployment)
    mistyped["spec"]["replicas"] = "two"
    for broken in (misspelt, mistyped):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_service_monitor_is_valid_against_the_vendored_schema() -> None:
    """The ServiceMonitor matches the subset schema of its CRD, which refuses a misspelt field."""
    schema = json.loads((K8S / "schemas" / "servicemonitor-v1.schema.json").read_text())
    monitor = manifest("ServiceMonitor")
    jsonschema.validate(monitor, schema)
    broken = copy.deepcopy(monitor)
    broken["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in manifest("Service")["spec"]["ports"]}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= manifest("Service")["metadata"]["labels"].items()


def test_kustomization_applies_every_built_in_manifest() -> None:
    """kustomization.yaml lists each manifest of a built-in kind (the CRD's is left to the operator's clusters)."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in built_in())
    assert "servicemonitor.yaml" not in kustomization["resources"]


def pod_spec(kind: str) -> dict[str, Any]:
    spec: dict[str, Any] = manifest(kind)["spec"]["template"]["spec"]
    return spec


def assert_restricted(spec: dict[str, Any]) -> None:
    """The pod and each container as Pod Security's "restricted" profile requires, and a read-only root."""
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == 10001  # the image's user (Dockerfile)
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    for container in spec["containers"]:
        ctx = container["securityContext"]
        assert ctx["runAsNonRoot"] is True
        assert ctx["runAsUser"] != 0
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["capabilities"]["drop"] == ["ALL"]
        assert "add" not in ctx["capabilities"]
        assert ctx.get("privileged", False) is False
        assert ctx["seccompProfile"]["type"] == "RuntimeDefault"
        assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
        assert "memory" in container["resources"]["limits"]


def test_deployment_probes_and_security_context() -> None:
    """Liveness on /healthz (no I/O), readiness on /readyz, a non-root user, the restricted context."""
    spec = pod_spec("Deployment")
    (gateway,) = spec["containers"]
    assert gateway["args"] == ["serve"]
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert all(gateway[probe]["httpGet"]["port"] in ports for probe in ("livenessProbe", "readinessProbe"))
    assert_restricted(spec)
    # The root filesystem is read-only: the workers' metrics (PROMETHEUS_MULTIPROC_DIR) go to /tmp.
    mounts = {m["mountPath"]: m["name"] for m in gateway["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]  # noqa: S108  (the container's own /tmp)
    config = manifest("ConfigMap")["data"]
    grace = float(config["GATEWAY_SHUTDOWN_GRACE_S"])
    assert spec["terminationGracePeriodSeconds"] > grace + 5  # the grace, after the preStop pause
    assert config["GATEWAY_PROXY"] == "ingress-nginx"


def environment(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def assert_secrets_are_files(spec: dict[str, Any], names: tuple[str, ...]) -> None:
    """Each of ``names`` comes as ``NAME_FILE``, a file of a mounted Secret: never in the environment."""
    (container,) = spec["containers"]
    env = environment(container)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounted = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    secret_dirs = {path: volume["secret"] for path, volume in mounted.items() if "secret" in volume}
    for name in names:
        assert name not in env, f"{name} in the environment"
        path = Path(env[name + "_FILE"]["value"])
        secret = secret_dirs[str(path.parent)]
        assert path.name in {item["path"] for item in secret["items"]}
        assert secret["defaultMode"] & 0o007 == 0  # not world-readable
    assert not any("secretKeyRef" in e.get("valueFrom", {}) for e in env.values())
    assert all(source.keys() == {"configMapRef"} for source in container.get("envFrom", []))


def test_secrets_are_mounted_files_passed_with_file_variables() -> None:
    """The database URL, Better Auth's secret and the Redis URL reach the gateway as files (``*_FILE``)."""
    assert_secrets_are_files(pod_spec("Deployment"), SECRET_VARIABLES)
    config = manifest("ConfigMap")["data"]
    assert not set(config) & {*SECRET_VARIABLES, "BETTER_AUTH_SECRETS", "AUTH_SECRET"}


def test_triggers_job_installs_them_with_the_gateway_image() -> None:
    """A Job runs ``gateway install-triggers`` from the gateway's image, restricted, its DSN from a file."""
    job = manifest("Job")
    spec = job["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    (gateway,) = pod_spec("Deployment")["containers"]
    assert container["args"] == ["install-triggers"]
    assert container["image"] == gateway["image"]
    assert spec["restartPolicy"] in {"OnFailure", "Never"}
    assert job["spec"]["backoffLimit"] > 0  # retried while Better Auth's tables are not there yet
    assert_restricted(spec)
    assert_secrets_are_files(spec, ("DATABASE_URL",))


def test_service_pdb_and_ingress_reach_the_gateway_pods() -> None:
    """The Service and the PodDisruptionBudget select the Deployment's pods; the Ingress's auth-url is the Service."""
    deployment = manifest("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service, pdb = manifest("Service"), manifest("PodDisruptionBudget")
    assert service["spec"]["selector"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]  # a drain can always proceed
    (port,) = service["spec"]["ports"]
    (gateway,) = deployment["spec"]["template"]["spec"]["containers"]
    assert port["targetPort"] in {p["name"] for p in gateway["ports"]}
    namespace = service["metadata"]["namespace"]
    assert manifest("Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    host = f"http://{service['metadata']['name']}.{namespace}.svc.cluster.local:{port['port']}/validate"
    for ingress in documents(ROOT / "examples" / "ingress-nginx" / "ingress.yaml"):
        assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/auth-url"].startswith(host)


def test_dockerfile_has_oci_labels_and_a_pinned_base() -> None:
    """The image carries the OCI labels, and its base is an exact version tag (not ``3.12-slim``)."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    labels = set(re.findall(r"org\.opencontainers\.image\.(\w+)=", dockerfile))
    assert {"title", "description", "source", "licenses", "version"} <= labels
    assert 'org.opencontainers.image.licenses="MIT"' in dockerfile
    (base,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, re.MULTILINE)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base), base
    assert all(line.split()[1] == "${PYTHON_IMAGE}" for line in re.findall(r"^FROM .*$", dockerfile, re.MULTILINE))


def test_bench_script_names_what_is_missing(tmp_path: Path) -> None:
    """``scripts/bench`` without wrk stops at once (exit 2, naming it), before making any venv."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("bash", "dirname"):
        (tools / tool).symlink_to(shutil.which(tool) or tool)
    result = subprocess.run(  # noqa: S603  (our own script)
        [str(tools / "bash"), str(ROOT / "scripts" / "bench")],
        env={"PATH": str(tools)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "wrk is not installed" in result.stderr
    bench = (ROOT / "scripts" / "bench").read_text()
    assert "--group bench" in bench
    assert "-m benchmarks.http_compare" in bench
