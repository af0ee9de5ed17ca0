"""The fleet deployment files: docker-compose.yml against the Compose Specification and the stack issue 5 asks
for, and the Dockerfile's stages (a torch-free web image, a CUDA worker image, both unprivileged, health-
checked and installing the wheel a stage builds). No Docker engine is needed: the files are parsed, not built.

Each check returns the problems it finds, so the tests below also show that a broken copy gets caught.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field

import jsonschema
import pytest
import yaml

from app.cli.main import main as tuneboard_main
from app.settings import REPO_ROOT, Settings

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
# The Compose Specification's schema, vendored (see tests/data/README.md for its origin and licence).
COMPOSE_SCHEMA = REPO_ROOT / "tests" / "data" / "compose-spec.json"

SERVICES = {"postgres", "redis", "minio", "createbuckets", "migrate", "web", "worker", "inference", "flower", "vllm"}
VOLUMES = {"postgres-data": ("postgres", "/var/lib/postgresql/data"), "redis-data": ("redis", "/data"),
           "minio-data": ("minio", "/data"), "web-data": ("web", "/data"), "worker-data": ("worker", "/data"),
           "vllm-adapters": ("vllm", "/adapters"), "vllm-cache": ("vllm", "/root/.cache/huggingface")}
LONG_RUNNING = {"postgres", "redis", "minio", "web", "worker", "inference", "vllm"}
TUNEBOARD_CONTAINERS = ("migrate", "web", "worker", "inference")
GPU_SERVICES = {"worker", "inference", "vllm"}  # training, and chat completions with a base model kept loaded
BUCKET = "tuneboard-artifacts"
# pip extras syntax naming `worker` (".[worker]", "tuneboard[dev,worker]"), or torch itself.
WORKER_INSTALL = re.compile(r"\[[^\]]*\bworker\b[^\]]*\]|\btorch\b")


# --- docker-compose.yml ---------------------------------------------------------------------------------------

def load_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def interpolate(value: str) -> str:
    """What Compose substitutes with no variable set: `${VAR:-default}` -> default, `$$` -> `$`."""
    value = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", "", value).replace("$$", "$")


def command_words(command: str | list[str] | None) -> list[str]:
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(word) for word in command]


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: interpolate(str(value)) for key, value in env.items()}


def schema_problems(compose: dict) -> list[str]:
    """Where the document breaks the Compose Specification."""
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    # The schema declares draft 2019-09 under a URI spelling jsonschema does not map, so name the draft.
    validator = jsonschema.Draft201909Validator(schema)
    return [f"{'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
            for error in validator.iter_errors(compose)]


def stack_problems(compose: dict) -> list[str]:
    """Services, volumes, health checks and start order of the stack."""
    problems = []
    services = compose.get("services", {})
    if set(services) != SERVICES:
        problems.append(f"services are {sorted(services)}, expected {sorted(SERVICES)}")
    if set(compose.get("volumes") or {}) != set(VOLUMES):
        problems.append(f"volumes are {sorted(compose.get('volumes') or {})}, expected {sorted(VOLUMES)}")
    for volume, (name, path) in VOLUMES.items():
        if f"{volume}:{path}" not in services.get(name, {}).get("volumes", []):
            problems.append(f"{name} does not keep {path} in the volume {volume}")
    for name in LONG_RUNNING:
        if not services.get(name, {}).get("healthcheck", {}).get("test"):
            problems.append(f"{name} has no health check")
    health_words = {"postgres": "pg_isready", "redis": "redis-cli ping", "web": "/healthz", "worker": "inspect ping",
                    "inference": "inspect ping", "vllm": "/health"}
    for name, word in health_words.items():
        test = " ".join(command_words(services.get(name, {}).get("healthcheck", {}).get("test")))
        if word not in test:
            problems.append(f"{name}'s health check does not run {word!r}: {test!r}")
    expected = {
        ("createbuckets", "minio"): "service_healthy",
        ("migrate", "postgres"): "service_healthy",
        ("web", "migrate"): "service_completed_successfully",
        ("web", "redis"): "service_healthy",
        ("web", "minio"): "service_healthy",
        ("worker", "migrate"): "service_completed_successfully",
        ("worker", "redis"): "service_healthy",
        ("worker", "minio"): "service_healthy",
        ("inference", "migrate"): "service_completed_successfully",
        ("inference", "redis"): "service_healthy",
        ("inference", "minio"): "service_healthy",
    }
    for (name, dependency), condition in expected.items():
        actual = (services.get(name, {}).get("depends_on") or {}).get(dependency, {})
        if not isinstance(actual, dict) or actual.get("condition") != condition:
            problems.append(f"{name} does not wait for {dependency} to be {condition}")
    for name, service in services.items():
        depends_on = service.get("depends_on") or {}
        for dependency, spec in depends_on.items() if isinstance(depends_on, dict) else ():
            target = services.get(dependency, {})
            if spec.get("condition") == "service_healthy" and "healthcheck" not in target:
                problems.append(f"{name} waits for {dependency} to be healthy, which has no health check")
            # A one-shot that restarts never completes, so its dependants would never start.
            if spec.get("condition") == "service_completed_successfully" and "restart" in target:
                problems.append(f"{name} waits for {dependency} to finish, which has a restart policy")
    return problems


def redis_problems(compose: dict) -> list[str]:
    """Redis configured as a broker: persistent, and refusing writes rather than evicting messages."""
    words = command_words(compose["services"].get("redis", {}).get("command"))
    options = {words[i]: words[i + 1] for i in range(len(words) - 1) if words[i].startswith("--")}
    problems = []
    if options.get("--appendonly") != "yes":
        problems.append(f"redis runs without --appendonly yes: {words}")
    if options.get("--maxmemory-policy") != "noeviction":
        problems.append(f"redis runs without --maxmemory-policy noeviction: {words}")
    return problems


def gpu_problems(compose: dict) -> list[str]:
    """The training and inference workers each reserve an NVIDIA GPU; nothing else does."""
    problems = []
    for name, service in compose["services"].items():
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        gpus = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])
                and ("count" in d or "device_ids" in d)]
        if name in GPU_SERVICES and not gpus:
            problems.append(f"{name} reserves no NVIDIA GPU (deploy.resources.reservations.devices)")
        if name not in GPU_SERVICES and devices:
            problems.append(f"{name} reserves devices {devices}")
    return problems


def environment_problems(compose: dict) -> list[str]:
    """The shared settings reach every Tuneboard container and name real settings, services and queues."""
    services = compose["services"]
    problems = []
    driver = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    if not any(requirement.startswith("psycopg") for requirement in driver):
        problems.append("pyproject.toml declares no psycopg, which postgresql+psycopg:// needs")
    known = set(Settings.model_fields)
    wanted = {
        "TUNEBOARD_DATABASE_URL": r"postgresql\+psycopg://tuneboard:[^@]+@postgres:5432/tuneboard",
        "TUNEBOARD_REDIS_URL": r"redis://:[^@]+@redis:6379/\d+",
        "TUNEBOARD_STORAGE_URL": rf"s3://{BUCKET}/",
        "TUNEBOARD_S3_ENDPOINT_URL": r"http://minio:9000",
        "AWS_ACCESS_KEY_ID": r".+", "AWS_SECRET_ACCESS_KEY": r".+", "AWS_DEFAULT_REGION": r".+",
    }
    for name in TUNEBOARD_CONTAINERS:
        env = environment(services.get(name, {}))
        for key, pattern in wanted.items():
            if not re.fullmatch(pattern, env.get(key, "")):
                problems.append(f"{name}: {key}={env.get(key)!r} does not match {pattern}")
        for key in env:
            if key.startswith("TUNEBOARD_") and key.removeprefix("TUNEBOARD_").lower() not in known:
                problems.append(f"{name}: {key} is not a Tuneboard setting")
    if environment(services.get("web", {})).get("TUNEBOARD_MIGRATE_ON_START") != "false":
        problems.append("web migrates on start; the migrate service does that once, before it")
    worker_env = environment(services.get("worker", {}))
    queues = worker_env.get("WORKER_QUEUES", "").split(",")
    default_queue = worker_env.get("TUNEBOARD_DEFAULT_QUEUE", Settings.model_fields["default_queue"].default)
    if default_queue not in queues:
        problems.append(f"no worker serves the default queue {default_queue!r} (worker queues: {queues})")
    script = " ".join(command_words(services.get("createbuckets", {}).get("entrypoint")))
    if f"/{BUCKET}" not in script:
        problems.append(f"createbuckets does not create the bucket {BUCKET}")
    return problems


def vllm_problems(compose: dict) -> list[str]:
    """The optional vLLM server: behind its profile, LoRA on and loadable at run time, reading the folder web fills."""
    services = compose["services"]
    vllm, web = services.get("vllm", {}), services.get("web", {})
    problems = []
    if vllm.get("profiles") != ["vllm"]:
        problems.append(f"vllm is not behind the profile 'vllm': {vllm.get('profiles')}")
    words = [interpolate(word) for word in command_words(vllm.get("command"))]
    if "--enable-lora" not in words:
        problems.append(f"vllm runs without --enable-lora: {words}")
    if environment(vllm).get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "").lower() != "true":
        problems.append("vllm does not allow loading adapters at run time (VLLM_ALLOW_RUNTIME_LORA_UPDATING)")
    web_env = environment(web)
    mounts = {entry.split(":")[1]: entry.split(":")[0] for service in (vllm, web)
              for entry in service.get("volumes", []) if isinstance(entry, str) and ":" in entry}
    web_dir = web_env.get("TUNEBOARD_VLLM_ADAPTER_DIR")
    server_dir = web_env.get("TUNEBOARD_VLLM_ADAPTER_DIR_ON_SERVER")
    if not web_dir or not server_dir or mounts.get(web_dir) is None or mounts.get(web_dir) != mounts.get(server_dir):
        problems.append(f"web's adapter folder {web_dir} and vllm's {server_dir} are not one volume: {mounts}")
    if "--api-key" in words and web_env.get("TUNEBOARD_VLLM_API_KEY") != words[words.index("--api-key") + 1]:
        problems.append("web does not send the key vllm was started with")
    return problems


def test_the_optional_vllm_server_reads_the_adapters_web_copies():
    assert vllm_problems(load_compose()) == []


def test_compose_file_follows_the_compose_specification():
    assert schema_problems(load_compose()) == []


def test_compose_file_runs_the_whole_stack_in_order():
    assert stack_problems(load_compose()) == []


def test_redis_is_configured_as_a_broker():
    assert redis_problems(load_compose()) == []


def test_the_worker_reserves_a_gpu():
    assert gpu_problems(load_compose()) == []


def test_every_tuneboard_container_shares_the_database_redis_and_store():
    assert environment_problems(load_compose()) == []


def test_images_are_built_from_the_dockerfile_targets():
    services = load_compose()["services"]
    stages = parse_dockerfile(DOCKERFILE.read_text())
    for name, target in {"migrate": "web", "web": "web", "worker": "worker"}.items():
        assert services[name]["build"]["target"] == target and target in stages, name
    assert services["web"]["image"] == services["migrate"]["image"]
    assert any(port.endswith(":8000") for port in services["web"]["ports"])
    assert "tuneboard" in command_words(services["migrate"]["command"])
    assert command_words(services["migrate"]["command"])[-1] == "migrate"
    # The inference worker runs the training worker's image, told to answer chat completions.
    assert services["inference"]["image"] == services["worker"]["image"]
    assert "--inference" in command_words(services["inference"]["command"])


def test_the_checks_catch_a_broken_compose_file():
    compose = load_compose()
    assert schema_problems(compose) == []

    misspelt = copy.deepcopy(compose)
    misspelt["services"]["web"]["healthchek"] = misspelt["services"]["web"].pop("healthcheck")
    assert schema_problems(misspelt) and stack_problems(misspelt)

    no_gpu = copy.deepcopy(compose)
    del no_gpu["services"]["worker"]["deploy"]
    assert gpu_problems(no_gpu)

    evicting = copy.deepcopy(compose)
    evicting["services"]["redis"]["command"] = ["redis-server", "--maxmemory-policy", "allkeys-lru"]
    assert len(redis_problems(evicting)) == 2

    racing = copy.deepcopy(compose)
    racing["services"]["web"]["depends_on"]["migrate"] = {"condition": "service_started"}
    racing["services"]["migrate"]["restart"] = "always"
    assert len(stack_problems(racing)) == 3  # web races migrate; worker and inference wait for a one-shot that restarts

    lost = copy.deepcopy(compose)
    lost["services"]["worker"]["environment"]["WORKER_QUEUES"] = "gpu-80g"
    lost["services"]["web"]["environment"]["TUNEBOARD_REDIS_URL"] = "redis://localhost:6379/0"
    assert len(environment_problems(lost)) == 2

    unshared = copy.deepcopy(compose)
    unshared["services"]["vllm"]["command"].remove("--enable-lora")
    unshared["services"]["web"]["environment"]["TUNEBOARD_VLLM_ADAPTER_DIR_ON_SERVER"] = "/elsewhere"
    del unshared["services"]["vllm"]["profiles"]
    assert len(vllm_problems(unshared)) == 3


# --- Dockerfile -----------------------------------------------------------------------------------------------

@dataclass
class Stage:
    name: str
    base: str  # an image, or the name of an earlier stage
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def arguments(self, instruction: str) -> list[str]:
        return [args for word, args in self.instructions if word == instruction]


def parse_dockerfile(text: str) -> dict[str, Stage]:
    """The stages of a Dockerfile by name, global ARG defaults substituted into their FROM lines."""
    logical, pending = [], ""
    for line in text.splitlines():
        # Docker drops comment lines (the `# syntax=` directive among them) even inside a continued instruction.
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in logical:
        word, _, args = line.strip().partition(" ")
        word, args = word.upper(), args.strip()
        if word == "FROM":
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args.get(m[1] or m[2], ""), args.split()[0])
            found = re.search(r"\s+AS\s+(\S+)$", args, re.IGNORECASE)
            current = Stage(found[1] if found else str(len(stages)), image)
            stages[current.name] = current
        elif current is None:
            if word == "ARG":
                name, _, default = args.partition("=")
                global_args[name] = default
        else:
            current.instructions.append((word, args))
    return stages


def exec_words(args: str) -> list[str]:
    """The words of a CMD / ENTRYPOINT: its JSON (exec) form, or the shell form split like a shell would."""
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def lineage(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage, the stages it is built FROM, and those it copies files from (with theirs)."""
    seen: list[Stage] = []
    todo = [name]
    while todo:
        stage = stages[todo.pop()]
        if stage in seen:
            continue
        seen.append(stage)
        if stage.base in stages:
            todo.append(stage.base)
        for args in stage.arguments("COPY"):
            if found := re.search(r"--from=(\S+)", args):
                todo.append(found[1])
    return seen


