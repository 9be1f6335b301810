"""Request fields no route declares: each is refused by name in a 400, never silently ignored."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from handler.core.errors import BadRequest


def refuse_undeclared(extra: Mapping[str, Any] | None, not_implemented: Mapping[str, tuple[Any, ...]]) -> None:
    """Raise a 400 naming the first undeclared field that asks for something: a parameter of the API that
    this service does not implement (unless sent with a value that asks for nothing), or an unknown one."""
    for name, value in (extra or {}).items():
        if value is None or value in not_implemented.get(name, ()):
            continue
        if name in not_implemented:
            raise BadRequest(
                f"The parameter `{name}` is not supported by this service (llama.cpp, text only); leave it out.",
                param=name,
            )
        raise BadRequest(f"Unknown parameter `{name}`; see /docs for the parameters this service accepts.", param=name)
