"""The shipping files, checked offline: Compose and Swarm configs validate, the Containerfile lints, the
Kubernetes manifests match their schemas, every setting is documented, and the image's command line serves."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import compose
import pandas as pd
import pytest
import yaml

from tests.conftest import REPO, MlflowServer

COMPOSE = Path(compose.__file__).parent / "docker-compose"
BIN = Path(sys.executable).parent


def containerfile_instruction(name: str) -> str:
    """The (last) value of a Containerfile instruction, continuation lines joined."""
    text = (REPO / "Containerfile").read_text().replace("\\\n", " ")
    values = re.findall(rf"^{name}\s+(.+)$", text, flags=re.MULTILINE)
    assert values, f"no {name} in the Containerfile"
    return values[-1].strip()


def compose_config() -> dict[str, Any]:
    result = subprocess.run(
        [str(COMPOSE), "-f", str(REPO / "compose.yaml"), "--profile", "monitoring", "config", "--format", "json"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "COMPOSE_PROJECT_NAME": "fraud-inference"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def test_compose_validates_with_every_service_and_healthcheck() -> None:
    services = compose_config()["services"]
    assert set(services) == {
        "postgres", "minio", "minio-bucket", "mlflow", "seed", "fraud-inference", "prometheus", "grafana",
    }  # fmt: skip
    for name in ("postgres", "minio", "mlflow", "fraud-inference", "prometheus", "grafana"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert services["fraud-inference"]["depends_on"]["seed"]["condition"] == "service_completed_successfully"
    assert services["seed"]["command"] == ["seed-demo"]
    assert services["seed"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    mlflow = " ".join(services["mlflow"]["command"])
    assert "--backend-store-uri postgresql://" in mlflow
    assert "--artifacts-destination s3://mlflow --serve-artifacts" in mlflow
    assert services["fraud-inference"]["read_only"] is True
    assert services["fraud-inference"]["develop"]["watch"][0]["action"] == "sync+restart"
    assert services["prometheus"]["profiles"] == ["monitoring"]
    published = {(port["target"], port["published"]) for port in services["fraud-inference"]["ports"]}
    assert published == {(8000, "8000"), (8001, "8001")}  # HTTP, and the Open Inference Protocol over gRPC


@pytest.mark.program("docker")  # the CLI alone validates a stack; no engine needed
def test_swarm_stack_validates_and_keeps_admin_and_metrics_off_the_public_router() -> None:
    result = subprocess.run(["docker", "stack", "config", "-c", str(REPO / "deploy" / "stack.yml")],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    service = yaml.safe_load(result.stdout)["services"]["fraud-inference"]
    deploy = service["deploy"]
    assert deploy["update_config"]["order"] == "start-first"
    assert deploy["update_config"]["failure_action"] == "rollback"
    assert deploy["resources"]["limits"]["memory"]
    assert service["environment"]["API_KEYS_FILE"] == "/run/secrets/fraud_inference_api_keys"
    assert {secret["source"] for secret in service["secrets"]} == {
        "fraud_inference_api_keys", "fraud_inference_mlflow_uri",
    }  # fmt: skip
    labels = deploy["labels"]
    public_rule = labels["traefik.http.routers.fraud-public.rule"]
    assert "!PathPrefix(`/v1/admin`)" in public_rule
    assert "/metrics" not in public_rule
    assert labels["traefik.http.routers.fraud-public.tls.certresolver"]
    assert labels["traefik.http.routers.fraud-internal.entrypoints"] == "internal"
    # gRPC: its own entrypoint, TLS there, h2c to GRPC_PORT, replicas checked by gRPC's health service.
    grpc_service = "traefik.http.services.fraud-inference-grpc.loadbalancer"
    assert labels[f"{grpc_service}.server.port"] == "8001"
    assert labels[f"{grpc_service}.server.scheme"] == "h2c"
    assert labels[f"{grpc_service}.healthcheck.mode"] == "grpc"
    assert labels["traefik.http.routers.fraud-grpc.service"] == "fraud-inference-grpc"
    assert "PathPrefix(`/inference.GRPCInferenceService/`)" in labels["traefik.http.routers.fraud-grpc.rule"]
    assert labels["traefik.http.routers.fraud-grpc.tls.certresolver"]


def test_containerfile_passes_hadolint() -> None:
    result = subprocess.run([str(BIN / "hadolint"), str(REPO / "Containerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_containerfile_runs_the_cli_as_a_non_root_user_with_a_healthcheck() -> None:
    assert json.loads(containerfile_instruction("ENTRYPOINT")) == ["fraud-inference"]
    assert json.loads(containerfile_instruction("CMD")) == ["serve"]
    assert containerfile_instruction("USER") == "10001:10001"
    assert "/livez" in containerfile_instruction("HEALTHCHECK")
    assert containerfile_instruction("EXPOSE").split() == ["8000", "8001"]
    assert "GRPC_PORT=8001" in containerfile_instruction("ENV")
    assert "uv sync --locked --no-dev" in (REPO / "Containerfile").read_text()


@pytest.mark.parametrize(
    "manifest", sorted(p.name for p in (REPO / "deploy" / "k8s").glob("*.yaml") if p.name != "kustomization.yaml")
)
def test_kubernetes_manifests_match_the_schemas(manifest: str) -> None:
    result = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "-k", "1.31.0", str(REPO / "deploy" / "k8s" / manifest)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_deployment_has_probes_limits_and_scrape_annotations() -> None:
    deployment = yaml.safe_load((REPO / "deploy" / "k8s" / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    # Readiness through grpc.health.v1 (it answers as /readyz does) on GRPC_PORT, which the pod exposes.
    assert container["readinessProbe"]["grpc"]["port"] == 8001
    assert {"name": "grpc", "containerPort": 8001, "protocol": "TCP"} in container["ports"]
    service = yaml.safe_load((REPO / "deploy" / "k8s" / "service.yaml").read_text())
    grpc_port = next(port for port in service["spec"]["ports"] if port["name"] == "grpc")
    assert (grpc_port["port"], grpc_port["targetPort"], grpc_port["appProtocol"]) == (8001, "grpc", "kubernetes.io/h2c")
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["limits"]
    assert container["resources"]["requests"]
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    kinds = {yaml.safe_load(p.read_text())["kind"] for p in (REPO / "deploy" / "k8s").glob("*.yaml")}
    assert {"Deployment", "Service", "Secret", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds


def test_every_variable_the_service_reads_is_documented() -> None:
    from fraud_inference.settings import settings_reference

    variables = {setting.variable for setting in settings_reference()}
    variables |= {setting.file_variable for setting in settings_reference() if setting.file_variable}
    assert {"MLFLOW_TRACKING_URI", "MODELS", "WORKERS", "API_KEYS_FILE", "DEPENDENCY_CHECK"} <= variables
    example = (REPO / ".env.example").read_text()
    readme = (REPO / "README.md").read_text()
    assert [v for v in sorted(variables) if f"{v}=" not in example] == []
    assert [v for v in sorted(variables) if f"`{v}`" not in readme] == []


# NOTE: soak (85 s of the default run, with its own MLflow server); the default run serves the same settings through
# `serve` in tests/e2e. .ci/run runs it with -m soak.
@pytest.mark.slow
@pytest.mark.soak
def test_the_image_command_line_serves_from_a_real_mlflow_server(
    shared_mlflow_server: MlflowServer, transactions: pd.DataFrame, tmp_path: Path
) -> None:
    """Run exactly ENTRYPOINT + CMD, with the image's environment, against `mlflow server --serve-artifacts`."""
    from tests.conftest import RunningService, free_port

    command = json.loads(containerfile_instruction("ENTRYPOINT")) + json.loads(containerfile_instruction("CMD"))
    port = free_port()
    env = {
        "PATH": f"{BIN}:/usr/bin:/bin", "TMPDIR": str(tmp_path), "FRAUD_INFERENCE_HOME": str(tmp_path / "home"),
        "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1", "HOST": "127.0.0.1", "PORT": str(port),
        "GRPC_PORT": str(free_port()), "WORKERS": "1", "MLFLOW_TRACKING_URI": shared_mlflow_server.tracking_uri,
    }  # fmt: skip
    log_path = tmp_path / "service.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    service = RunningService(process, f"http://127.0.0.1:{port}", log_path)
    try:
        service.wait_ready()
        instances = json.loads(transactions.head(2).to_json(orient="records"))
        with service.client() as client:
            response = client.post("/v1/predict", json={"model": "xgboost", "instances": instances})
        assert response.status_code == 200, response.text
        assert response.json()["model_version"] == "1"
    finally:
        assert service.stop() == 0
