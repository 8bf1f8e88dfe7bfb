"""What can be checked of the images without Docker: each Dockerfile installs the project the way
the Makefile (and so CI and the test suite) does, generates the stubs with the same pinned
command, runs as the non-root user the chart expects and starts a real `reflex` subcommand; the
compose file only sets real settings and wires the services the way the chart does."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from reflex.cli import COMMANDS
from reflex.config import Settings

REPO = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO / "deploy" / "docker"
COMPOSE_FILES = (REPO / "deploy" / "docker-compose.yml", REPO / "deploy" / "docker-compose.gpu.yml")
CHART_DIR = REPO / "deploy" / "k8s" / "helm" / "reflex"
SERVICES = ("gateway", "embedder", "verifier")
SETTING_NAMES = {f"REFLEX_{name.upper()}" for name in Settings.model_fields}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, f"{path.name}: dangling line continuation"
    return instructions


def exec_form(args: str) -> list[str]:
    value = yaml.safe_load(args)  # a JSON array is valid YAML
    assert isinstance(value, list), f"not exec form: {args}"
    return value


def shell_commands(run_args: str) -> list[str]:
    return [c.strip() for c in run_args.split("&&")]


def makefile_pins() -> dict[str, str]:
    """Packages the Makefile installs with an exact pin before the project (torch today)."""
    text = (REPO / "Makefile").read_text()
    pins = dict(re.findall(r"pip install (?:-q )?([A-Za-z0-9_.-]+)==([0-9][^\s]*)", text))
    assert "torch" in pins, "the Makefile no longer pins torch: update this test and the Dockerfiles together"
    return pins


def makefile_stub_command() -> str:
    """The stub command the Makefile's `protos` target runs (without its PYTHON= prefix)."""
    text = (REPO / "Makefile").read_text()
    recipe = re.search(r"^protos:.*\n\t(.+)$", text, re.MULTILINE)
    assert recipe, "Makefile has no protos recipe"
    words = [w for w in shlex.split(recipe.group(1)) if "=" not in w]
    return " ".join(words)


def pyproject_pin(package: str) -> str:
    for dep in PYPROJECT["project"]["dependencies"]:
        name, sep, version = dep.partition("==")
        if name.strip() == package and sep:
            return version.strip()
    raise AssertionError(f"{package} is not pinned in pyproject.toml")


@pytest.fixture(scope="module")
def chart_values() -> dict[str, Any]:
    return yaml.safe_load((CHART_DIR / "values.yaml").read_text())


@pytest.fixture(scope="module", params=SERVICES)
def dockerfile(request: pytest.FixtureRequest) -> tuple[str, list[tuple[str, str]]]:
    path = DOCKER_DIR / f"{request.param}.Dockerfile"
    return request.param, dockerfile_instructions(path)


def run_commands(instructions: list[tuple[str, str]]) -> list[str]:
    return [cmd for kw, args in instructions if kw == "RUN" for cmd in shell_commands(args)]


def test_base_image_is_python_of_the_project(dockerfile: tuple[str, list[tuple[str, str]]]) -> None:
    _, instructions = dockerfile
    (base,) = [args for kw, args in instructions if kw == "FROM"]
    minimum = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    assert base == f"python:{minimum}-slim"


def test_installs_like_the_makefile(dockerfile: tuple[str, list[tuple[str, str]]]) -> None:
    service, instructions = dockerfile
    commands = run_commands(instructions)
    stub_command = makefile_stub_command()
    assert stub_command == "./scripts/gen-protos.sh"
    assert stub_command in commands, f"{service}: stubs not generated with {stub_command}"
    # Stubs first, so `pip install .` packages them (they are git-ignored, not in the sdist input).
    project_install = commands.index("pip install .")
    assert commands.index(stub_command) < project_install
    # Every exact pin the Makefile installs first, with the same version, before the project.
    for package, version in makefile_pins().items():
        (pin_cmd,) = [c for c in commands if re.search(rf"\b{re.escape(package)}==", c)]
        assert f"{package}=={version}" in pin_cmd.split(), f"{service}: {pin_cmd!r} vs Makefile {package}=={version}"
        assert commands.index(pin_cmd) < project_install
    # The stub generator must exist before the script runs: the version pyproject pins.
    tools = f"grpcio-tools=={pyproject_pin('grpcio-tools')}"
    (tools_cmd,) = [c for c in commands if "grpcio-tools" in c]
    assert tools in tools_cmd.split() and commands.index(tools_cmd) < commands.index(stub_command)


def test_copies_what_the_install_needs(dockerfile: tuple[str, list[tuple[str, str]]]) -> None:
    service, instructions = dockerfile
    sources: set[str] = set()
    for kw, args in instructions:
        if kw == "COPY":
            *srcs, _dest = args.split()
            sources |= set(srcs)
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    needed = {"pyproject.toml", PYPROJECT["project"]["readme"], "protos", "scripts", *packages}
    assert needed <= sources, f"{service}: missing {needed - sources}"
    for src in sources - {PYPROJECT["project"]["readme"]}:  # README.md is written at release time
        assert (REPO / src).exists(), f"{service}: COPY {src} does not exist"


