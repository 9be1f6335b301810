"""The HTTP API: /chat, the OpenAI, Responses and Messages routes, tools, embeddings, tokens, errors, keys, limits."""
