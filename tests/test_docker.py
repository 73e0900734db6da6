"""The container and cluster files in docker/, checked without Docker or a cluster.

One image (``sweeper:<version>``) everywhere, the Ray version of the Dockerfile's base equal to the
installed Ray, the cluster-launcher config accepted by Ray's own validation, commands that
sweeper's CLI accepts with configs that load, and the wiring of the local compose cluster
(loopback-only ports, workers after the head, one shared volume).
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

import sweeper
from sweeper.cli import _parser
from sweeper.config import Resources, load_config

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
IMAGE = f"sweeper:{sweeper.__version__}"
GPU = "nvidia.com/gpu"


# ---------------------------------------------------------------------------------------------
# helpers


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of docker/Dockerfile, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in (DOCKER / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, rest = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    return instructions


def _base_image(build_args: dict[str, str] | None = None) -> str:
    """The FROM image with the global ARG defaults (and ``build_args``) substituted."""
    values: dict[str, str] = {}
    for keyword, rest in _dockerfile():
        if keyword == "FROM":
            return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values[m.group(1) or m.group(2)], rest.split()[0])
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            default = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], default.strip('"'))
            values[name] = (build_args or {}).get(name, default)
    raise AssertionError("docker/Dockerfile has no FROM")


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _cluster() -> dict:
    return yaml.safe_load((DOCKER / "cluster.yaml").read_text())


def _k8s() -> dict[str, dict]:
    """The objects of docker/rayjob.yaml by kind/name."""
    docs = [d for d in yaml.safe_load_all((DOCKER / "rayjob.yaml").read_text()) if d]
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def _rayjob() -> dict:
    (job,) = [d for key, d in _k8s().items() if key.startswith("RayJob/")]
    return job


def _argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def _sweeper_args(command: str | list[str]):
    """Parse a ``sweeper ...`` command line with sweeper's own CLI parser."""
    argv = _argv(command)
    assert argv[0] == "sweeper", f"not a sweeper command: {argv}"
    return _parser().parse_args(argv[1:])


def _option(argv: list[str], name: str) -> str:
    for i, arg in enumerate(argv):
        if arg == name:
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} missing from {argv}")


def _under(path: str, mount: str) -> bool:
    return path == mount or path.startswith(mount.rstrip("/") + "/")


def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def _mounts(pod_template: dict) -> dict[str, dict]:
    """mountPath -> the volume mounted there."""
    volumes = {v["name"]: v for v in pod_template["spec"].get("volumes", [])}
    return {m["mountPath"]: volumes[m["name"]] for c in _containers(pod_template) for m in c.get("volumeMounts", [])}


CLUSTER_CONFIGS = sorted((ROOT / "configs" / "cluster").glob("*.yaml"))


def _raw_config(path: Path) -> dict:
    """A config's YAML without load_config, whose data.root check needs the dataset on this machine."""
    return yaml.safe_load(path.read_text())


def _trial_resources(raw: dict) -> Resources:
    return Resources.model_validate(raw.get("search", {}).get("resources", {}))


def _quantity(value: str | int | float) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


# ---------------------------------------------------------------------------------------------
# one image, one Ray


def test_one_image_everywhere() -> None:
    images = {"Dockerfile label": _dockerfile_image()}
    images |= {f"compose {name}": svc["image"] for name, svc in _compose()["services"].items()}
    del images["compose postgres"]
    images["cluster.yaml"] = _cluster()["docker"]["image"]
    for key, obj in _k8s().items():
        spec = obj.get("spec", {})
        templates = []
        if obj["kind"] == "Deployment":
            templates.append(spec["template"])
        if obj["kind"] == "RayJob":
            cluster = spec["rayClusterSpec"]
            templates.append(cluster["headGroupSpec"]["template"])
            templates += [group["template"] for group in cluster["workerGroupSpecs"]]
        for template in templates:
            for container in _containers(template):
                images[f"{key} {container['name']}"] = container["image"]
    assert {where: image for where, image in images.items() if image != IMAGE} == {}


