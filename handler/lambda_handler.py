"""AWS Lambda entry point (`handler.lambda_handler.handler`).

Built once per container at import; importing it reads the config but neither imports
llama_cpp nor reads the model, so a cold start pays for the model only when a request
needs it.
"""

from mangum import Mangum

from handler.app import create_app

app = create_app()
handler = Mangum(app, lifespan="off")