def test_runs_as_the_non_root_user_the_chart_expects(
    dockerfile: tuple[str, list[tuple[str, str]]], chart_values: dict[str, Any]
) -> None:
    service, instructions = dockerfile
    users = [args for kw, args in instructions if kw == "USER"]
    assert users, f"{service}: no USER"
    user = users[-1]
    assert user.isdigit() and int(user) != 0, "a numeric non-root uid (runAsNonRoot cannot check names)"
    assert int(user) == chart_values["podSecurityContext"]["runAsUser"]
    created = [c for c in run_commands(instructions) if c.startswith("useradd")]
    assert created and f"--uid {user}" in created[0]


def test_starts_a_real_reflex_subcommand(dockerfile: tuple[str, list[tuple[str, str]]]) -> None:
    service, instructions = dockerfile
    (entrypoint,) = [exec_form(a) for kw, a in instructions if kw == "ENTRYPOINT"]
    (cmd,) = [exec_form(a) for kw, a in instructions if kw == "CMD"]
    assert entrypoint == list(PYPROJECT["project"]["scripts"])  # ["reflex"]
    assert cmd == [service] and cmd[0] in COMMANDS


def test_env_and_ports_match_settings_and_chart(
    dockerfile: tuple[str, list[tuple[str, str]]], chart_values: dict[str, Any]
) -> None:
    service, instructions = dockerfile
    env: dict[str, str] = {}
    for kw, args in instructions:
        if kw == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(args)))
    reflex_names = {k for k in env if k.startswith("REFLEX_")}
    assert reflex_names and reflex_names <= SETTING_NAMES
    # Models load from the image only: nothing may be fetched from a model hub at run time.
    assert env["HF_HUB_OFFLINE"] == "1"
    (exposed,) = [int(a) for kw, a in instructions if kw == "EXPOSE"]
    assert exposed == chart_values[service]["port"]
    if service != "gateway":
        assert env["REFLEX_GRPC_BIND_ADDR"] == "0.0.0.0" and int(env["REFLEX_GRPC_PORT"]) == exposed


# ------------------------------------------------------------------ compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILES[0].read_text())


def test_compose_sets_only_real_settings() -> None:
    names: set[str] = set()
    for path in COMPOSE_FILES:
        for service in yaml.safe_load(path.read_text())["services"].values():
            names |= {k for k in service.get("environment", {}) if k.startswith("REFLEX_")}
    assert {"REFLEX_REDIS_URL", "REFLEX_QDRANT_URL", "REFLEX_EMBEDDER_URL"} <= names
    assert names <= SETTING_NAMES, names - SETTING_NAMES


def test_compose_settings_parse(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        values = {k.removeprefix("REFLEX_").lower(): v for k, v in service.get("environment", {}).items()
                  if k.startswith("REFLEX_") and v is not None and "${" not in str(v)}
        Settings(**values)  # a value the service would refuse at start-up fails here


def test_compose_builds_the_images_the_chart_deploys(compose: dict[str, Any], chart_values: dict[str, Any]) -> None:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    for name in SERVICES:
        service = compose["services"][name]
        assert (COMPOSE_FILES[0].parent / service["build"]["context"]).resolve() == REPO
        assert (REPO / service["build"]["dockerfile"]) == DOCKER_DIR / f"{name}.Dockerfile"
        assert service["image"] == f"{chart_values[name]['image']['repository']}:{chart['appVersion']}"
        assert service["command"] == [name] and name in COMMANDS
        assert service["user"] == f"{chart_values['podSecurityContext']['runAsUser']}:" \
            f"{chart_values['podSecurityContext']['runAsGroup']}"
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
    assert compose["services"]["redis"]["image"].startswith("redis:")
    assert compose["services"]["qdrant"]["image"].startswith("qdrant/qdrant:")


def test_compose_gateway_reaches_every_replica_by_dns(compose: dict[str, Any]) -> None:
    env = compose["services"]["gateway"]["environment"]
    for name in ("embedder", "verifier"):
        port = compose["services"][name]["environment"]["REFLEX_GRPC_PORT"]
        # dns:/// resolves the compose service name to every replica (docker compose --scale).
        assert env[f"REFLEX_{name.upper()}_URL"] == f"dns:///{name}:{port}"
        assert compose["services"][name]["environment"]["REFLEX_GRPC_BIND_ADDR"] == "0.0.0.0"
        assert name in compose["services"]["gateway"]["depends_on"]
    assert env["REFLEX_REDIS_URL"].startswith("redis://redis:")
    assert env["REFLEX_QDRANT_URL"].startswith("http://qdrant:")
    # Pass-through only: a literal here would put the key in the file; an empty one would be sent.
    assert env["REFLEX_UPSTREAM_API_KEY"] is None
