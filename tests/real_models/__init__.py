"""The models users run (SmolLM2, Gemma), quantized, each in a process of its own."""
