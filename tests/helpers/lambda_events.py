"""Lambda events carrying a request, and the context object, for the entry point (`handler.lambda_handler`).

Standard library only: a child process that times the entry point's cold start imports these after it (bench/,
tests that check what the entry point imports), and they must add nothing of their own to what it measures.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

EVENTS = Path(__file__).resolve().parent.parent / "events"


class FakeLambdaContext:
    """The attributes Mangum and the service read from the Lambda context object."""

    def __init__(self, request_id: str = "c6af9ac6-7b61-11e6-9a41-93e8deadbeef") -> None:
        self.aws_request_id = request_id
        self.function_name = "chat"
        self.memory_limit_in_mb = 3008

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def lambda_event(
    kind: str,
    body: dict[str, Any] | str,
    path: str = "/chat",
    method: str = "POST",
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A `sam local generate-event` payload (tests/events/) carrying our request, base64-encoded as sam writes it."""
    event = copy.deepcopy(json.loads((EVENTS / f"{kind}.json").read_text()))
    raw = body if isinstance(body, str) else json.dumps(body)
    event["body"] = base64.b64encode(raw.encode()).decode()
    event["isBase64Encoded"] = True
    extra = {"content-type": "application/json", **(headers or {})}
    if "version" in event:  # HTTP API v2 and function URLs
        event["rawPath"] = path
        event["rawQueryString"] = ""
        event["queryStringParameters"] = {}
        event["requestContext"]["http"]["path"] = path
        event["requestContext"]["http"]["method"] = method
        event["headers"].update(extra)
    else:  # REST API v1 and ALB
        event["path"] = path
        event["httpMethod"] = method
        event["queryStringParameters"] = {}
        event.pop("multiValueQueryStringParameters", None)
        event["headers"].update(extra)
        if "multiValueHeaders" in event:
            event["multiValueHeaders"].update({k: [v] for k, v in extra.items()})
    return event


def lambda_body(response: dict[str, Any]) -> Any:
    """The JSON body of the entry point's response, base64-decoded where it came encoded."""
    body = response["body"]
    if response.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    return json.loads(body)
