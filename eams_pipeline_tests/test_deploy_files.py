"""deploy/: the container topology agrees with the shipped dagster.yaml and with itself.

The images cannot be built here (no Docker engine, no Kubernetes): these checks keep the
files consistent; test_topology_grpc.py runs the same processes without containers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from dagster._core.instance.config import dagster_instance_config

from eams_pipeline.orchestration.partitions import DISTRICT_TAG
from eams_pipeline.orchestration.sharding import Shard

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _shards(values: list[str]) -> None:
    shards = [Shard.parse(v) for v in values]
    (count,) = {s.count for s in shards}
    assert sorted(s.index for s in shards) == list(range(count)), "every shard exactly once"


def test_docker_instance_is_the_shipped_one_plus_the_docker_run_launcher() -> None:
    shipped = _yaml(ROOT / "dagster.yaml")
    docker = _yaml(DEPLOY / "docker" / "dagster.yaml")
    launcher = docker.pop("run_launcher")
    assert docker == shipped
    assert (launcher["module"], launcher["class"]) == ("dagster_docker", "DockerRunLauncher")
    config, _ = dagster_instance_config(str(DEPLOY / "docker"))  # the instance schema
    assert config["run_launcher"]["config"]["network"] == "eams"

    # every variable handed to run containers is set in the example environment
    example = (DEPLOY / "eams.env.example").read_text(encoding="utf-8").splitlines()
    defined = {line.split("=", 1)[0] for line in example if "=" in line and line[0] != "#"}
    assert set(launcher["config"]["env_vars"]) <= defined
    assert {"EAMS_DATABASE_URL", "EAMS_SECRET_KEY", "EAMS_ARCHIVE_KEY"} <= defined
    # a rotation's previous key reaches the runs (empty in the example: none)
    assert {"EAMS_SECRET_KEY", "EAMS_SECRET_KEY_PREVIOUS"} <= set(launcher["config"]["env_vars"])


def test_compose_workspace_and_code_servers_agree() -> None:
    compose = _yaml(DEPLOY / "docker-compose.yml")
    services = compose["services"]
    assert {"postgres", "webserver", "daemon"} <= set(services)
    workspace = _yaml(DEPLOY / "docker" / "workspace.yaml")
    servers = [entry["grpc_server"] for entry in workspace["load_from"]]
    shards = []
    for server in servers:
        service = services[server["host"]]
        command = service["command"]
        assert command[:5] == ["dagster", "code-server", "start", "-m", "eams_pipeline.definitions"]
        assert command[command.index("--port") + 1] == str(server["port"])
        assert command[command.index("--location-name") + 1] == server["location_name"]
        shards.append(service["environment"]["EAMS_DISTRICT_SHARD"])
    _shards(shards)
    assert len({s["location_name"] for s in servers}) == len(servers)

    # the run containers mount the compose volumes by their fixed names, on its network
    launcher = _yaml(DEPLOY / "docker" / "dagster.yaml")["run_launcher"]["config"]
    for volume in launcher["container_kwargs"]["volumes"]:
        name = volume.split(":", 1)[0]
        assert compose["volumes"][name]["name"] == name
    assert compose["networks"][launcher["network"]]["name"] == launcher["network"]


def test_helm_values_carry_the_instance_settings_and_the_shards() -> None:
    values = _yaml(DEPLOY / "helm" / "values.yaml")
    shipped = _yaml(ROOT / "dagster.yaml")
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    daemon = values["dagsterDaemon"]
    queued = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    runs = shipped["concurrency"]["runs"]
    assert queued["maxConcurrentRuns"] == runs["max_concurrent_runs"]
    assert queued["tagConcurrencyLimits"] == runs["tag_concurrency_limits"]
    assert queued["tagConcurrencyLimits"][0]["key"] == DISTRICT_TAG
    assert daemon["runRetries"]["maxRetries"] == shipped["run_retries"]["max_retries"]
    assert daemon["sensors"]["useThreads"] is True
    assert values["postgresql"]["postgresqlScheme"] == "postgresql+psycopg2"

    deployments = values["dagster-user-deployments"]["deployments"]
    shards = []
    for deployment in deployments:
        assert deployment["codeServerArgs"] == ["-m", "eams_pipeline.definitions"]
        assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
        assert {"name": "eams-secrets"} in deployment["envSecrets"]
        env = {e["name"]: e["value"] for e in deployment["env"]}
        shards.append(env.pop("EAMS_DISTRICT_SHARD"))
        first = {e["name"]: e["value"] for e in deployments[0]["env"]}
        first.pop("EAMS_DISTRICT_SHARD")
        assert env == first, "the shards differ only by their shard"
    _shards(shards)
