#!/usr/bin/env python3
"""Writes tests/fixtures/torch/: small PyTorch checkpoints exactly as `torch.save` writes them,
the values torch holds for them (as safetensors, written from the same torch tensors), and bad
inputs for the loader's error paths. Output is byte-for-byte reproducible.

Run: /root/fvl-py/bin/python tools/make_torch_fixtures.py
"""

import io
import json
import os
import pickle
import shutil
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "torch"
CONFIG = {"model_type": "torch-fixture"}
# Fixed timestamp for the zips written here by hand (torch.save's own are already fixed).
EPOCH = (1980, 1, 1, 0, 0, 0)


def model_dir(name):
    d = OUT / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(CONFIG) + "\n")
    return d


def state():
    """The state dict: every dtype, views with storage offsets, names sharing one storage."""
    g = torch.Generator().manual_seed(7)

    def rand(*shape, dtype=torch.float32):
        # No zeros: values in ±[0.5, 1.5) so a wrong byte range cannot match by chance.
        x = torch.rand(*shape, generator=g) + 0.5
        sign = torch.randint(0, 2, shape, generator=g) * 2 - 1
        return (x * sign).to(dtype)

    big = rand(8, 6)  # one storage, two views at offsets 12 and 30
    tied = rand(5, 3, dtype=torch.float16)  # embeddings tied to the head: one storage
    sd = OrderedDict()
    sd["a.f32"] = rand(3, 5)
    sd["b.f16"] = rand(2, 3, 4, dtype=torch.float16)
    sd["c.bf16"] = rand(7, dtype=torch.bfloat16)
    sd["view.rows"] = big[2:5]
    sd["view.tail"] = big[5:]
    sd["embed.weight"] = tied
    sd["head.weight"] = tied
    sd["scalar"] = rand(1).reshape(())
    sd["param"] = torch.nn.Parameter(rand(4, 2), requires_grad=False)
    sd["ids"] = torch.arange(3, 9, dtype=torch.int64)
    return sd


def expected(sd, path):
    """What torch holds for each name, contiguous, as safetensors."""
    save_file({k: v.detach().clone().contiguous() for k, v in sd.items()}, str(path))


def rezip(src, dst, edit):
    """Rewrites the zip `src` entry by entry as `dst`, `edit(name, data)` giving the new
    (data, compression) or None to keep the entry."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            new = edit(info.filename, data)
            data, how = new if new is not None else (data, zipfile.ZIP_STORED)
            zi = zipfile.ZipInfo(info.filename, EPOCH)
            zi.compress_type = how
            zout.writestr(zi, data)


class Shell:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    sd = state()

    single = model_dir("single")
    torch.save(sd, single / "pytorch_model.bin")
    expected(sd, OUT / "expected.safetensors")

    # Two shards and the index transformers writes for them.
    sharded = model_dir("sharded")
    names = list(sd)
    parts = [names[: len(names) // 2], names[len(names) // 2 :]]
    weight_map = {}
    for i, part in enumerate(parts):
        fname = f"pytorch_model-{i + 1:05d}-of-{len(parts):05d}.bin"
        torch.save(OrderedDict((k, sd[k]) for k in part), sharded / fname)
        weight_map.update({k: fname for k in part})
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2) + "\n")

    # Bad inputs, one model folder each under bad/.
    def bad(case):
        return model_dir(f"bad/{case}") / "pytorch_model.bin"

    good = single / "pytorch_model.bin"

    # A pickle with a foreign global, in an otherwise valid torch archive.
    evil = pickle.dumps(OrderedDict(x=Shell()), protocol=2)
    rezip(good, bad("foreign_global"),
          lambda n, d: (evil, zipfile.ZIP_STORED) if n.endswith("/data.pkl") else None)

    blob = good.read_bytes()
    (bad("truncated")).write_bytes(blob[: len(blob) // 2])

    # A storage cut short: data/0 of a file with a single [4, 3] f32 tensor loses 8 bytes.
    buf = io.BytesIO()
    torch.save({"w": torch.full((4, 3), 1.25)}, buf)
    buf.seek(0)
    rezip(buf, bad("short_storage"),
          lambda n, d: (d[:-8], zipfile.ZIP_STORED) if n.endswith("/data/0") else None)

    # torch.save keeps views as they are: a transpose is saved non-contiguous.
    torch.save({"w.t": torch.full((2, 3), 0.75).t()}, bad("noncontiguous"))

    rezip(good, bad("compressed"), lambda n, d: (d, zipfile.ZIP_DEFLATED))
    rezip(good, bad("big_endian"),
          lambda n, d: (b"big", zipfile.ZIP_STORED) if n.endswith("/byteorder") else None)
    # The head of a pre-1.6 file (magic number, protocol, system info: three pickles); a whole
    # one names its storages by memory address, so it would not be reproducible.
    bad("legacy").write_bytes(b"".join(pickle.dumps(x, protocol=2) for x in (
        0x1950A86A20F9469CFC6C, 1001,
        {"protocol_version": 1001, "little_endian": True,
         "type_sizes": {"short": 2, "int": 4, "long": 4}})))

    # An index naming a shard that is not there.
    missing = model_dir("bad/missing_shard")
    shutil.copy(sharded / "pytorch_model-00001-of-00002.bin", missing)
    (missing / "pytorch_model.bin.index.json").write_text(
        (sharded / "pytorch_model.bin.index.json").read_text())


if __name__ == "__main__":
    main()
