"""The dependency direction between the layers (folders) of `handler/`, checked on the source itself."""

from __future__ import annotations

import ast
from pathlib import Path

HANDLER = Path(__file__).resolve().parents[2] / "handler"

# Which layers each layer may import, besides itself. The modules at the top of `handler/` (the app
# factory and the entry points) and cli/ put everything together and may import any layer.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "cache": {"core"},
    "engine": {"core"},
    "service": {"core", "cache", "engine"},
    "observability": {"core", "cache", "engine", "service"},
    "middleware": {"core", "observability"},
    "api": {"core", "cache", "engine", "service"},
}


def layer_of(module: str) -> str | None:
    """`handler.cache.disk` -> `cache`; a top-level module or cli/ -> None (unrestricted)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in ALLOWED else None


def imports_of(source: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name.startswith("handler.")}


def violations(root: Path) -> list[str]:
    """`module imports target` for every import that points up or sideways across layers."""
    found = []
    for path in sorted(root.rglob("*.py")):
        module = ".".join(("handler", *path.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
        layer = layer_of(module)
        if layer is None:
            continue
        for target in sorted(imports_of(path.read_text(encoding="utf-8"))):
            target_layer = layer_of(target) or "top"
            if target_layer != layer and target_layer not in ALLOWED[layer]:
                found.append(f"{module} imports {target}")
    return found


def test_every_layer_imports_only_the_layers_below_it() -> None:
    assert violations(HANDLER) == []


def test_the_check_fails_on_an_upward_import(tmp_path: Path) -> None:
    for layer in ("cache", "service", "engine"):
        (tmp_path / layer).mkdir()
    (tmp_path / "cache" / "bad.py").write_text("from handler.service.chat_service import ChatService\n")
    (tmp_path / "engine" / "sideways.py").write_text("import handler.cache.keys\n")
    (tmp_path / "service" / "fine.py").write_text("from handler.cache.keys import cache_key\n")
    assert violations(tmp_path) == [
        "handler.cache.bad imports handler.service.chat_service",
        "handler.engine.sideways imports handler.cache.keys",
    ]
