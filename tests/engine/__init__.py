"""The engine: the scheduler and its parts, speculation, the model files, sampling features, LoRA."""
