"""The llama.cpp layer: where the model comes from, loading it, and generating on its one thread."""