def _dockerfile_image() -> str:
    labels = " ".join(rest for keyword, rest in _dockerfile() if keyword == "LABEL")
    found = dict(re.findall(r'(org\.opencontainers\.image\.\w+)="([^"]*)"', labels))
    return f"{found['org.opencontainers.image.title']}:{found['org.opencontainers.image.version']}"


def test_dockerfile_documents_the_same_tag() -> None:
    header = (DOCKER / "Dockerfile").read_text()
    assert f"docker build -f docker/Dockerfile -t {IMAGE} ." in header


def test_dockerfile_base_is_the_installed_ray() -> None:
    ray = pytest.importorskip("ray")
    assert _base_image() == f"rayproject/ray:{ray.__version__}-py311-gpu"
    assert _base_image({"RAY_IMAGE_VARIANT": "py311-cpu"}) == f"rayproject/ray:{ray.__version__}-py311-cpu"
    assert _base_image({"BASE_IMAGE": "rayproject/ray:x-cpu"}) == "rayproject/ray:x-cpu"


def test_dockerfile_keeps_ray_and_torch_and_adds_postgres_driver() -> None:
    instructions = _dockerfile()
    keywords = [keyword for keyword, _ in instructions]
    assert "ENTRYPOINT" not in keywords  # the launcher runs `bash`, compose/KubeRay `ray start`
    runs = [rest for keyword, rest in instructions if keyword == "RUN"]
    pins = next(run for run in runs if "--format=freeze" in run)
    assert "ray|torch|torchvision" in pins
    pin_file = re.search(r"> (\S+sweeper-pins\.txt)", pins).group(1)
    project = next(run for run in runs if re.search(r"pip install .*\s\.\s", run + " ") and "psycopg2" in run)
    assert f"-c {pin_file}" in project  # pip cannot pull a second torch or change Ray
    assert "--no-deps ." in " ".join(runs)
    assert ("USER", "${RAY_UID}") in instructions and ("ARG", "RAY_UID=1000") in instructions


def test_dockerignore_admits_what_the_dockerfile_copies() -> None:
    lines = [
        line.strip()
        for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "**"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    sources = []
    for keyword, rest in _dockerfile():
        if keyword == "COPY" and "--from" not in rest:
            args = [a for a in rest.split() if not a.startswith("--")]
            sources += args[:-1]
    assert sources and set(sources) <= admitted
    assert all((ROOT / source).exists() for source in sources)


# ---------------------------------------------------------------------------------------------
# compose: the local cluster


def test_compose_builds_the_image_from_the_repository() -> None:
    head = _compose()["services"]["ray-head"]
    context = (DOCKER / head["build"]["context"]).resolve()
    assert context == ROOT
    assert (context / head["build"]["dockerfile"]).resolve() == DOCKER / "Dockerfile"


def test_compose_publishes_on_loopback_only() -> None:
    published = []
    for name, service in _compose()["services"].items():
        for port in service.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).rsplit(":", 2)[0]
            published.append((name, host_ip, port))
    assert {name for name, _, _ in published} == {"ray-head", "mlflow"}
    assert [p for p in published if p[1] != "127.0.0.1"] == []
    assert ("ray-head", "127.0.0.1", "127.0.0.1:8265:8265") in published


def test_compose_workers_join_the_head() -> None:
    services = _compose()["services"]
    head, worker = services["ray-head"], services["ray-worker"]
    head_argv = _argv(head["command"])
    assert head_argv[:3] == ["ray", "start", "--head"] and "--block" in head_argv
    assert _option(head_argv, "--dashboard-host") == "0.0.0.0"
    worker_argv = _argv(worker["command"])
    assert worker_argv[:2] == ["ray", "start"] and "--block" in worker_argv
    assert _option(worker_argv, "--address") == f"ray-head:{_option(head_argv, '--port')}"
    assert worker["depends_on"]["ray-head"]["condition"] == "service_healthy"
    assert "healthcheck" in head
    assert worker["deploy"]["replicas"] == 2


