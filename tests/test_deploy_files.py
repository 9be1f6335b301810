"""The deployment files: the SAM template and the Dockerfile pass their linters and agree with the code."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from handler.core.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent


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


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return yaml.load((ROOT / "template.yaml").read_text(), Loader=CfnLoader)


@pytest.mark.deploy
def test_sam_validate_lint_passes() -> None:
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0", "AWS_DEFAULT_REGION": "us-east-1"}
    out = subprocess.run(
        [tool("sam"), "validate", "--lint", "-t", str(ROOT / "template.yaml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "is a valid SAM Template" in out.stdout + out.stderr


@pytest.mark.deploy
def test_hadolint_passes() -> None:
    out = subprocess.run(
        [tool("hadolint"), "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_function_is_an_image_with_build_metadata(template: dict[str, Any]) -> None:
    function = template["Resources"]["ChatFunction"]
    assert function["Properties"]["PackageType"] == "Image"
    assert function["Metadata"]["Dockerfile"] == "Dockerfile"


def test_every_environment_variable_is_a_setting(template: dict[str, Any]) -> None:
    variables = template["Resources"]["ChatFunction"]["Properties"]["Environment"]["Variables"]
    for name in variables:
        assert name.startswith(ENV_PREFIX), name
        assert name.removeprefix(ENV_PREFIX).lower() in Settings.model_fields, f"{name} is not a setting"


def test_the_function_may_read_only_the_model_the_keys_secret_and_items_of_the_table(template: dict[str, Any]) -> None:
    policies = template["Resources"]["ChatFunction"]["Properties"]["Policies"]
    granted = {}
    for policy in policies:
        condition, statement_doc, otherwise = policy["If"]
        assert otherwise == {"Ref": "AWS::NoValue"}
        (statement,) = statement_doc["Statement"]
        granted[condition] = (statement["Action"], statement["Resource"])
    assert granted == {
        "HasS3Model": ("s3:GetObject", {"Sub": "arn:${AWS::Partition}:s3:::${ModelBucket}/${ModelKey}"}),
        "HasApiKeysSecret": ("secretsmanager:GetSecretValue", {"Ref": "ApiKeysSecretArn"}),
        "HasSharedCache": (["dynamodb:GetItem", "dynamodb:PutItem"], {"GetAtt": "SharedCacheTable.Arn"}),
    }


def test_the_shared_table_is_on_demand_expires_items_and_matches_the_code(template: dict[str, Any]) -> None:
    from handler.cache.shared import EXPIRES, KEY

    table = template["Resources"]["SharedCacheTable"]
    assert table["Condition"] == "HasSharedCache"
    properties = table["Properties"]
    assert properties["BillingMode"] == "PAY_PER_REQUEST"
    assert properties["KeySchema"] == [{"AttributeName": KEY, "KeyType": "HASH"}]
    assert properties["TimeToLiveSpecification"] == {"AttributeName": EXPIRES, "Enabled": True}


def test_dockerfile_entry_point_is_the_mangum_handler() -> None:
    text = (ROOT / "Dockerfile").read_text()
    commands = re.findall(r'^CMD \["([\w.]+)"\]', text, flags=re.M)
    assert commands and set(commands) == {"handler.lambda_handler.handler"}
    module, attribute = commands[0].rsplit(".", 1)
    check = f"import {module} as m; from mangum import Mangum; assert isinstance(m.{attribute}, Mangum)"
    out = subprocess.run(
        [sys.executable, "-c", check],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CHAT_CACHE_DIR": ""},
    )
    assert out.returncode == 0, out.stderr


def test_a_non_editable_install_carries_every_module(tmp_path: Path) -> None:
    """The image installs the package with `pip install --target`, not editable: every subpackage must ship."""
    target = tmp_path / "app"
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    shipped = {p.relative_to(target).as_posix() for p in (target / "handler").rglob("*.py")}
    in_tree = {p.relative_to(ROOT).as_posix() for p in (ROOT / "handler").rglob("*.py")}
    assert shipped == in_tree
