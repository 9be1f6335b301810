"""The container images, without a Docker engine: the Dockerfile read as Docker reads it, its install replayed.

Two modes from one Dockerfile (build argument MODE), for CPU and CUDA alike (ACCEL):
- `mangum`: the Mangum handler is the entry point (Lambda on demand, buffered);
- `web-adapter`: `python3 -m handler` (uvicorn on $PORT), with the Lambda Web Adapter extension.
The install is replayed as the image runs it (`pip install --target`), from a copy of the build context
the Dockerfile's COPY lines name; the web-adapter server is started with the image's command and
environment and must answer the adapter's readiness check and stream a chat completion token by token.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import openai
import pytest

from tests.helpers.server import free_port, stop_process, wait_until_answers

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
ACCELS = ("cpu", "cuda")
MODES = ("mangum", "web-adapter")
APP = "/var/task"  # where both runtime images keep the app (LAMBDA_TASK_ROOT)


# ---------------------------------------------------------------- the Dockerfile, as Docker reads it


@dataclass
class Stage:
    name: str
    base: str  # the FROM image or stage, ${ARG}s substituted
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: continuation lines joined, comments dropped."""
    out, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line[:-1] + " " if line.endswith("\\") else line
        if line.endswith("\\"):
            continue
        keyword, _, args = pending.partition(" ")
        out.append((keyword.upper(), args.strip()))
        pending = ""
    return out


def substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), text)


def parse(text: str, build_args: dict[str, str]) -> tuple[dict[str, Stage], str]:
    """The stages by name and the name of the final stage, for these build arguments."""
    args, stages, current = {}, {}, None
    for keyword, rest in instructions(text):
        if keyword == "ARG" and current is None:
            name, _, default = rest.partition("=")
            args[name] = build_args.get(name, default.strip('"'))
        elif keyword == "FROM":
            base, _, alias = substitute(rest, args).partition(" AS ")
            current = Stage(alias.strip() or f"stage-{len(stages)}", base.strip())
            stages[current.name] = current
        elif current is not None:
            current.instructions.append((keyword, rest))
    return stages, current.name if current else ""


def env_values(args: str) -> dict[str, str]:
    """`ENV A=1 B="two"` as a mapping."""
    return dict(item.split("=", 1) for item in shlex.split(args))


@dataclass
class Image:
    """What a container of the image starts with: command and environment (its own stages' part)."""

    stages: list[Stage]  # from the final stage back to the first one built on an outside image
    entrypoint: list[str] | None
    cmd: list[str] | None
    env: dict[str, str]
    workdir: str | None

    @property
    def command(self) -> list[str]:
        return (self.entrypoint or []) + (self.cmd or [])

    def copies(self) -> list[str]:
        return [args for stage in self.stages for args in stage.all("COPY")]


def image(accel: str, mode: str) -> Image:
    stages, final = parse(DOCKERFILE.read_text(), {"ACCEL": accel, "MODE": mode})
    chain, name = [], final
    while name in stages:
        chain.append(stages[name])
        name = stages[name].base
    entrypoint = cmd = workdir = None
    env: dict[str, str] = {}
    for stage in reversed(chain):  # from the base up, as Docker applies them
        for keyword, args in stage.instructions:
            if keyword == "ENV":
                env.update(env_values(args))
            elif keyword == "WORKDIR":
                workdir = args
            elif keyword == "ENTRYPOINT":
                entrypoint, cmd = json.loads(args), None  # a new ENTRYPOINT drops the inherited CMD
            elif keyword == "CMD":
                cmd = json.loads(args)
    return Image(chain, entrypoint, cmd, env, workdir)


def test_every_accel_and_mode_has_its_own_final_stage() -> None:
    for accel in ACCELS:
        for mode in MODES:
            built = image(accel, mode)
            assert built.stages[0].base == f"{accel}-{mode}"  # the last FROM picks it by name
            assert built.stages[-1].base.startswith(("public.ecr.aws/lambda/python:", "nvidia/cuda:"))


def test_mangum_mode_runs_the_mangum_handler() -> None:
    assert image("cpu", "mangum").command == ["handler.lambda_handler.handler"]  # the base image's runtime client
    assert image("cuda", "mangum").command == ["python3", "-m", "awslambdaric", "handler.lambda_handler.handler"]
    for accel in ACCELS:
        assert not any("lambda-adapter" in c for c in image(accel, "mangum").copies())


