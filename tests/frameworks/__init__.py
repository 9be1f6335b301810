"""Agent frameworks (pydantic-ai, instructor, LangChain, llama-index, litellm, the SDKs) against a real server."""
