"""docker-compose.yml, the Dockerfile, Prometheus and Kubernetes files, checked offline.

Every command and environment a container gets must be accepted by the project's own
parsers (``build_parser(environ=...)`` then ``parse_args``), healthchecks must name console
scripts, and the Kubernetes manifests must validate against the API schemas
(kubernetes-validate, strict). ``docker-compose config`` runs when it is installed.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess

import pytest

from tests.compose_file import ROOT, console_scripts, load, our_services, replicas, service_env

yaml = pytest.importorskip("yaml")

K8S = ROOT / "deploy" / "kubernetes"
K8S_VERSIONS = ("1.28.0", "1.37.0")


def parse(command: list[str], env: dict[str, str]):
    """Parse a container command with the CLI's own parser, reading ``env`` as its environment."""
    module = importlib.import_module(console_scripts()[command[0]])
    return module, module.build_parser(environ=env).parse_args(command[1:])


@pytest.fixture(scope="module")
def compose():
    return load()


def test_every_service_command_and_environment_is_accepted(compose, monkeypatch):
    services = our_services(compose)
    assert {"ps-server-0", "ps-server-1", "worker", "stop"} <= set(services)
    for name, service in services.items():
        env = service_env(service)
        for key in env:
            assert key.startswith("PS_"), f"{name}: {key} is not a PS_* variable"
        module, args = parse(service["command"], env)
        monkeypatch.setattr("os.environ", env)  # PS_TOKEN is read from the environment
        if module.__name__ == "launcher.server_cli":
            cfg = module.config_from_args(args)
            assert cfg.auth_token and cfg.metrics_port and cfg.checkpoint_dir and cfg.host == "0.0.0.0"
        elif module.__name__ == "launcher.worker_cli":
            cfg = module.train_config_from_args(args, rank=0, num_workers=args.num_workers)
            assert args.rank == "auto" and args.metrics_port and cfg.epochs >= 1
        elif module.__name__ == "launcher.admin_cli":
            assert args.command == "stop" and args.when_done and args.idle > 0


def test_services_that_build_the_image_never_pull_it(compose):
    for name, service in our_services(compose).items():
        assert service["build"] == "." and service["pull_policy"] == "build", name
    assert "pull_policy" not in compose["services"]["prometheus"]  # a published image: pulled as usual


def test_defaults_and_overrides_come_from_the_shell():
    default = our_services(load())
    assert service_env(default["ps-server-0"])["PS_MODE"] == "sync"
    assert replicas(default["worker"]) == int(service_env(default["worker"])["PS_NUM_WORKERS"]) == 2
    changed = our_services(load({"PS_MODE": "ssp", "PS_STALENESS": "3", "PS_WORKERS": "4", "PS_EPOCHS": "2"}))
    _, server = parse(changed["ps-server-1"]["command"], service_env(changed["ps-server-1"]))
    assert (server.mode, server.staleness, server.num_workers, server.shard_index) == ("ssp", 3, 4, 1)
    _, worker = parse(changed["worker"]["command"], service_env(changed["worker"]))
    assert (worker.num_workers, worker.epochs, replicas(changed["worker"])) == (4, 2, 4)


def test_servers_are_health_checked_with_a_console_script_and_awaited(compose):
    services = our_services(compose)
    servers = {n: s for n, s in services.items() if s["command"][0] == "ps-server"}
    assert len(servers) == 2
    for name, s in servers.items():
        test = s["healthcheck"]["test"]
        assert test[0] == "CMD" and test[1] in console_scripts()
        _, args = parse(test[1:], service_env(s))
        assert args.address.endswith(":" + service_env(s)["PS_PORT"])
        assert services["worker"]["depends_on"][name] == {"condition": "service_healthy"}
        assert services["stop"]["depends_on"][name] == {"condition": "service_healthy"}
    # `stop` waits for the run itself (ps-admin stop --when-done): a dependency on the workers
    # would start it when the first replica exits, and never when one fails
    assert "worker" not in services["stop"]["depends_on"]


