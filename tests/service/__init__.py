"""The service: deadlines, load, faults, lazy loading."""
