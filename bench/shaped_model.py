"""A stand-in for a GGUF where its weights cannot go: same architecture, metadata, tokenizer, tensor
shapes and quantization, random weights. Speed depends on those, not on the weights' values, so a
benchmark on the stand-in measures what the real model would (its text is gibberish).

Used for the GPU benchmark: the GPU machine has no network and takes at most 64 MiB of files,
less than the 253 MB model, but the layout is 2 MB.

    python bench/shaped_model.py dump models/gemma-3-270m-q4_k_m.gguf layout.pkl.gz   # here
    python bench/shaped_model.py build layout.pkl.gz shaped.gguf                      # there
"""

from __future__ import annotations

import argparse
import gzip
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

Q4_K_M = 15  # llama_ftype LLAMA_FTYPE_MOSTLY_Q4_K_M


def dump(model: Path, layout: Path) -> None:
    import gguf

    reader = gguf.GGUFReader(str(model))
    kv = [
        (name, [int(t) for t in field.types], field.contents())
        for name, field in reader.fields.items()
        if not name.startswith("GGUF.") and name != "general.alignment"
    ]
    tensors = [(t.name, [int(n) for n in t.shape], int(t.tensor_type)) for t in reader.tensors]
    with gzip.open(layout, "wb") as f:
        pickle.dump({"arch": reader.fields["general.architecture"].contents(), "kv": kv, "tensors": tensors}, f)
    print(f"{len(kv)} metadata keys, {len(tensors)} tensors -> {layout}")


def build(layout: Path, out: Path, ftype: int = Q4_K_M) -> None:
    """Write the layout with random F16 weights (F32 where the original is F32), then quantize with
    llama.cpp's own quantizer, as the real model was made."""
    import gguf
    import llama_cpp

    with gzip.open(layout, "rb") as f:
        spec: dict[str, Any] = pickle.load(f)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        f16 = Path(tmp) / "f16.gguf"
        writer = gguf.GGUFWriter(str(f16), spec["arch"])
        for name, types, value in spec["kv"]:
            if name in ("general.architecture", "general.file_type"):
                continue
            vtype = gguf.GGUFValueType(types[0])
            sub = gguf.GGUFValueType(types[-1]) if vtype == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(name, value, vtype, sub_type=sub)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        for name, shape, tensor_type in spec["tensors"]:
            dtype = np.float32 if tensor_type == gguf.GGMLQuantizationType.F32 else np.float16
            data = (rng.standard_normal(tuple(reversed(shape)), dtype=np.float32) * 0.02).astype(dtype)
            if name.endswith("norm.weight"):
                data[...] = 1
            writer.add_tensor(name, data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        params.nthread = 0
        status = llama_cpp.llama_model_quantize(str(f16).encode(), str(out).encode(), params)
        if status != 0:
            raise SystemExit(f"llama_model_quantize failed with {status}")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.0f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump")
    d.add_argument("model", type=Path)
    d.add_argument("layout", type=Path)
    b = sub.add_parser("build")
    b.add_argument("layout", type=Path)
    b.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.command == "dump":
        dump(args.model, args.layout)
    else:
        build(args.layout, args.out)


if __name__ == "__main__":
    main()
