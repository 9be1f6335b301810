"""Serverless GGUF chat service: FastAPI app, Mangum entry point, lazy llama.cpp model."""
