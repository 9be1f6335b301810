"""Plain helpers that several test files (and bench/) use: no fixtures here, those are in tests/conftest.py.

- `server`: a free loopback port, and real server processes (`python -m handler`) started, waited for, stopped.
- `reference`: llama-cpp-python's own answers on the same model file, which the service's are compared with.
- `lambda_events`: Lambda events and a context object for the entry point; standard library only, so that a
  child process that times the entry point can import it.
"""
