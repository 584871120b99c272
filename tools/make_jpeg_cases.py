"""JPEG variants and the bytes PIL decodes them to, as HF's `load_image` does
(`ImageOps.exif_transpose`, then `.convert("RGB")`).

Writes tests/fixtures/images/jpeg/*.jpg (small, odd sizes) and
tests/fixtures/images/jpeg/decoded.safetensors: one U8 tensor [H, W, 3] per file stem, and
`refused.json`: the cut files PIL refuses (the Rust test cuts the same bytes). A header that
claims more rows or columns than the scan holds is *not* refused by PIL (libjpeg fills the
missing blocks with mid-grey): `lying_height.jpg` records that. Seeded; a rerun with the
pinned Pillow (tools/README.md) reproduces the files byte for byte.

    /root/fvl-py/bin/python tools/make_jpeg_cases.py
"""

import io
import json
import os

import numpy as np
from PIL import Image, ImageOps
from safetensors.numpy import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "images", "jpeg")


def content(w, h, seed):
    """Smooth colour with noise and a sharp edge: chroma detail that subsampling changes."""
    rs = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([
        128 + 100 * np.sin(xx / 3.0 + seed),
        128 + 100 * np.cos(yy / 4.0),
        np.where(xx > w // 2, 230, 30) + 0 * yy,
    ], -1).astype(np.float64)
    img += rs.randn(h, w, 3) * 12
    return np.clip(img, 0, 255).round().astype(np.uint8)


def exif_with_orientation(o):
    e = Image.Exif()
    e[0x0112] = o
    return e.tobytes()


def cases():
    rgb = Image.fromarray(content(37, 23, 1), "RGB")
    gray = Image.fromarray(content(29, 19, 2)[..., 0], "L")
    cmyk_px = np.concatenate([content(21, 17, 3), content(21, 17, 4)[..., :1]], -1)
    cmyk = Image.frombytes("CMYK", (21, 17), cmyk_px.tobytes())
    return {
        "420": (rgb, dict(quality=85, subsampling=2)),
        "422": (rgb, dict(quality=85, subsampling=1)),
        "444": (rgb, dict(quality=85, subsampling=0)),
        "progressive": (rgb, dict(quality=80, subsampling=2, progressive=True)),
        "gray": (gray, dict(quality=85)),
        "cmyk": (cmyk, dict(quality=90)),
        # EXIF orientation 6 (rotate 90° clockwise) and 3 (180°) on a non-square 4:2:2 image.
        "exif6": (rgb, dict(quality=85, subsampling=1, exif=exif_with_orientation(6))),
        "exif3": (rgb, dict(quality=85, subsampling=2, exif=exif_with_orientation(3))),
    }


def decode(data):
    """HF `transformers.image_utils.load_image` on bytes."""
    img = Image.open(io.BytesIO(data))
    img = ImageOps.exif_transpose(img)
    return np.asarray(img.convert("RGB"))


def refused(data):
    try:
        decode(data)
    except Exception as e:  # noqa: BLE001 - any refusal counts
        return f"{type(e).__name__}: {e}"
    return None


def main():
    os.makedirs(OUT, exist_ok=True)
    decoded = {}
    for name, (img, opts) in cases().items():
        buf = io.BytesIO()
        img.save(buf, "JPEG", **opts)
        data = buf.getvalue()
        with open(os.path.join(OUT, f"{name}.jpg"), "wb") as f:
            f.write(data)
        decoded[name] = decode(data).copy()
        print(f"{name}.jpg: {len(data)} bytes, decoded {decoded[name].shape}")
    # A frame header claiming twice the rows its scan holds: PIL decodes it (grey fill).
    data = open(os.path.join(OUT, "420.jpg"), "rb").read()
    sof = data.index(b"\xff\xc0")
    lying = bytearray(data)
    h = int.from_bytes(data[sof + 5:sof + 7], "big")
    lying[sof + 5:sof + 7] = (2 * h).to_bytes(2, "big")
    with open(os.path.join(OUT, "lying_height.jpg"), "wb") as f:
        f.write(lying)
    decoded["lying_height"] = decode(bytes(lying)).copy()
    save_file(decoded, os.path.join(OUT, "decoded.safetensors"))
    # What PIL refuses: 420.jpg cut to a fraction of its bytes, or missing only its EOI marker.
    results = {f"cut_{p}_percent": refused(data[: len(data) * p // 100]) for p in (30, 60, 90)}
    results["no_eoi"] = refused(data[:-2])
    for k, v in results.items():
        assert v is not None, f"PIL accepted {k}"
        print(f"PIL refuses {k}: {v}")
    with open(os.path.join(OUT, "refused.json"), "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
