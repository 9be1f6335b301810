"""Command-line tools: assemble the default model, warm the cache."""
