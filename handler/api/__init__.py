"""HTTP routes and the request and response shapes: the service's own /chat and the OpenAI-compatible /v1."""
