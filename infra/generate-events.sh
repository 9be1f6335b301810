#!/usr/bin/env bash
# Regenerate the Lambda event payloads in tests/events/ with `sam local generate-event`: each one a real
# POST /chat with a JSON body, which `sam local invoke -e` and the tests replay. sam has no option for a
# header and no function URL generator, so the content-type header is added and function-url.json is
# derived from the HTTP API event here (tests/events/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
sam=${SAM:-.venv-tools/bin/sam}
python=${PYTHON:-python3}
body='{"prompt": "What is the capital of France?"}'
export SAM_CLI_TELEMETRY=0
"$sam" local generate-event apigateway http-api-proxy --method POST --path chat --body "$body" > tests/events/apigw-http-v2.json
"$sam" local generate-event apigateway aws-proxy --method POST --path chat --body "$body" > tests/events/apigw-rest-v1.json
"$sam" local generate-event alb request --method POST --path chat --body "$body" > tests/events/alb.json
"$python" - <<'EOF'
import copy
import json
from pathlib import Path

events = Path("tests/events")


def rewrite(name, change):
    path = events / name
    event = json.loads(path.read_text())
    change(event)
    path.write_text(json.dumps(event, indent=2) + "\n")


def json_body(event):
    event["headers"]["content-type"] = "application/json"
    if "multiValueHeaders" in event:
        event["multiValueHeaders"]["content-type"] = ["application/json"]


for name in ("apigw-http-v2.json", "apigw-rest-v1.json", "alb.json"):
    rewrite(name, json_body)

# A function URL sends the HTTP API v2 payload, from its own domain, without API Gateway's own fields.
url = copy.deepcopy(json.loads((events / "apigw-http-v2.json").read_text()))
url_id = "abcdefghijklmnopqrstuvwxyz0123"
context = url["requestContext"]
context.update(apiId=url_id, domainName=f"{url_id}.lambda-url.us-east-1.on.aws", domainPrefix=url_id)
for key in ("authentication", "authorizer"):
    context.pop(key)
for key in ("pathParameters", "stageVariables"):
    url.pop(key)
(events / "function-url.json").write_text(json.dumps(url, indent=2) + "\n")
EOF
echo "written: tests/events/{apigw-http-v2,apigw-rest-v1,alb,function-url}.json"
