"""The OpenAI-compatible API: its request and response shapes, and streaming as server-sent events."""