def ancestry(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, nearest first (what it inherits: files, USER, HEALTHCHECK)."""
    chain = [stages[name]]
    while chain[-1].base in stages:
        chain.append(stages[chain[-1].base])
    return chain


def image_problems(stages: dict[str, Stage]) -> list[str]:
    """The web target is free of the ML stack; the worker target has it on CUDA; both run unprivileged and
    carry a health check."""
    problems = []
    for target in ("web", "worker"):
        if target not in stages:
            problems.append(f"no stage {target}")
            continue
        chain = lineage(stages, target)
        inherited = ancestry(stages, target)  # USER and HEALTHCHECK carry over FROM, not COPY --from
        users = [u for s in reversed(inherited) for u in s.arguments("USER")]
        if not users or users[-1].split(":")[0] in ("root", "0"):
            problems.append(f"{target} runs as root (USER {users[-1] if users else 'unset'})")
        checks = [h for s in reversed(inherited) for h in s.arguments("HEALTHCHECK")]
        if not checks or checks[-1].upper() == "NONE":
            problems.append(f"{target} has no HEALTHCHECK")
        commands = [c for s in reversed(inherited) for c in s.arguments("CMD")]
        if not commands or f"tuneboard {target}" not in " ".join(exec_words(commands[-1])):
            problems.append(f"{target}'s CMD does not run `tuneboard {target}`: {commands[-1:]}")
        installs = [(s.name, run) for s in chain for run in s.arguments("RUN") if WORKER_INSTALL.search(run)]
        if target == "web":
            problems += [f"web image installs the ML stack in stage {name}: {run}" for name, run in installs]
            copies = [c for s in inherited for c in s.arguments("COPY") if re.search(r"(^|\s)workers/?(\s|$)", c)]
            problems += [f"web image carries the worker code: COPY {c}" for c in copies]
        else:
            if not any(re.search(r"\[[^\]]*\bworker\b", run) for _, run in installs):
                problems.append("worker image does not install the `worker` extra")
            if not inherited[-1].base.startswith("nvidia/cuda:"):
                problems.append(f"worker image is not on a CUDA base: {inherited[-1].base}")
    return problems


def wheel_problems(stages: dict[str, Stage]) -> list[str]:
    """Both images install the wheel a stage builds (with the npm stage's front-end files in it), as `pip install
    tuneboard` would, and copy nothing of the tree but pyproject.toml (read for the dependency layer)."""
    problems = [f"stage {name} installs editable: {run}" for name, stage in stages.items()
                for run in stage.arguments("RUN") if re.search(r"\bpip install\b.*(\s-e\s|--editable)", run)]
    builders = {name for name, stage in stages.items()
                if any(re.search(r"\bpip wheel\b|\bpython -m build\b", run) for run in stage.arguments("RUN"))}
    if not builders:
        problems.append("no stage builds a wheel (pip wheel / python -m build)")
    for builder in sorted(builders):
        if not any("npm ci" in run for stage in lineage(stages, builder) for run in stage.arguments("RUN")):
            problems.append(f"the wheel stage {builder} has no node_modules from `npm ci`")
    for target in ("web", "worker"):
        inherited = ancestry(stages, target) if target in stages else []
        copies = [args for stage in inherited for args in stage.arguments("COPY")]
        if not any((found := re.search(r"--from=(\S+)", args)) and found[1] in builders for args in copies):
            problems.append(f"{target} copies no wheel from a stage that builds one")
        runs = [run for stage in inherited for run in stage.arguments("RUN")]
        if not any(re.search(r"\bpip install\b[^&]*(--find-links|\.whl\b)", run) for run in runs):
            problems.append(f"{target} does not pip install the wheel")
        from_tree = [args for args in copies if "--from=" not in args and args.split()[:-1] != ["pyproject.toml"]]
        problems += [f"{target} copies the tree instead of installing the wheel: COPY {args}" for args in from_tree]
    return problems


def test_dockerfile_builds_a_torch_free_web_image_and_a_cuda_worker_image():
    assert image_problems(parse_dockerfile(DOCKERFILE.read_text())) == []


def test_the_checks_catch_a_broken_dockerfile():
    text = DOCKERFILE.read_text()
    assert image_problems(parse_dockerfile(text)) == []
    base_line = next(line for line in text.splitlines() if line.startswith("FROM ") and " AS base" in line)
    torch_in_base = text.replace(base_line, base_line + "\nRUN pip install \\\n    'torch>=2.4'", 1)
    assert any("ML stack in stage base" in p for p in image_problems(parse_dockerfile(torch_in_base)))
    as_root = "\n".join(line for line in text.splitlines() if not line.startswith("USER "))
    assert len(image_problems(parse_dockerfile(as_root))) == 2
    unchecked = re.sub(r"HEALTHCHECK [^\n]*\\\n[^\n]*\n", "", text)
    assert len(image_problems(parse_dockerfile(unchecked))) == 2


def test_both_images_install_the_wheel_built_with_the_front_end_files():
    assert wheel_problems(parse_dockerfile(DOCKERFILE.read_text())) == []


def test_the_checks_catch_an_image_that_does_not_install_the_wheel():
    text = DOCKERFILE.read_text()
    web_install = next(line for line in text.splitlines() if line.startswith("RUN pip install --no-index"))
    editable = text.replace(web_install, "COPY app ./app\nRUN pip install --no-deps -e .", 1)
    assert sorted(wheel_problems(parse_dockerfile(editable))) == [
        "stage web installs editable: pip install --no-deps -e .",
        "web copies the tree instead of installing the wheel: COPY app ./app",
        "web does not pip install the wheel"]
    without_npm = "\n".join(line for line in text.splitlines() if not line.startswith("COPY --from=node"))
    assert wheel_problems(parse_dockerfile(without_npm)) == ["the wheel stage wheel has no node_modules from `npm ci`"]


@pytest.mark.parametrize(("command", "options"), [("web", ["--host", "--port"]), ("worker", ["--queues", "--name"]),
                                                  ("migrate", [])])
def test_the_containers_commands_exist(command, options, capsys):
    with pytest.raises(SystemExit) as exited:
        tuneboard_main([command, "--help"])
    assert exited.value.code == 0
    usage = capsys.readouterr().out
    assert all(option in usage for option in options)