def test_web_adapter_mode_runs_uvicorn_behind_the_adapter_extension() -> None:
    stages, _ = parse(DOCKERFILE.read_text(), {})
    adapter_stage = next(s for s in stages.values() if s.base.startswith("public.ecr.aws/awsguru/aws-lambda-adapter:"))
    for accel in ACCELS:
        built = image(accel, "web-adapter")
        assert built.command == ["python3", "-m", "handler"]
        # Lambda runs every executable in /opt/extensions as an extension.
        assert f"--from={adapter_stage.name} /lambda-adapter /opt/extensions/lambda-adapter" in built.copies()
        assert built.env["AWS_LWA_INVOKE_MODE"] == "response_stream"
        assert built.env["AWS_LWA_READINESS_CHECK_PATH"] == "/health"
        assert "AWS_LWA_PORT" not in built.env  # the adapter falls back to PORT, which the server reads
        assert (built.env["HOST"], built.env["AWS_LWA_HOST"]) == ("0.0.0.0", "127.0.0.1")
        assert built.env["PYTHONPATH"] == APP


def test_both_modes_share_the_build_stages() -> None:
    """MODE only picks the last stage: switching it never recompiles llama.cpp."""
    stages, _ = parse(DOCKERFILE.read_text(), {})
    for name, stage in stages.items():
        if name.startswith(("build", "runtime")):
            assert not re.search(r"\bMODE\b", " ".join(args for _, args in stage.instructions)), name


# ---------------------------------------------------------------- the install, replayed


def app_install_command() -> str:
    """The RUN that installs the app and its dependencies into the folder the runtime stages copy."""
    stages, _ = parse(DOCKERFILE.read_text(), {})
    runs = [run for run in stages["build"].all("RUN") if "--target /opt/app " in run]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope="module")
def build_context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the build stage's COPY lines put in its WORKDIR, and nothing else."""
    stages, _ = parse(DOCKERFILE.read_text(), {})
    context = tmp_path_factory.mktemp("src")
    for copy in stages["build"].all("COPY"):
        *sources, destination = shlex.split(copy)
        for source in sources:
            target = context / destination / Path(source).name if destination.endswith("/") else context / destination
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, context / destination, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(ROOT / source, target)
    return context


