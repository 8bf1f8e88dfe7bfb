"""What can be checked of the images without Docker: each Dockerfile generates the stubs in a
stage of their own, with the Makefile's stub command and the grpcio-tools pyproject pins, and
installs into the runtime stage only its own extra (the gateway: `[gateway]`, no torch at all;
the model services: the Makefile's torch pin, then `[models]`), which covers every import the
service it runs can reach; each runs as the non-root user the chart expects and starts a real
`reflex` subcommand. The compose file only sets real settings and wires the services the way the
chart does."""

from __future__ import annotations

import re
import shlex
import sys
import tomllib
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import grimp
import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from commands.cli import COMMANDS
from tests.support.settings import all_setting_names, parse_settings

REPO = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO / "deploy" / "docker"
COMPOSE_FILES = (REPO / "deploy" / "docker-compose.yml", REPO / "deploy" / "docker-compose.gpu.yml")
CHART_DIR = REPO / "deploy" / "k8s" / "helm" / "reflex"
SERVICES = ("gateway", "embedder", "verifier")
SETTING_NAMES = all_setting_names()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = canonicalize_name(PYPROJECT["project"]["name"])
FIRST_PARTY = ("commands", "services", "reflex")
# The one extra each image installs.
IMAGE_EXTRA = {"gateway": "gateway", "embedder": "models", "verifier": "models"}
# What no gateway image may carry, not even as a dependency of a dependency.
MODEL_PACKAGES = {"torch", "transformers", "tokenizers", "sentence-transformers", "matplotlib"}

Instructions = list[tuple[str, str]]


def dockerfile_instructions(path: Path) -> Instructions:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: Instructions = []
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


def stages(instructions: Instructions) -> dict[str, Instructions]:
    """Build stages by name (``FROM ... AS name``; the last, unnamed one is ``final``), each
    starting with its FROM."""
    result: dict[str, Instructions] = {}
    current: Instructions | None = None
    for kw, args in instructions:
        if kw == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else "final"
            assert name not in result, f"two stages named {name}"
            current = result[name] = []
        assert current is not None, "an instruction before the first FROM"
        current.append((kw, args))
    assert list(result)[-1] == "final", "the runtime stage (the last) must be unnamed"
    return result


def exec_form(args: str) -> list[str]:
    value = yaml.safe_load(args)  # a JSON array is valid YAML
    assert isinstance(value, list), f"not exec form: {args}"
    return value


def shell_commands(run_args: str) -> list[str]:
    return [c.strip() for c in run_args.split("&&")]


def run_commands(instructions: Instructions) -> list[str]:
    return [cmd for kw, args in instructions if kw == "RUN" for cmd in shell_commands(args)]


def pip_install_args(command: str) -> list[str] | None:
    """The requirement arguments of a `pip install` command (shell quoting removed), or None."""
    words = shlex.split(command)
    if words[:2] != ["pip", "install"]:
        return None
    return [w for w in words[2:] if not w.startswith("-") and not w.startswith("https://")]


def copies(instructions: Instructions) -> list[tuple[str | None, list[str], str]]:
    """(from stage or None for the build context, sources, destination) per COPY."""
    result = []
    for kw, args in instructions:
        if kw == "COPY":
            words = args.split()
            stage = None
            if words[0].startswith("--from="):
                stage = words.pop(0).removeprefix("--from=")
            *srcs, dest = words
            result.append((stage, srcs, dest))
    return result


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


def stub_output_dirs() -> set[str]:
    """Where scripts/gen-protos.sh writes stubs: reflex/<service>/v1 for each .proto it compiles
    (-Iprotos, output beside the package)."""
    script = (REPO / "scripts" / "gen-protos.sh").read_text()
    protos = re.findall(r"protos/(\S+)\.proto", script)
    assert protos, "gen-protos.sh compiles no .proto"
    return {str(Path(p).parent) for p in protos}


def extra_pin(extra: str, package: str) -> str:
    """The exact version pyproject's `[extra]` pins ``package`` to."""
    for dep in PYPROJECT["project"]["optional-dependencies"][extra]:
        req = Requirement(dep)
        if canonicalize_name(req.name) == canonicalize_name(package) and str(req.specifier).startswith("=="):
            return str(req.specifier).removeprefix("==")
    raise AssertionError(f"{package} is not pinned in pyproject.toml's [{extra}]")