def test_stop_expects_as_many_workers_as_run_and_the_servers_expect(compose):
    for variables in ({}, {"PS_WORKERS": "4"}):
        services = our_services(load(variables))
        _, stop = parse(services["stop"]["command"], service_env(services["stop"]))
        _, server = parse(services["ps-server-0"]["command"], service_env(services["ps-server-0"]))
        assert stop.num_workers == server.num_workers == replicas(services["worker"])
        assert stop.servers == service_env(services["worker"])["PS_SERVERS"]


def test_workers_get_distinct_ranks_the_token_and_every_server(compose):
    services = our_services(compose)
    servers = [n for n, s in services.items() if s["command"][0] == "ps-server"]
    env = service_env(services["worker"])
    assert replicas(services["worker"]) == 1 or env["PS_RANK"] == "auto"  # replicas cannot number themselves
    listed = [a.split(":")[0] for a in env["PS_SERVERS"].split(",")]
    assert listed == sorted(servers)
    indexes = [parse(services[n]["command"], service_env(services[n]))[1].shard_index for n in listed]
    assert indexes == list(range(len(servers)))  # shard i is i-th in every worker's list
    token = {service_env(s)["PS_TOKEN"] for s in services.values()}
    assert len(token) == 1 and token != {""}


def test_checkpoints_live_on_a_named_volume(compose):
    for name, s in our_services(compose).items():
        if s["command"][0] != "ps-server":
            continue
        mounts = dict(v.split(":")[:2] for v in s["volumes"])
        volume = {target: source for source, target in mounts.items()}[service_env(s)["PS_CHECKPOINT_DIR"]]
        assert volume in compose["volumes"]


def test_prometheus_scrapes_every_server_and_worker(compose):
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]}
    dns = {(n, sd["port"]) for job in config["scrape_configs"] for sd in job.get("dns_sd_configs", [])
           for n in sd["names"]}
    for name, s in our_services(compose).items():
        port = service_env(s).get("PS_METRICS_PORT")
        if s["command"][0] == "ps-server":
            assert f"{name}:{port}" in targets
        elif s["command"][0] == "ps-worker":
            assert (name, int(port)) in dns
    mounted = compose["services"]["prometheus"]["volumes"][0].split(":")
    assert mounted[0] == "./deploy/prometheus/prometheus.yml"
    tokens = {service_env(s).get("PS_TOKEN") for s in our_services(compose).values()}
    for job in config["scrape_configs"]:  # /metrics needs the cluster's token: Prometheus sends it
        assert job["authorization"] == {"type": "Bearer", "credentials": next(iter(tokens))}, job["job_name"]