@pytest.fixture(scope="module")
def installed(build_context: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's install command, run as the image runs it, into a folder standing for /var/task. It is
    the same command for every ACCEL and MODE, so it runs once. `--no-deps`: the dependencies come from
    this environment (the import checks below need them); what the extra pulls is checked by resolving."""
    target = tmp_path_factory.mktemp("var-task")
    command = app_install_command().replace("pip install ", "pip install --no-deps --quiet ", 1)
    command = command.replace("/opt/app", str(target)).replace("/src", str(build_context))
    command = re.sub(r"\bpython3\b", shlex.quote(sys.executable), command)
    out = subprocess.run(["bash", "-c", command], cwd=build_context, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return target


def test_the_app_install_is_the_same_for_every_image_and_carries_the_aws_extra() -> None:
    command = app_install_command()
    assert "${ACCEL}" not in command and "${MODE}" not in command
    assert re.search(r'--target /opt/app "/src\[aws\]"', command), command


def test_the_install_carries_every_module_and_the_config(installed: Path) -> None:
    shipped = {p.relative_to(installed).as_posix() for p in (installed / "handler").rglob("*.py")}
    in_tree = {p.relative_to(ROOT).as_posix() for p in (ROOT / "handler").rglob("*.py")}
    assert shipped == in_tree
    assert (installed / "config.yaml").read_text() == (ROOT / "config.yaml").read_text()


def run_in_image(installed: Path, code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Python in a folder standing for /var/task, with the image's PYTHONPATH pointing at it."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=installed,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": os.environ["PATH"], **env, "PYTHONPATH": str(installed), "CHAT_CACHE_DIR": ""},
    )


@pytest.mark.parametrize("accel", ACCELS)
def test_mangum_mode_imports_its_entry_point_from_the_install(installed: Path, accel: str) -> None:
    module, attribute = image(accel, "mangum").command[-1].rsplit(".", 1)
    check = (
        f"import {module} as m, handler; from pathlib import Path; from mangum import Mangum; "
        f"assert isinstance(m.{attribute}, Mangum); "
        f"assert Path(handler.__file__).is_relative_to({str(installed)!r}), handler.__file__"
    )
    out = run_in_image(installed, check, {"AWS_LAMBDA_FUNCTION_NAME": "chat"})
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("accel", ACCELS)
def test_web_adapter_mode_imports_its_entry_point_from_the_install(installed: Path, accel: str) -> None:
    command = image(accel, "web-adapter").command
    assert command[1] == "-m"
    check = (
        f"import importlib, handler; from pathlib import Path; m = importlib.import_module('{command[2]}.__main__'); "
        f"assert callable(m.main); assert Path(handler.__file__).is_relative_to({str(installed)!r})"
    )
    out = run_in_image(installed, check, {})
    assert out.returncode == 0, out.stderr


def test_the_install_pulls_the_pinned_boto3(build_context: Path, tmp_path: Path) -> None:
    """The image's own requirement set, resolved as `pip install --target` resolves it (ignoring whatever the
    base image or this environment has): boto3 at the version the `aws` extra pins, and botocore with it."""
    metadata = (build_context / "pyproject.toml").read_text()
    pinned = re.search(r'^aws = \["boto3==([\w.]+)"', metadata, flags=re.M)
    assert pinned, "the aws extra pins boto3"
    spec = re.search(r'"(/src\[[\w,]+\])"', app_install_command())
    assert spec
    report = tmp_path / "report.json"
    out = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--target", str(tmp_path / "t")),
            *("--report", str(report), spec.group(1).replace("/src", str(build_context))),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    installs = json.loads(report.read_text())["install"]
    resolved = {re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(): i["metadata"]["version"] for i in installs}
    assert resolved["boto3"] == pinned.group(1)
    assert "botocore" in resolved and "llama-cpp-python" in resolved


# ---------------------------------------------------------------- the web-adapter server, started as the image starts it


def listening_on_every_interface(port: int) -> bool:
    """Whether a socket listens on 0.0.0.0:port (Linux's /proc/net/tcp: state 0A is LISTEN)."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(r.split()[1] == f"00000000:{port:04X}" and r.split()[3] == "0A" for r in rows)


@pytest.fixture(scope="module")
def web_adapter_server(
    installed: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, dict[str, str]]]:
    """`python3 -m handler` from the install, in its WORKDIR, with the image's environment and no other,
    as Lambda (behind the adapter) or Cloud Run starts the container; PORT is set as Cloud Run sets it."""
    built = image("cpu", "web-adapter")
    env = {k: v.replace(APP, str(installed)) for k, v in built.env.items()}
    tmp = tmp_path_factory.mktemp("web-adapter")
    port = free_port()
    env.update(
        {
            "PATH": os.environ["PATH"],
            "PORT": str(port),
            # The test's model instead of the baked one, and folders of the test's own for /tmp:
            "CHAT_MODEL_PATH": str(tiny_model),
            "CHAT_MODEL_SHA256": "",  # the image's config declares the default model's
            "CHAT_N_CTX": "512",
            "CHAT_CACHE_DIR": str(tmp / "cache"),
            "CHAT_MODEL_DOWNLOAD_DIR": str(tmp / "models"),
            "CHAT_LOG_LEVEL": "WARNING",
        }
    )
    command = [sys.executable if part == "python3" else part for part in built.command]
    workdir = (built.workdir or APP).replace(APP, str(installed))
    process = subprocess.Popen(command, env=env, cwd=workdir)
    # The adapter's readiness check: GET AWS_LWA_READINESS_CHECK_PATH on AWS_LWA_HOST (else HOST) at
    # AWS_LWA_PORT (else PORT), until it answers.
    host = env.get("AWS_LWA_HOST") or env.get("HOST") or "127.0.0.1"
    adapter_port = env.get("AWS_LWA_PORT") or env.get("PORT") or "8080"
    readiness = f"http://{host}:{adapter_port}{env.get('AWS_LWA_READINESS_CHECK_PATH', '/')}"
    try:
        ready = wait_until_answers(readiness, process, 60)
        assert ready.status_code == 200, ready.text
        yield f"http://127.0.0.1:{port}", env
    finally:
        stop_process(process)


def test_the_server_listens_on_every_interface_at_the_platforms_port(
    web_adapter_server: tuple[str, dict[str, str]],
) -> None:
    _, env = web_adapter_server
    assert listening_on_every_interface(int(env["PORT"]))


def test_the_server_streams_a_chat_completion_token_by_token(web_adapter_server: tuple[str, dict[str, str]]) -> None:
    url, _ = web_adapter_server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    request = {"model": model, "messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 24}
    raw = client.chat.completions.with_raw_response.create(
        **request, stream=True, stream_options={"include_usage": True}
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.headers["x-cache"] == "MISS"
    chunks = list(raw.parse())
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1  # one event per token, not one blob
    usage = chunks[-1].usage
    assert usage is not None and 1 < len(pieces) <= usage.completion_tokens

    whole = client.chat.completions.with_raw_response.create(**request, extra_headers={"Cache-Control": "no-cache"})
    assert whole.headers["x-cache"] == "MISS"  # generated again, not read back from the stream's entry
    assert "".join(pieces) == whole.parse().choices[0].message.content