def _applies(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    env = default_environment()
    return any(req.marker.evaluate({**env, "extra": e}) for e in extras | {""})


@cache
def requirement_closure(extra: str) -> frozenset[str]:
    """Every distribution `pip install '.[extra]'` brings in: the project's dependencies and the
    extra's (self-references like ``reflex-cache[gateway,models]`` expanded), then theirs,
    transitively, as the installed metadata declares them."""
    own = PYPROJECT["project"]
    todo: list[tuple[str, frozenset[str]]] = []
    seen_extras: set[str] = set()
    extras_todo = [extra]
    while extras_todo:
        name = extras_todo.pop()
        if name in seen_extras:
            continue
        seen_extras.add(name)
        for dep in own["optional-dependencies"][name]:
            req = Requirement(dep)
            if canonicalize_name(req.name) == PROJECT:
                extras_todo.extend(req.extras)
            else:
                todo.append((req.name, frozenset(req.extras)))
    todo += [(Requirement(d).name, frozenset(Requirement(d).extras)) for d in own["dependencies"]]
    seen: dict[str, set[str]] = {}
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        if key in seen and extras <= seen[key]:
            continue
        seen.setdefault(key, set()).update(extras)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed here (a platform-specific dependency); nothing to follow
        for line in requires:
            req = Requirement(line)
            if _applies(req, set(extras)):
                todo.append((req.name, frozenset(req.extras)))
    return frozenset(seen)


@cache
def reachable_external_imports(service: str) -> frozenset[str]:
    """Top-level third-party modules that `reflex <service>` can import (lazily too): everything
    reachable from the CLI and the service's main module, with the packages each module lives in
    (importing a module runs its parents' __init__)."""
    graph = grimp.build_graph(*FIRST_PARTY, include_external_packages=True, exclude_type_checking_imports=True,
                              cache_dir=None)
    seen: set[str] = set()
    todo = ["commands.cli", COMMANDS[service][0]]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        if parts[0] in FIRST_PARTY:
            todo += graph.find_modules_directly_imported_by(module)
    return frozenset(m for m in seen if m.split(".")[0] not in FIRST_PARTY) - set(sys.stdlib_module_names)


@pytest.fixture(scope="module")
def chart_values() -> dict[str, Any]:
    return yaml.safe_load((CHART_DIR / "values.yaml").read_text())


@pytest.fixture(scope="module", params=SERVICES)
def dockerfile(request: pytest.FixtureRequest) -> tuple[str, Instructions]:
    path = DOCKER_DIR / f"{request.param}.Dockerfile"
    return request.param, dockerfile_instructions(path)


def final_stage(instructions: Instructions) -> Instructions:
    return stages(instructions)["final"]


def test_base_image_is_python_of_the_project(dockerfile: tuple[str, Instructions]) -> None:
    _, instructions = dockerfile
    minimum = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    for name, stage in stages(instructions).items():
        base = stage[0][1].split()[0]
        assert base == f"python:{minimum}-slim", f"stage {name}: {base}"


def test_stubs_are_generated_in_their_own_stage(dockerfile: tuple[str, Instructions]) -> None:
    service, instructions = dockerfile
    all_stages = stages(instructions)
    stub_command = makefile_stub_command()
    assert stub_command == "./scripts/gen-protos.sh"
    (stub_stage,) = [name for name, stage in all_stages.items() if stub_command in run_commands(stage)]
    assert stub_stage != "final", f"{service}: stubs generated in the runtime stage"
    commands = run_commands(all_stages[stub_stage])
    # The generator is installed before the script runs, at the version pyproject's [protos] pins.
    tools = f"grpcio-tools=={extra_pin('protos', 'grpcio-tools')}"
    (tools_cmd,) = [c for c in commands if "grpcio-tools" in c]
    assert pip_install_args(tools_cmd) == [tools], f"{service}: {tools_cmd!r} vs pyproject {tools}"
    assert commands.index(tools_cmd) < commands.index(stub_command)
    # The stage has what the script reads: the script itself and the .proto files.
    sources = {src for stage, srcs, _ in copies(all_stages[stub_stage]) if stage is None for src in srcs}
    assert {"protos", "scripts/gen-protos.sh"} <= sources or {"protos", "scripts"} <= sources, sources


def test_the_runtime_stage_has_the_stubs_and_not_their_generator(dockerfile: tuple[str, Instructions]) -> None:
    service, instructions = dockerfile
    all_stages = stages(instructions)
    final = all_stages["final"]
    (stub_stage,) = [name for name, stage in all_stages.items() if makefile_stub_command() in run_commands(stage)]
    workdir = [a for kw, a in all_stages[stub_stage] if kw == "WORKDIR"][-1]
    copied = {(src, dest) for stage, srcs, dest in copies(final) if stage == stub_stage for src in srcs}
    # Every directory the script writes, copied from the stub stage to the same place in the tree.
    assert copied == {(f"{workdir}/{d}", d) for d in stub_output_dirs()}, copied
    # Before the project install, so `pip install` packages them (they are git-ignored).
    copy_index = max(i for i, (kw, a) in enumerate(final) if kw == "COPY" and a.startswith(f"--from={stub_stage}"))
    install_index = min(i for i, (kw, a) in enumerate(final)
                        if kw == "RUN" and any(c.startswith("pip install") for c in shell_commands(a)))
    assert copy_index < install_index
    # The generator stays behind: nothing in the runtime stage installs or runs it.
    for kw, args in final:
        assert "grpcio-tools" not in args and "grpc_tools" not in args, f"{service}: {kw} {args}"
        assert kw != "RUN" or makefile_stub_command() not in args
    assert "grpcio-tools" not in requirement_closure(IMAGE_EXTRA[service])


def test_installs_only_its_own_extra(dockerfile: tuple[str, Instructions]) -> None:
    service, instructions = dockerfile
    commands = run_commands(final_stage(instructions))
    installs = [pip_install_args(c) for c in commands if pip_install_args(c) is not None]
    projects = [arg for args in installs for arg in args if arg.startswith(".")]
    assert projects == [f".[{IMAGE_EXTRA[service]}]"], f"{service}: installs {projects}"
    assert IMAGE_EXTRA[service] in PYPROJECT["project"]["optional-dependencies"]
    project_install = next(i for i, c in enumerate(commands) if f".[{IMAGE_EXTRA[service]}]" in shlex.split(c))
    closure = requirement_closure(IMAGE_EXTRA[service])
    # Each exact pin the Makefile installs first: the image does the same before the project when
    # its extra needs that package (torch for the model images), and never mentions it otherwise.
    for package, version in makefile_pins().items():
        pin_cmds = [c for c in commands if re.search(rf"(?<![\w-]){re.escape(package)}(?![\w-])", c)]
        if canonicalize_name(package) in closure:
            (pin_cmd,) = pin_cmds
            assert pip_install_args(pin_cmd) == [f"{package}=={version}"], f"{service}: {pin_cmd!r}"
            assert commands.index(pin_cmd) < project_install
        else:
            assert not pin_cmds, f"{service}: {pin_cmds} installs {package}, which [{IMAGE_EXTRA[service]}] does not need"
    # Nothing else is installed beside the project and those pins.
    extra_installs = [a for args in installs for a in args
                      if not a.startswith(".") and a.split("==")[0] not in makefile_pins()]
    assert not extra_installs, f"{service}: also installs {extra_installs}"


def test_the_gateway_image_carries_no_model_package() -> None:
    closure = requirement_closure(IMAGE_EXTRA["gateway"])
    assert not MODEL_PACKAGES & closure, f"[gateway] pulls in {MODEL_PACKAGES & closure}"
    gateway = final_stage(dockerfile_instructions(DOCKER_DIR / "gateway.Dockerfile"))
    assert not any("torch" in args for kw, args in gateway if kw == "RUN")
    # ... while the model images do get torch and transformers, from their extra.
    assert {"torch", "transformers"} <= requirement_closure(IMAGE_EXTRA["embedder"])


@pytest.mark.parametrize("service", SERVICES)
def test_the_extra_covers_what_the_service_imports(service: str) -> None:
    """Every third-party module `reflex <service>` can reach is installed by the image's extra
    (or the project's own dependencies), so a slim image cannot fail with ImportError."""
    packages = metadata.packages_distributions()
    closure = requirement_closure(IMAGE_EXTRA[service])
    imports = reachable_external_imports(service)
    missing = {m: packages.get(m) for m in imports
               if not {canonicalize_name(d) for d in packages.get(m, [])} & closure}
    assert not missing, f"{service} imports {missing}, not installed by [{IMAGE_EXTRA[service]}]"
    # The generated stubs (namespace packages, so not in the graph) run on grpcio and protobuf.
    assert {"grpcio", "protobuf"} <= closure
    if service == "gateway":
        assert not {m.replace("_", "-") for m in imports} & MODEL_PACKAGES
    else:
        assert {"torch", "transformers"} <= imports


def test_the_build_context_leaves_local_stubs_out() -> None:
    """The stubs in an image come from its stub stage: ones generated on the build machine (with
    whatever grpcio-tools it has) must not ride in with `COPY reflex reflex`."""
    patterns = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    assert {"**/*_pb2.py", "**/*_pb2.pyi", "**/*_pb2_grpc.py", ".venv", ".git"} <= patterns
    for service in SERVICES:
        for stage, srcs, _ in copies(dockerfile_instructions(DOCKER_DIR / f"{service}.Dockerfile")):
            assert stage is not None or not set(srcs) & patterns, f"{service}: COPY of an ignored path {srcs}"


def test_copies_what_the_install_needs(dockerfile: tuple[str, Instructions]) -> None:
    service, instructions = dockerfile
    sources = {src for stage, srcs, _ in copies(final_stage(instructions)) if stage is None for src in srcs}
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    needed = {"pyproject.toml", PYPROJECT["project"]["readme"], *packages}
    assert needed <= sources, f"{service}: missing {needed - sources}"
    all_sources = {src for stage, srcs, _ in copies(instructions) if stage is None for src in srcs}
    for src in all_sources - {PYPROJECT["project"]["readme"]}:  # README.md is written at release time
        assert (REPO / src).exists(), f"{service}: COPY {src} does not exist"


def test_runs_as_the_non_root_user_the_chart_expects(
    dockerfile: tuple[str, Instructions], chart_values: dict[str, Any]
) -> None:
    service, instructions = dockerfile
    final = final_stage(instructions)
    users = [args for kw, args in final if kw == "USER"]
    assert users, f"{service}: no USER"
    user = users[-1]
    assert user.isdigit() and int(user) != 0, "a numeric non-root uid (runAsNonRoot cannot check names)"
    assert int(user) == chart_values["podSecurityContext"]["runAsUser"]
    created = [c for c in run_commands(final) if c.startswith("useradd")]
    assert created and f"--uid {user}" in created[0]


def test_starts_a_real_reflex_subcommand(dockerfile: tuple[str, Instructions]) -> None:
    service, instructions = dockerfile
    final = final_stage(instructions)
    (entrypoint,) = [exec_form(a) for kw, a in final if kw == "ENTRYPOINT"]
    (cmd,) = [exec_form(a) for kw, a in final if kw == "CMD"]
    assert entrypoint == list(PYPROJECT["project"]["scripts"])  # ["reflex"]
    assert cmd == [service] and cmd[0] in COMMANDS


def test_env_and_ports_match_settings_and_chart(
    dockerfile: tuple[str, Instructions], chart_values: dict[str, Any]
) -> None:
    service, instructions = dockerfile
    final = final_stage(instructions)
    env: dict[str, str] = {}
    for kw, args in final:
        if kw == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(args)))
    reflex_names = {k for k in env if k.startswith("REFLEX_")}
    assert reflex_names and reflex_names <= SETTING_NAMES
    # Models load from the image only: nothing may be fetched from a model hub at run time.
    assert env["HF_HUB_OFFLINE"] == "1"
    (exposed,) = [int(a) for kw, a in final if kw == "EXPOSE"]
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
        values = {k: v for k, v in service.get("environment", {}).items()
                  if k.startswith("REFLEX_") and v is not None and "${" not in str(v)}
        parse_settings(values)  # a value the service would refuse at start-up fails here


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
