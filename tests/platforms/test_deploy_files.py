"""The deployment files: the SAM templates, the Dockerfile, the Cloud Run recipe pass their linters and agree with
the code and with each other. (The images themselves are in test_images.py.)"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from handler.core.config import ENV_PREFIX, load_settings
from handler.core.settings import Settings
from tests.platforms.test_images import image

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ["template.yaml", "infra/template-gpu.yaml"]
FUNCTIONS = ["ChatFunction", "ChatStreamFunction"]
DEPLOY_CLOUDRUN = ROOT / "infra" / "deploy-cloudrun.sh"


def tool(name: str) -> str:
    """The linters live in .venv-tools (see the Makefile); `make test` installs them."""
    folder = os.environ.get("TOOLS_BIN", str(ROOT / ".venv-tools" / "bin"))
    path = Path(folder) / name
    if not path.exists():
        found = shutil.which(name)
        assert found, f"{name} is missing: run `make test`, which installs it into .venv-tools"
        return found
    return str(path)


class CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation short-form tags (!Ref, !Sub, !If ...) as {"Fn": value} mappings."""


def _tag(loader: CfnLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {suffix: value}


CfnLoader.add_multi_constructor("!", _tag)


def load(path: str) -> dict[str, Any]:
    return yaml.load((ROOT / path).read_text(), Loader=CfnLoader)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load("template.yaml")


@pytest.fixture(scope="module")
def gpu_template() -> dict[str, Any]:
    return load("infra/template-gpu.yaml")


@pytest.fixture(scope="module")
def image_config() -> Settings:
    """The configuration an image runs with: the repository's config.yaml, no environment."""
    return load_settings(ROOT / "config.yaml", environ={})


def sam_validate(path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0", "AWS_DEFAULT_REGION": "us-east-1"}
    return subprocess.run(
        [tool("sam"), "validate", "--lint", "-t", str(path)], capture_output=True, text=True, env=env, timeout=300
    )


# ---------------------------------------------------------------- linters


@pytest.mark.deploy
@pytest.mark.parametrize("path", TEMPLATES)
def test_sam_validate_lint_passes(path: str) -> None:
    out = sam_validate(ROOT / path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "is a valid SAM Template" in out.stdout + out.stderr


@pytest.mark.deploy
def test_the_gpu_functions_lint_waiver_hides_only_accelerator_config(tmp_path: Path) -> None:
    """The released linters do not know AcceleratorConfig yet, so the GPU function waives E3002. Without the
    waiver, that property must be the one and only finding: nothing else hides behind it."""
    text = (ROOT / "infra/template-gpu.yaml").read_text()
    waiver = "    Metadata:\n      cfn-lint:\n        config:\n          ignore_checks: [E3002]\n"
    assert text.count(waiver) == 1
    unwaived = tmp_path / "template-gpu.yaml"
    unwaived.write_text(text.replace(waiver, ""))
    out = sam_validate(unwaived)
    findings = re.findall(r"\[(E\d+|W\d+)[^\]]*\] \(([^)]*)\)", out.stdout + out.stderr)
    assert findings == [("E3002", "Additional properties are not allowed ('AcceleratorConfig' was unexpected")], (
        out.stdout + out.stderr
    )


@pytest.mark.deploy
def test_hadolint_passes() -> None:
    out = subprocess.run(
        [tool("hadolint"), "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.deploy
def test_shell_scripts_pass_shellcheck() -> None:
    scripts = sorted(str(p) for p in (ROOT / "infra").glob("*.sh"))
    out = subprocess.run([tool("shellcheck"), *scripts], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


# ---------------------------------------------------------------- template.yaml: Lambda on demand, buffered and streaming


def test_each_function_is_an_image_of_its_mode(template: dict[str, Any]) -> None:
    modes = {}
    for name in FUNCTIONS:
        function = template["Resources"][name]
        assert function["Properties"]["PackageType"] == "Image"
        assert function["Metadata"]["Dockerfile"] == "Dockerfile"
        args = function["Metadata"]["DockerBuildArgs"]
        image(args["ACCEL"], args["MODE"])  # a final stage exists for it
        modes[name] = (args["MODE"], function["Properties"]["FunctionUrlConfig"].get("InvokeMode", "BUFFERED"))
    assert modes == {"ChatFunction": ("mangum", "BUFFERED"), "ChatStreamFunction": ("web-adapter", "RESPONSE_STREAM")}
    # The adapter streams only when the image says so, and the URL must agree.
    assert image("cpu", "web-adapter").env["AWS_LWA_INVOKE_MODE"] == "response_stream"


def test_every_environment_variable_is_a_setting(template: dict[str, Any], gpu_template: dict[str, Any]) -> None:
    variables = dict(template["Globals"]["Function"]["Environment"]["Variables"])
    for name in FUNCTIONS:
        variables.update(template["Resources"][name]["Properties"].get("Environment", {}).get("Variables", {}))
    variables.update(gpu_template["Resources"]["GpuFunction"]["Properties"]["Environment"]["Variables"])
    for name in variables:
        assert name.startswith(ENV_PREFIX), name
        assert name.removeprefix(ENV_PREFIX).lower() in Settings.model_fields, f"{name} is not a setting"


def test_the_functions_may_read_only_the_model_the_keys_secret_and_items_of_the_table(
    template: dict[str, Any],
) -> None:
    for name in FUNCTIONS:
        granted = {}
        for policy in template["Resources"][name]["Properties"]["Policies"]:
            condition, statement_doc, otherwise = policy["If"]
            assert otherwise == {"Ref": "AWS::NoValue"}
            (statement,) = statement_doc["Statement"]
            granted[condition] = (statement["Action"], statement["Resource"])
        assert granted == {
            "HasS3Model": ("s3:GetObject", {"Sub": "arn:${AWS::Partition}:s3:::${ModelBucket}/${ModelKey}"}),
            "HasApiKeysSecret": ("secretsmanager:GetSecretValue", {"Ref": "ApiKeysSecretArn"}),
            "HasSharedCache": (["dynamodb:GetItem", "dynamodb:PutItem"], {"GetAtt": "SharedCacheTable.Arn"}),
        }, name


def public_url_permissions(resources: dict[str, Any], target: str) -> dict[str, dict[str, Any]]:
    """The target's grants to everyone ("*"), each of which must be for a public URL only."""
    out = {}
    for resource in resources.values():
        properties = resource.get("Properties", {})
        if (
            resource["Type"] == "AWS::Lambda::Permission"
            and properties["FunctionName"] == {"Ref": target}
            and properties["Principal"] == "*"
        ):
            assert resource["Condition"] == "IsPublicUrl"
            out[properties["Action"]] = properties
    return out


def test_a_public_url_grants_both_invoke_permissions_and_only_through_the_url(
    template: dict[str, Any], gpu_template: dict[str, Any]
) -> None:
    """SAM adds them itself only for a literal AuthType NONE; ours is a parameter, so the templates spell
    them out. lambda:InvokeFunction is granted only for calls that come through the URL."""
    targets = [(template, name) for name in FUNCTIONS] + [(gpu_template, "GpuFunctionAlias")]
    for document, target in targets:
        assert document["Conditions"]["IsPublicUrl"] == {"Equals": [{"Ref": "FunctionUrlAuth"}, "NONE"]}
        granted = public_url_permissions(document["Resources"], target)
        assert set(granted) == {"lambda:InvokeFunctionUrl", "lambda:InvokeFunction"}, target
        assert granted["lambda:InvokeFunctionUrl"]["FunctionUrlAuthType"] == "NONE"
        assert granted["lambda:InvokeFunction"]["InvokedViaFunctionUrl"] is True
        assert {p["Principal"] for p in granted.values()} == {"*"}


def test_the_shared_table_is_on_demand_expires_items_and_matches_the_code(template: dict[str, Any]) -> None:
    from handler.cache.shared import EXPIRES, KEY

    table = template["Resources"]["SharedCacheTable"]
    assert table["Condition"] == "HasSharedCache"
    properties = table["Properties"]
    assert properties["BillingMode"] == "PAY_PER_REQUEST"
    assert properties["KeySchema"] == [{"AttributeName": KEY, "KeyType": "HASH"}]
    assert properties["TimeToLiveSpecification"] == {"AttributeName": EXPIRES, "Enabled": True}


def test_a_function_outlives_the_generation_timeout(
    template: dict[str, Any], gpu_template: dict[str, Any], image_config: Settings
) -> None:
    """Behind the web adapter the app does not see the invocation's deadline: generation_timeout_seconds is
    what ends a long generation, so it must come before the function's own timeout kills it."""
    limit = image_config.generation_timeout_seconds
    assert limit is not None
    assert template["Globals"]["Function"]["Timeout"] > limit
    assert gpu_template["Resources"]["GpuFunction"]["Properties"]["Timeout"] > limit


def test_the_http_api_has_the_function_urls_auth(template: dict[str, Any]) -> None:
    """No public door: the HTTP API's one route takes the URLs' AuthType (AWS_IAM by default, NONE only
    when FunctionUrlAuth says so), and no function has a SAM Api/HttpApi event, which would make an API
    of its own without auth."""
    resources = template["Resources"]
    assert template["Parameters"]["FunctionUrlAuth"]["Default"] == "AWS_IAM"
    for name in FUNCTIONS:
        assert resources[name]["Properties"]["FunctionUrlConfig"]["AuthType"] == {"Ref": "FunctionUrlAuth"}
        assert "Events" not in resources[name]["Properties"], name
    routes = {k: r["Properties"] for k, r in resources.items() if r["Type"] == "AWS::ApiGatewayV2::Route"}
    assert list(routes) == ["ChatHttpApiRoute"]
    route = routes["ChatHttpApiRoute"]
    assert route["AuthorizationType"] == {"If": ["IsPublicUrl", "NONE", "AWS_IAM"]}
    assert route["Target"] == {"Sub": "integrations/${ChatHttpApiIntegration}"}
    integration = resources["ChatHttpApiIntegration"]["Properties"]
    assert integration["IntegrationUri"] == {"GetAtt": "ChatFunction.Arn"}
    assert integration["PayloadFormatVersion"] == "2.0"  # the HTTP API v2 event that remaining_ms reads
    assert template["Outputs"]["ChatApiUrl"]["Value"] == {"Sub": "${ChatHttpApi.ApiEndpoint}/"}
    # API Gateway may invoke the function for this API only.
    invoke = resources["ChatHttpApiInvoke"]["Properties"]
    assert (invoke["Principal"], invoke["FunctionName"]) == ("apigateway.amazonaws.com", {"Ref": "ChatFunction"})
    assert "${ChatHttpApi}/" in invoke["SourceArn"]["Sub"]


def test_behind_the_http_api_a_generation_ends_before_the_gateways_timeout(template: dict[str, Any]) -> None:
    from handler.api.common import GATEWAY_INTEGRATION_MS
    from handler.service.chat_service import RESPONSE_MARGIN_S

    timeout_ms = template["Resources"]["ChatHttpApiIntegration"]["Properties"]["TimeoutInMillis"]
    assert timeout_ms <= 30_000  # an HTTP API's most
    assert timeout_ms - 1_000 >= GATEWAY_INTEGRATION_MS  # time for the answer to travel back
    assert GATEWAY_INTEGRATION_MS - RESPONSE_MARGIN_S * 1000 < 28_000


@pytest.mark.deploy
def test_sam_local_start_api_finds_the_http_api_route() -> None:
    """`sam local start-api` (README) reads plain ApiGatewayV2 routes only when such a resource comes
    before the first AWS::Serverless::Function in the template; asked offline, through SAM CLI's own
    API provider, the route must be there and lead to ChatFunction."""
    script = (
        "from samcli.lib.providers.sam_stack_provider import SamLocalStackProvider\n"
        "from samcli.lib.providers.api_provider import ApiProvider\n"
        "stacks, _ = SamLocalStackProvider.get_stacks('template.yaml')\n"
        "for r in ApiProvider(stacks).api.routes:\n"
        "    print(r.path, r.function_name, r.payload_format_version)\n"
    )
    python = str(Path(tool("sam")).parent / "python")
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0", "AWS_DEFAULT_REGION": "us-east-1"}
    out = subprocess.run([python, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["$default ChatFunction 2.0", ""], out.stdout + out.stderr


# ---------------------------------------------------------------- infra/template-gpu.yaml: Lambda Managed Instances


def test_the_gpu_function_is_an_x86_image_on_a_capacity_provider_with_an_accelerator(
    gpu_template: dict[str, Any],
) -> None:
    resources = gpu_template["Resources"]
    properties = resources["GpuFunction"]["Properties"]
    assert (properties["PackageType"], properties["Architectures"]) == ("Image", ["x86_64"])
    assert properties["AcceleratorConfig"] == {"AcceleratorMemorySize": {"Ref": "AcceleratorMemoryGiB"}}
    assert gpu_template["Parameters"]["AcceleratorMemoryGiB"]["AllowedValues"] == [3, 6, 12, 16, 24, 48]
    provider_config = properties["CapacityProviderConfig"]["LambdaManagedInstancesCapacityProviderConfig"]
    assert provider_config["CapacityProviderArn"] == {"GetAtt": "GpuCapacityProvider.Arn"}
    provider = resources["GpuCapacityProvider"]
    assert provider["Type"] == "AWS::Lambda::CapacityProvider"
    assert provider["Properties"]["InstanceRequirements"]["Architectures"] == ["x86_64"]
    assert provider["Properties"]["PermissionsConfig"]["CapacityProviderOperatorRoleArn"] == {
        "GetAtt": "CapacityProviderOperatorRole.Arn"
    }
    # Managed Instances run published versions: the URL points at the alias of the version, and streams.
    assert resources["GpuFunctionAlias"]["Properties"]["FunctionVersion"] == {"GetAtt": "GpuFunctionVersion.Version"}
    url = resources["GpuFunctionUrl"]["Properties"]
    assert (url["TargetFunctionArn"], url["InvokeMode"]) == ({"Ref": "GpuFunctionAlias"}, "RESPONSE_STREAM")
    # A new image publishes a new version: the version's description names the image.
    assert "${ImageUri}" in resources["GpuFunctionVersion"]["Properties"]["Description"]["Sub"]


def test_the_gpu_functions_concurrency_is_the_engines_parallel_sequences(
    gpu_template: dict[str, Any], image_config: Settings
) -> None:
    properties = gpu_template["Resources"]["GpuFunction"]["Properties"]
    provider_config = properties["CapacityProviderConfig"]["LambdaManagedInstancesCapacityProviderConfig"]
    parallel = {"Ref": "ParallelSequences"}
    assert provider_config["PerExecutionEnvironmentMaxConcurrency"] == parallel
    assert properties["Environment"]["Variables"]["CHAT_N_PARALLEL"] == parallel
    assert gpu_template["Parameters"]["ParallelSequences"]["Default"] == image_config.n_parallel
    assert properties["Environment"]["Variables"]["CHAT_N_GPU_LAYERS"] == "-1"


def test_the_gpu_template_names_the_image_mode_it_needs(gpu_template: dict[str, Any]) -> None:
    described = gpu_template["Parameters"]["ImageUri"]["Description"]
    assert "ACCEL=cuda" in described and "MODE=web-adapter" in described
    assert image("cuda", "web-adapter").command == ["python3", "-m", "handler"]


# ---------------------------------------------------------------- Cloud Run: the deploy script and the service definition


def deploy_flags() -> dict[str, str]:
    """The `gcloud run deploy` flags of infra/deploy-cloudrun.sh, with the script's defaults put in."""
    text = DEPLOY_CLOUDRUN.read_text()
    defaults = dict(re.findall(r"^(\w+)=\$\{\1:-([^}]*)\}$", text, flags=re.M))
    command = re.search(r"^gcloud run deploy .*?(?<!\\)\n", text, flags=re.M | re.S)
    assert command, "the script runs gcloud run deploy"
    flags = {}
    for word in shlex.split(command.group(0).replace("\\\n", " ")):
        if word.startswith("--"):
            name, _, value = word.partition("=")
            flags[name] = re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), m.group(0)), value)
    return flags


@pytest.fixture(scope="module")
def cloudrun_service() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "infra" / "cloudrun-service.yaml").read_text()))


def test_cloud_run_gets_one_l4_the_minimum_resources_and_scales_to_zero(cloudrun_service: dict[str, Any]) -> None:
    flags = deploy_flags()
    assert (flags["--gpu"], flags["--gpu-type"]) == ("1", "nvidia-l4")
    assert (flags["--cpu"], flags["--memory"]) == ("4", "16Gi")  # an L4 needs at least 4 CPUs and 16 GiB
    assert "--no-cpu-throttling" in flags  # GPU services need CPU always allocated
    assert flags["--min-instances"] == "0"

    template = cloudrun_service["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/minScale"] == "0"
    assert annotations["run.googleapis.com/cpu-throttling"] == "false"
    assert template["spec"]["nodeSelector"] == {"run.googleapis.com/accelerator": "nvidia-l4"}
    (container,) = template["spec"]["containers"]
    assert container["resources"]["limits"] == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}


def test_cloud_run_concurrency_is_the_engines_parallel_sequences(
    cloudrun_service: dict[str, Any], image_config: Settings
) -> None:
    flags = deploy_flags()
    env = dict(pair.split("=", 1) for pair in re.findall(r"CHAT_\w+=[^,\"]*", DEPLOY_CLOUDRUN.read_text()))
    assert flags["--concurrency"] == str(image_config.n_parallel)
    assert env["CHAT_N_PARALLEL"] == "${PARALLEL}"  # the same variable as --concurrency
    spec = cloudrun_service["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    container_env = {e["name"]: e["value"] for e in container["env"]}
    assert spec["containerConcurrency"] == image_config.n_parallel == int(container_env["CHAT_N_PARALLEL"])
    assert container_env["CHAT_N_GPU_LAYERS"] == env["CHAT_N_GPU_LAYERS"] == "-1"


def test_cloud_run_serves_the_web_adapter_image_on_its_port_and_probes_health(cloudrun_service: dict[str, Any]) -> None:
    text = DEPLOY_CLOUDRUN.read_text()
    built = re.search(r"^docker build (.*?)-t ", text.replace("\\\n", " "), flags=re.M)
    assert built, "the script builds the image"
    build_args = dict(re.findall(r"--build-arg (\w+)=(\S+)", built.group(1)))
    assert (build_args["ACCEL"], build_args["MODE"]) == ("cuda", "web-adapter")
    assert build_args["CUDA_ARCHITECTURES"] == "89"  # the L4's generation
    served = image("cuda", "web-adapter")
    assert served.command == ["python3", "-m", "handler"] and served.env["HOST"] == "0.0.0.0"

    flags = deploy_flags()
    (container,) = cloudrun_service["spec"]["template"]["spec"]["containers"]
    assert flags["--port"] == str(container["ports"][0]["containerPort"]) == served.env["PORT"]
    assert "httpGet.path=/health" in flags["--startup-probe"]
    assert container["startupProbe"]["httpGet"]["path"] == "/health"


def test_every_gcloud_run_deploy_flag_exists() -> None:
    """Checked against the installed gcloud's own help, offline; skipped where gcloud is not installed."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        pytest.skip("gcloud is not installed here")
    out = subprocess.run([gcloud, "run", "deploy", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    known = set(re.findall(r"--(?:\[no-\])?[\w-]+", re.sub(r"\x1b\[[0-9;]*m", "", out.stdout)))
    known |= {flag.replace("[no-]", "no-") for flag in known} | {flag.replace("[no-]", "") for flag in known}
    text = DEPLOY_CLOUDRUN.read_text()
    used = set(deploy_flags()) | set(re.findall(r"(--add-volume(?:-mount)?)=", text))
    used |= {"--allow-unauthenticated", "--no-allow-unauthenticated"}
    assert used <= known, used - known


# ---------------------------------------------------------------- the files the deployment files name


def made_by_make() -> set[str]:
    """Files the Makefile makes rather than the repository holding them: the embedded models (`make model`)."""
    return set(re.findall(r"^\w+_FILE\s*:=\s*(\S+)$", (ROOT / "Makefile").read_text(), flags=re.M))


def test_every_repository_path_the_deployment_files_name_exists() -> None:
    """A path such as infra/..., tests/events/... or models/... named in a template, the sample samconfig,
    config.yaml or a script exists (or, for a model, is what `make model` writes)."""
    named = [*TEMPLATES, "infra/samconfig.toml", "config.yaml", "Dockerfile", "infra/README.md"]
    named += [str(p.relative_to(ROOT)) for p in sorted((ROOT / "infra").glob("*.sh"))]
    named += ["infra/cloudrun-service.yaml", "tests/events/README.md"]
    made = made_by_make()
    assert made, "the Makefile names the models it makes"
    missing = []
    pattern = r"(?<![\w./-])(?:infra|tests|models|handler|bench)/[\w./-]*"
    for source in named:
        for found in re.findall(pattern, (ROOT / source).read_text()):
            path = found.rstrip(".")
            if not (ROOT / path).exists() and path not in made:
                missing.append(f"{source}: {path}")
    assert not missing, missing
    assert "models/SmolLM2-135M-Instruct.Q4_1.gguf" in made  # config.yaml's model_path


def test_the_samples_local_invoke_event_is_a_shipped_chat_request() -> None:
    import tomllib

    config = tomllib.loads((ROOT / "infra/samconfig.toml").read_text())
    event = config["default"]["local_invoke"]["parameters"]["event"]
    assert (ROOT / event).is_file() and event.startswith("tests/events/")  # test_shipped_events.py invokes it