def test_compose_nodes_share_storage_and_tracking() -> None:
    services = _compose()["services"]
    mounts = {}
    for name in ("ray-head", "ray-worker", "mlflow"):
        mount = next(v for v in services[name]["volumes"] if v.endswith(":/shared"))
        volume, _, target = mount.partition(":")
        mounts[name] = (volume, target)
        assert volume in _compose()["volumes"]  # a named volume, not a host path
    assert len(set(mounts.values())) == 1
    for name in ("ray-head", "ray-worker"):
        assert services[name]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_compose_mlflow_serves_from_postgres() -> None:
    services = _compose()["services"]
    argv = _argv(services["mlflow"]["command"])
    assert argv[:2] == ["mlflow", "server"]
    store = urlparse(_option(argv, "--backend-store-uri"))
    assert store.scheme == "postgresql+psycopg2" and store.hostname == "postgres"
    assert _under(_option(argv, "--artifacts-destination"), "/shared")
    assert _option(argv, "--host") == "0.0.0.0" and _option(argv, "--port") == "5000"
    # MLflow answers 403 to a Host header it does not allow; the nodes call it by service name.
    allowed = _option(argv, "--allowed-hosts").split(",")
    aliases = services["mlflow"]["networks"]["default"]["aliases"]
    assert {f"{host}:5000" for host in ["mlflow", *aliases]} <= set(allowed)
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["postgres"]["environment"]["POSTGRES_DB"] == store.path.lstrip("/")


def test_compose_sweep_submits_a_valid_config() -> None:
    services = _compose()["services"]
    sweep = services["sweep"]
    args = _sweeper_args(sweep["command"])
    assert args.command == "submit"
    dashboard = urlparse(args.address)
    assert dashboard.hostname == "ray-head" and dashboard.port == 8265
    assert sweep["volumes"] == ["..:/src:ro"] and sweep["working_dir"] == "/src"
    config = load_config(ROOT / args.config, overrides=args.overrides)  # /src is the repository
    assert _under(config.storage_path, "/shared")
    assert urlparse(config.tracking.uri).hostname == "mlflow"
    assert sweep["depends_on"]["ray-head"]["condition"] == "service_healthy"


# ---------------------------------------------------------------------------------------------
# cluster launcher


def test_cluster_config_passes_ray_validation() -> None:
    pytest.importorskip("jsonschema")
    util = pytest.importorskip("ray.autoscaler._private.util")
    raw = _cluster()
    prepared = util.prepare_config(copy.deepcopy(raw))  # what `ray up` does before validating
    util.validate_config(prepared)
    # Nothing reinstalls Ray (or anything else) over the image: Ray's defaults would.
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        assert prepared[key] == [], key
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"] == {"CPU": 0} and head["max_workers"] == 0


def test_cluster_config_rejects_a_typo() -> None:
    """The validation above has teeth: an unknown docker key fails it."""
    jsonschema = pytest.importorskip("jsonschema")
    util = pytest.importorskip("ray.autoscaler._private.util")
    raw = _cluster()
    raw["docker"]["pull_before_runn"] = raw["docker"].pop("pull_before_run")
    with pytest.raises(jsonschema.ValidationError, match="pull_before_runn"):
        util.validate_config(util.prepare_config(raw))


def _gpu_worker_types(cluster: dict) -> dict[str, dict]:
    return {
        name: node
        for name, node in cluster["available_node_types"].items()
        if node.get("resources", {}).get("GPU", 0) >= 1
    }


def test_cluster_has_gpu_workers_on_shared_storage() -> None:
    cluster = _cluster()
    workers = _gpu_worker_types(cluster)
    assert workers and cluster["head_node_type"] not in workers
    assert all(node["max_workers"] >= 1 for node in workers.values())
    assert cluster["idle_timeout_minutes"] > 0 and cluster["max_workers"] >= 1
    assert "-v /shared:/shared" in cluster["docker"]["run_options"]


@pytest.mark.parametrize("path", CLUSTER_CONFIGS, ids=lambda p: p.name)
def test_cluster_gpu_worker_fits_every_cluster_config(path: Path) -> None:
    raw = _raw_config(path)
    resources = _trial_resources(raw)
    fits = [
        name
        for name, node in _gpu_worker_types(_cluster()).items()
        if resources.cpu <= node["resources"]["CPU"] and resources.gpu <= node["resources"]["GPU"]
    ]
    assert fits, f"no worker type of docker/cluster.yaml can run a trial of {path.name} ({resources})"
    assert _under(raw["storage_path"], "/shared")


