"""deploy/: the container topology agrees with the shipped dagster.yaml and with itself.

The images cannot be built here (no Docker engine, no Kubernetes, no helm): these checks
keep the files consistent, and render the eAMS chart's templates (deploy/helm/eams) with
the small subset of Go templates they use; orchestration/test_topology_grpc.py runs the same
processes without containers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from dagster._core.instance.config import dagster_instance_config

from eams_pipeline.orchestration.partitions import DISTRICT_TAG
from eams_pipeline.orchestration.sharding import Shard

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _image_env(name: str) -> str:
    """A variable the image sets (deploy/Dockerfile ENV)."""
    found = re.search(rf"\b{name}=(\S+)", (DEPLOY / "Dockerfile").read_text(encoding="utf-8"))
    assert found, f"deploy/Dockerfile sets no {name}"
    return found.group(1)


SECRETS_DIR = "/run/secrets/eams"
# a district's secret: never a variable the run launcher must copy (adding a district would
# then need a new dagster.yaml, hence a new image)
DISTRICT_SECRET = re.compile(r"EAMS_SFTP_.*PASSWORD|EAMS_SECRET_KEY|EAMS_ARCHIVE_KEY")


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
    env_vars = launcher["config"]["env_vars"]
    assert set(env_vars) <= defined
    assert "EAMS_DATABASE_URL" in defined
    # secrets are files of the mounted secrets directory, not variables copied to runs
    assert not [v for v in env_vars if DISTRICT_SECRET.fullmatch(v)], env_vars
    assert not [v for v in defined if DISTRICT_SECRET.fullmatch(v)], defined
    assert _image_env("EAMS_SECRETS_DIR") == SECRETS_DIR
    assert f"eams_secrets:{SECRETS_DIR}:ro" in launcher["config"]["container_kwargs"]["volumes"]


def test_the_image_copies_only_what_its_build_context_lets_in() -> None:
    """Every COPY source exists and is let in by deploy/Dockerfile.dockerignore."""
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    allowed = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    steps = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    copies = re.findall(r"^COPY (.+) \S+$", steps, re.M)
    assert copies
    for sources in copies:
        for source in sources.split():
            assert (ROOT / source).exists(), source
            assert any(source == a or source.startswith(a + "/") for a in allowed), source


def test_the_image_installs_the_run_workers_startup_hook() -> None:
    steps = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    install = steps.index("pip install .")
    assert steps.index('python -c "import eams_pipeline.run_worker as w; w.main()"') > install


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

    # the run containers mount the compose volumes by their fixed names, on its network, as
    # the code servers do
    launcher = _yaml(DEPLOY / "docker" / "dagster.yaml")["run_launcher"]["config"]
    for volume in launcher["container_kwargs"]["volumes"]:
        name = volume.split(":", 1)[0]
        assert compose["volumes"][name]["name"] == name
    assert compose["networks"][launcher["network"]]["name"] == launcher["network"]
    for server in servers:
        assert services[server["host"]]["volumes"] == launcher["container_kwargs"]["volumes"]

    # the secrets and SFTP keys are host directories the operators fill, named volumes
    for name in ("eams_secrets", "eams_sftp_keys"):
        options = compose["volumes"][name]["driver_opts"]
        assert (options["type"], options["o"]) == ("none", "bind")
        assert options["device"].startswith("${") and ":-/" in options["device"]


def test_compose_migrates_the_database_before_the_code_servers_start() -> None:
    compose = _yaml(DEPLOY / "docker-compose.yml")
    services = compose["services"]
    migrate = services["eams-migrate"]
    assert migrate["command"] == ["eams", "db", "upgrade"]
    assert migrate["restart"] == "no" and migrate["image"] == services["eams-shard-0"]["image"]
    code_server = ["dagster", "code-server"]
    servers = [s for s in services.values() if s.get("command", [])[:2] == code_server]
    assert servers
    for service in servers:
        assert service["depends_on"]["eams-migrate"] == {
            "condition": "service_completed_successfully"
        }
    for name in ("webserver", "daemon"):  # and these wait for the code servers
        assert {"eams-shard-0", "eams-shard-1"} <= set(services[name]["depends_on"])

    # the operators' one-shot commands (setup load): not started by `up`, with the secrets
    # and the master-data directory
    admin = services["eams-admin"]
    assert admin["profiles"] == ["admin"] and admin["image"] == migrate["image"]
    assert f"eams_secrets:{SECRETS_DIR}:ro" in admin["volumes"]
    assert any(v.endswith(":/etc/eams/master-data:ro") for v in admin["volumes"])


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
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    shards = []
    for deployment in deployments:
        assert deployment["codeServerArgs"] == ["-m", "eams_pipeline.definitions"]
        # off: the chart would copy the code server's resources into its run pods
        assert deployment["includeConfigInLaunchedRuns"]["enabled"] is False
        env = {e["name"]: e["value"] for e in deployment["env"]}
        shards.append(env.pop("EAMS_DISTRICT_SHARD"))
        assert env == {}, "the settings are the ConfigMap's, the shards differ by their shard"
        # the run pods get what the code servers have, from the run launcher
        for key in ("envConfigMaps", "envSecrets", "volumes", "volumeMounts"):
            assert deployment[key] == launcher[key], key
        assert deployment["securityContext"] == launcher["securityContext"]
        assert deployment["image"] == deployments[0]["image"]
    _shards(shards)
    assert {"name": "eams-settings"} in launcher["envConfigMaps"]
    mounts = {m["name"]: m["mountPath"] for m in launcher["volumeMounts"]}
    secret = next(v for v in launcher["volumes"] if v["name"] == "secrets")
    assert secret["secret"]["secretName"] == "eams-secrets"
    assert mounts["secrets"] == SECRETS_DIR
    # a run pod holds a 1M-row upload (bench: RSS goal 1.5 GiB), within its limit
    resources = launcher["runK8sConfig"]["containerConfig"]["resources"]
    assert _mib(resources["requests"]["memory"]) >= 1536
    assert _mib(resources["limits"]["memory"]) >= _mib(resources["requests"]["memory"])


def _mib(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()
    return int(number) * (1024 if unit == "Gi" else 1)


# --- the eAMS chart (deploy/helm/eams), rendered without helm -------------------------------

CHART = DEPLOY / "helm" / "eams"
_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def _lookup(path: str, context: dict[str, Any]) -> Any:
    assert re.fullmatch(r"(\.[A-Za-z_][A-Za-z0-9_]*)+", path), f"unsupported template: {path}"
    value: Any = context
    for part in path[1:].split("."):
        value = value[part]
    return value


def _evaluate(expression: str, context: dict[str, Any]) -> str:
    to_yaml = re.fullmatch(r"toYaml (\S+) \| nindent (\d+)", expression)
    if to_yaml:
        dumped = yaml.safe_dump(_lookup(to_yaml.group(1), context), sort_keys=False).rstrip()
        pad = " " * int(to_yaml.group(2))
        return "\n" + "\n".join(pad + line for line in dumped.splitlines())
    value = _lookup(expression, context)
    assert isinstance(value, str | int), f"{expression} is not a scalar"
    return str(value)


def render(template: str, values: dict[str, Any], release: str = "eams-setup") -> str:
    """The Go-template subset the chart uses: {{ .Values.x }}, {{ .Release.Name }},
    {{- toYaml .Values.x | nindent N }}, {{- if .Values.x }} ... {{- end }}, with the
    whitespace trims; anything else fails (keep the templates within what is checked)."""
    context = {"Values": values, "Release": {"Name": release}}
    pieces: list[Any] = []
    position = 0
    for match in _ACTION.finditer(template):
        pieces += [template[position : match.start()], match]
        position = match.end()
    pieces.append(template[position:])
    for i, piece in enumerate(pieces):
        if isinstance(piece, re.Match):
            if piece.group(1):
                pieces[i - 1] = pieces[i - 1].rstrip()
            if piece.group(3):
                pieces[i + 1] = pieces[i + 1].lstrip()
    out: list[str] = []
    emitting = [True]
    for piece in pieces:
        if isinstance(piece, str):
            if all(emitting):
                out.append(piece)
            continue
        expression = piece.group(2)
        if expression.startswith("if "):
            emitting.append(bool(_lookup(expression[3:], context)))
        elif expression == "end":
            emitting.pop()
        elif all(emitting):
            out.append(_evaluate(expression, context))
    assert emitting == [True], "unbalanced if/end"
    return "".join(out)


def _chart(values: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    values = values or _yaml(CHART / "values.yaml")
    objects = {}
    for template in sorted((CHART / "templates").glob("*.yaml")):
        for document in yaml.safe_load_all(render(template.read_text(encoding="utf-8"), values)):
            if document:
                objects[f"{document['kind']}/{document['metadata']['name']}"] = document
    return objects


def test_the_eams_chart_migrates_then_loads_the_master_data() -> None:
    chart = _yaml(CHART / "Chart.yaml")
    assert chart["apiVersion"] == "v2" and chart["name"] == "eams"
    values = _yaml(CHART / "values.yaml")
    objects = _chart(values)
    assert set(objects) == {
        "ConfigMap/eams-settings",
        "Job/eams-db-upgrade",
        "Job/eams-setup-load",
    }
    settings = objects["ConfigMap/eams-settings"]["data"]
    assert settings == values["settings"]
    assert all(isinstance(v, str) for v in settings.values()), "ConfigMap data are strings"
    assert not [k for k in settings if DISTRICT_SECRET.fullmatch(k) or "PASSWORD" in k]

    dagster = _yaml(DEPLOY / "helm" / "values.yaml")
    image = dagster["dagster-user-deployments"]["deployments"][0]["image"]
    weights = {}
    for name, command in (
        ("eams-db-upgrade", ["eams", "db", "upgrade"]),
        ("eams-setup-load", ["eams", "setup", "load", "/etc/eams/master-data/districts.yaml"]),
    ):
        job = objects[f"Job/{name}"]
        hooks = job["metadata"]["annotations"]
        assert hooks["helm.sh/hook"] == "post-install,post-upgrade"
        assert hooks["helm.sh/hook-delete-policy"] == "before-hook-creation"
        weights[name] = int(hooks["helm.sh/hook-weight"])
        pod = job["spec"]["template"]["spec"]
        assert pod["restartPolicy"] == "Never"
        (container,) = pod["containers"]
        assert container["command"] == command
        # the code locations' image, their settings and database password
        assert container["image"] == f"{image['repository']}:{image['tag']}"
        assert {"configMapRef": {"name": "eams-settings"}} in container["envFrom"]
        assert {"secretRef": {"name": "eams-database"}} in container["envFrom"]
    assert weights["eams-db-upgrade"] < weights["eams-setup-load"]  # migrated first

    load = objects["Job/eams-setup-load"]["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in load["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in load["volumes"]}
    assert mounts == {"master-data": "/etc/eams/master-data", "secrets": SECRETS_DIR}
    assert volumes["master-data"]["configMap"]["name"] == values["masterData"]["configMap"]
    assert volumes["secrets"]["secret"]["secretName"] == "eams-secrets"

    # without master data, no setup load Job
    assert set(_chart({**values, "masterData": {"configMap": "", "key": ""}})) == {
        "ConfigMap/eams-settings",
        "Job/eams-db-upgrade",
    }


def test_the_template_subset_is_rendered_as_helm_would() -> None:
    values = {"a": {"b": "x", "on": True, "off": "", "map": {"k": "v", "n": "1"}}}
    template = (
        "name: {{ .Values.a.b }}-{{ .Release.Name }}\n"
        "{{- if .Values.a.off }}\nhidden: yes\n{{- end }}\n"
        "{{- if .Values.a.on }}\nshown: yes\n{{- end }}\n"
        "data:\n  {{- toYaml .Values.a.map | nindent 2 }}\n"
    )
    assert yaml.safe_load(render(template, values, "r")) == {
        "name": "x-r",
        "shown": True,
        "data": {"k": "v", "n": "1"},
    }
    try:
        render("{{ .Values.a.b | quote }}", values)
    except AssertionError:
        pass
    else:
        raise AssertionError("an action outside the subset must fail")
