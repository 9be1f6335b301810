"""The bottom layer: settings, errors and the value types that every other layer may import."""
