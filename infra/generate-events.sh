#!/usr/bin/env bash
# Regenerate the Lambda event payloads the tests use (tests/events/) with `sam local generate-event`.
# sam has no function URL generator: tests/events/README.md says how function-url.json is derived.
set -euo pipefail
cd "$(dirname "$0")/.."
sam=${SAM:-.venv-tools/bin/sam}
export SAM_CLI_TELEMETRY=0
"$sam" local generate-event apigateway http-api-proxy --method POST --path chat > tests/events/apigw-http-v2.json
"$sam" local generate-event apigateway aws-proxy --method POST --path chat > tests/events/apigw-rest-v1.json
"$sam" local generate-event alb request --method POST --path chat > tests/events/alb.json
echo "written: tests/events/{apigw-http-v2,apigw-rest-v1,alb}.json"