def test_healthcheck_and_admin_scripts_are_installed():
    scripts = console_scripts()
    assert scripts["ps-health"] == "launcher.health_cli"
    assert scripts["ps-admin"] == "launcher.admin_cli"


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
def test_docker_compose_accepts_the_file():
    out = subprocess.run(["docker-compose", "config", "--quiet"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr


def test_dockerfile_is_slim_non_root_and_installs_the_checkout():
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in lines
    stages = [ln for ln in lines if ln.startswith("FROM ")]
    assert len(stages) == 2 and "AS build" in stages[0]
    final = lines[lines.index(stages[1]):]
    assert any(ln.startswith("USER ") and ln.split()[1] not in ("root", "0") for ln in final)
    assert not any(word in text for word in ("apt-get install", "build-essential", "gcc"))
    assert not any(re.match(r"#\s*syntax\s*=", ln) for ln in text.splitlines())  # no frontend image to fetch
    assert "COPY" not in " ".join(final)  # the final stage takes only the wheels, through a bind mount
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "*" in ignored and {"!ps/", "!worker/", "!launcher/", "!pyproject.toml", "!README.md"} <= set(ignored)


# -- Kubernetes ------------------------------------------------------------------------


def manifests() -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(kind: str) -> list[dict]:
    return [m for m in manifests() if m["kind"] == kind]


def test_kubernetes_manifests_validate_against_the_api_schemas():
    kv = pytest.importorskip("kubernetes_validate")
    docs = manifests()
    assert {d["kind"] for d in docs} >= {"Service", "StatefulSet", "Job"}
    for doc in docs:
        for version in K8S_VERSIONS:
            kv.validate(doc, version, strict=True)  # raises ValidationError naming the field
    broken = by_kind("StatefulSet")[0]
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["prot"] = 1
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_kubernetes_runs_the_compose_image_without_pulling_it(compose):
    # compose builds grpc-ps:latest (pull_policy: build); Kubernetes would always pull a
    # `:latest` image unless told to use the one loaded into the cluster
    images = {s["image"] for s in our_services(compose).values()}
    containers = [c for kind in ("StatefulSet", "Job") for m in by_kind(kind)
                  for c in m["spec"]["template"]["spec"]["containers"]]
    assert len(containers) == 2
    for c in containers:
        assert c["image"] in images and c["imagePullPolicy"] == "IfNotPresent", c["name"]


def test_kubernetes_restores_like_compose(compose):
    # a restarted shard resumes from its volume, as a second `docker compose up` does
    (sts,) = by_kind("StatefulSet")
    plain, _ = _env(sts["spec"]["template"]["spec"]["containers"][0])
    server = service_env(our_services(compose)["ps-server-0"])
    for key in ("PS_RESTORE", "PS_CHECKPOINT_DIR", "PS_NUM_SHARDS", "PS_NUM_WORKERS", "PS_MODE"):
        assert plain[key] == server[key], key


def _env(container: dict) -> tuple[dict[str, str], dict[str, dict]]:
    plain = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    sourced = {e["name"]: e["valueFrom"] for e in container["env"] if "valueFrom" in e}
    return plain, sourced


def test_servers_are_a_stateful_set_behind_a_headless_service():
    (service,), (sts,) = by_kind("Service"), by_kind("StatefulSet")
    assert service["spec"]["clusterIP"] == "None" and sts["spec"]["serviceName"] == service["metadata"]["name"]
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "checkpoints"
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    plain, sourced = _env(container)
    assert sourced["PS_TOKEN"]["secretKeyRef"]["key"] == "token"
    assert "pod-index" in sourced["PS_SHARD_INDEX"]["fieldRef"]["fieldPath"]
    assert int(plain["PS_NUM_SHARDS"]) == sts["spec"]["replicas"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == int(plain["PS_PORT"])
    assert container["readinessProbe"]["grpc"]["service"] == "ps.v1.ParameterServer"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["checkpoints"] == plain["PS_CHECKPOINT_DIR"]
    module, args = parse(container["command"], {**plain, "PS_SHARD_INDEX": "1", "PS_TOKEN": "t"})
    assert (args.shard_index, args.num_shards, args.mode, args.restore) == (1, 2, "sync", True)


def test_workers_are_an_indexed_job_ranked_by_completion_index():
    (sts,), (job,) = by_kind("StatefulSet"), by_kind("Job")
    assert job["spec"]["completionMode"] == "Indexed"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    plain, sourced = _env(container)
    assert "job-completion-index" in sourced["PS_RANK"]["fieldRef"]["fieldPath"]
    assert sourced["PS_TOKEN"]["secretKeyRef"]["name"] == "ps-token"
    assert int(plain["PS_NUM_WORKERS"]) == job["spec"]["completions"] == job["spec"]["parallelism"]
    server_env, _ = _env(sts["spec"]["template"]["spec"]["containers"][0])
    assert plain["PS_NUM_WORKERS"] == server_env["PS_NUM_WORKERS"]
    expected = [f"ps-server-{i}.{sts['spec']['serviceName']}:{server_env['PS_PORT']}"
                for i in range(sts["spec"]["replicas"])]
    assert plain["PS_SERVERS"].split(",") == expected
    _, args = parse(container["command"], {**plain, "PS_RANK": "1"})
    assert (args.rank, args.num_workers, args.metrics_port) == (1, 2, 9100)