# ---------------------------------------------------------------------------------------------
# KubeRay

# Fields of KubeRay's ray.io/v1 RayJobSpec / RayClusterSpec / group specs this file may use.
RAYJOB_SPEC_KEYS = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
    "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint",
    "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus",
    "entrypointNumGpus", "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend",
}  # fmt: skip
RAYCLUSTER_SPEC_KEYS = {
    "authOptions", "autoscalerOptions", "enableInTreeAutoscaling", "gcsFaultToleranceOptions",
    "headGroupSpec", "headServiceAnnotations", "managedBy", "rayVersion", "suspend",
    "upgradeStrategy", "workerGroupSpecs",
}  # fmt: skip
HEAD_GROUP_KEYS = {"enableIngress", "headService", "rayStartParams", "serviceType", "template"}
WORKER_GROUP_KEYS = {
    "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds", "numOfHosts",
    "rayStartParams", "scaleStrategy", "suspend", "template",
}  # fmt: skip


def test_rayjob_uses_known_fields_and_the_installed_ray() -> None:
    ray = pytest.importorskip("ray")
    job = _rayjob()
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    cluster = spec["rayClusterSpec"]
    assert set(spec) <= RAYJOB_SPEC_KEYS
    assert set(cluster) <= RAYCLUSTER_SPEC_KEYS
    assert set(cluster["headGroupSpec"]) <= HEAD_GROUP_KEYS
    assert all(set(group) <= WORKER_GROUP_KEYS for group in cluster["workerGroupSpecs"])
    assert cluster["rayVersion"] == ray.__version__
    assert spec["shutdownAfterJobFinishes"] is True
    params = [cluster["headGroupSpec"]["rayStartParams"]]
    params += [group["rayStartParams"] for group in cluster["workerGroupSpecs"]]
    assert all(isinstance(value, str) for p in params for value in p.values())  # KubeRay wants strings


def test_rayjob_entrypoint_runs_the_mounted_config() -> None:
    objects = _k8s()
    job = _rayjob()
    args = _sweeper_args(job["spec"]["entrypoint"])
    assert args.command == "run" and args.address == "auto"
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    mounts = _mounts(head)
    config_dir = str(args.config.parent)
    configmap = objects[f"ConfigMap/{mounts[config_dir]['configMap']['name']}"]
    text = configmap["data"][args.config.name]
    config = load_config(data=yaml.safe_load(text), overrides=args.overrides)
    shared = [path for path in mounts if _under(config.storage_path, path)]
    assert shared, f"storage_path {config.storage_path} is on no volume of the head"
    claim = mounts[shared[0]]["persistentVolumeClaim"]["claimName"]
    assert objects[f"PersistentVolumeClaim/{claim}"]["spec"]["accessModes"] == ["ReadWriteMany"]
    for group in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        assert _mounts(group["template"])[shared[0]]["persistentVolumeClaim"]["claimName"] == claim
    service = urlparse(config.tracking.uri)
    assert f"Service/{service.hostname}" in objects
    assert objects[f"Service/{service.hostname}"]["spec"]["ports"][0]["port"] == service.port


def test_rayjob_worker_group_requests_gpus_for_the_trials() -> None:
    job = _rayjob()
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    text = _k8s()["ConfigMap/sweeper-configs"]["data"]["sweep.yaml"]
    trial = load_config(data=yaml.safe_load(text)).search.resources
    trials = [trial] + [_trial_resources(_raw_config(path)) for path in CLUSTER_CONFIGS]
    assert GPU not in _containers(head)[0]["resources"].get("limits", {})
    for group in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        (container,) = _containers(group["template"])
        limits = container["resources"]["limits"]
        assert int(limits[GPU]) >= 1  # Kubernetes schedules extended resources by their limit
        assert container["resources"]["requests"][GPU] == limits[GPU]
        for resources in trials:
            assert resources.gpu <= int(limits[GPU]) and resources.cpu <= _quantity(limits["cpu"])
        assert _mounts(group["template"])["/dev/shm"]["emptyDir"]["medium"] == "Memory"
