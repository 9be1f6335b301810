"""AWS Lambda entry point (`handler.lambda_handler.handler`).

Built once per container at import; importing it reads the config but neither imports
llama_cpp nor reads the model, so a cold start pays for the model only when a request
needs it. An event Mangum cannot read is answered 400 (`handler.lambda_adapter`), never raised.
"""

from handler.deferred_openapi import import_fastapi

import_fastapi()  # first: FastAPI's OpenAPI models wait for /openapi.json

from handler.app import create_app  # noqa: E402
from handler.lambda_adapter import LambdaAdapter  # noqa: E402

app = create_app()
handler = LambdaAdapter(app, lifespan="off")
