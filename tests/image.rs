//! Image decoding and preprocessing against the PIL / HF fixtures (tools/README.md), and the
//! refusal of bad input.

use std::path::PathBuf;

use fvl_wgpu::image::{
    decode_image, load_image, pad_to_square, pixel_values, preprocess, resize_bicubic, PreprocessConfig, RgbImage,
};
use safetensors::SafeTensors;

const IMAGES: [&str; 3] = ["photo.png", "gray.png", "text.jpg"];

const MODELS: [&str; 2] = ["florence2-a", "florence2-b"];

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// One F32 tensor of a fixture file: (shape, values).
fn tensor(file: &PathBuf, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(file).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name} in {file:?}");
    let values = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (t.shape().to_vec(), values)
}

/// A fixture uint8 image stored as f32 HWC (`[H, W]` for grey, replicated like PIL's convert).
fn fixture_image(file: &PathBuf, name: &str) -> RgbImage {
    let (shape, v) = tensor(file, name);
    let (height, width) = (shape[0], shape[1]);
    let channels = if shape.len() == 3 { shape[2] } else { 1 };
    let data = v
        .chunks_exact(channels)
        .flat_map(|px| {
            let px: Vec<u8> = px.iter().map(|&x| x as u8).collect();
            if channels == 1 {
                vec![px[0]; 3]
            } else {
                px
            }
        })
        .collect();
    RgbImage {
        width,
        height,
        data,
    }
}

/// (max |a − b|, number of differing bytes).
fn byte_diff(a: &RgbImage, b: &RgbImage) -> (u8, usize) {
    assert_eq!((a.width, a.height), (b.width, b.height));
    let diffs = a.data.iter().zip(&b.data).map(|(x, y)| x.abs_diff(*y));
    (
        diffs.clone().max().unwrap(),
        diffs.filter(|&d| d > 0).count(),
    )
}

fn stem(name: &str) -> &str {
    name.split('.').next().unwrap()
}

/// Max |a − b| over each channel's plane, checked against `steps` uint8 steps
/// (`steps · (1/255) / std + 1e-6`).
fn check_pixels(got: &[f32], want: &[f32], cfg: &PreprocessConfig, steps: u8, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    let plane = got.len() / 3;
    for c in 0..3 {
        let tol = (steps as f64 / 255.0 / cfg.image_std[c]) as f32 + 1e-6;
        let range = c * plane..(c + 1) * plane;
        let err = got[range.clone()]
            .iter()
            .zip(&want[range])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!("{what} channel {c}: max |diff| {err:.3e} (tolerance {tol:.3e})");
        assert!(err <= tol, "{what} channel {c}: {err} > {tol}");
    }
}

#[test]
fn decode_matches_pil() {
    let dir = fixtures().join("images");
    for name in IMAGES {
        let got = load_image(dir.join(name)).unwrap();
        let want = fixture_image(
            &dir.join(format!("decoded_{}.safetensors", stem(name))),
            "decoded_u8",
        );
        let (max, count) = byte_diff(&got, &want);
        println!(
            "decode {name}: max |diff| {max}, {count} of {} bytes differ",
            got.data.len()
        );
        assert_eq!(max, 0, "decode {name}");
    }
}

#[test]
fn resize_is_bit_exact_with_pil() {
    // Feed PIL's own decode to the resizer, so this measures the resampler alone.
    for model in MODELS {
        let cfg =
            PreprocessConfig::from_file(fixtures().join(model).join("preprocessor_config.json"))
                .unwrap();
        for name in IMAGES {
            let decoded = fixtures()
                .join("images")
                .join(format!("decoded_{}.safetensors", stem(name)));
            let src = fixture_image(&decoded, "decoded_u8");
            let expected = fixtures()
                .join(model)
                .join(format!("expected_{}.safetensors", stem(name)));
            let want = fixture_image(&expected, "resized_u8");
            let got = resize_bicubic(&src, cfg.width, cfg.height);
            let (max, count) = byte_diff(&got, &want);
            println!("resize {model} {name}: max |diff| {max}, {count} bytes differ");
            assert_eq!(max, 0, "resize {model} {name}");
        }
    }
}

#[test]
fn decode_and_resize_match_pil() {
    for model in MODELS {
        let cfg =
            PreprocessConfig::from_file(fixtures().join(model).join("preprocessor_config.json"))
                .unwrap();
        for name in IMAGES {
            let img = load_image(fixtures().join("images").join(name)).unwrap();
            let expected = fixtures()
                .join(model)
                .join(format!("expected_{}.safetensors", stem(name)));
            let want = fixture_image(&expected, "resized_u8");
            let got = resize_bicubic(&img, cfg.width, cfg.height);
            let (max, count) = byte_diff(&got, &want);
            println!(
                "decode+resize {model} {name}: max |diff| {max}, {count} of {} bytes differ",
                got.data.len()
            );
            assert_eq!(max, 0, "{model} {name}");
        }
    }
}

#[test]
fn preprocess_matches_hf_processor() {
    for model in MODELS {
        let cfg =
            PreprocessConfig::from_file(fixtures().join(model).join("preprocessor_config.json"))
                .unwrap();
        for name in IMAGES {
            let path = fixtures().join("images").join(name);
            let expected = fixtures()
                .join(model)
                .join(format!("expected_{}.safetensors", stem(name)));
            let p = preprocess(&path, &cfg, false).unwrap();
            let (shape, want) = tensor(&expected, "pixel_values");
            assert_eq!(shape, [1, 3, p.height, p.width]);
            let img = load_image(&path).unwrap();
            assert_eq!(p.original_size, (img.width, img.height));
            check_pixels(
                &p.pixel_values,
                &want,
                &cfg,
                1,
                &format!("{model} {name}"),
            );

            // The normalisation alone, from the fixture's resized image.
            let resized = fixture_image(&expected, "resized_u8");
            let pv = pixel_values(&resized, &cfg);
            check_pixels(
                &pv,
                &want,
                &cfg,
                1,
                &format!("{model} {name} from resized_u8"),
            );

            if name == "photo.png" {
                let p = preprocess(&path, &cfg, true).unwrap();
                let (_, want) = tensor(&expected, "pixel_values_pad");
                assert_eq!(p.original_size, (72, 52));
                check_pixels(
                    &p.pixel_values,
                    &want,
                    &cfg,
                    1,
                    &format!("{model} {name} pad"),
                );
            }
        }
    }
}

#[test]
fn pad_to_square_centres_with_floor() {
    let cfg = PreprocessConfig::default();
    assert_eq!(cfg.pad_fill(), [123, 116, 103]);
    // Tall 1×4 image: 4×4 canvas, pasted at x = (4 − 1) / 2 = 1.
    let tall = RgbImage::filled(1, 4, [9, 9, 9]);
    let sq = pad_to_square(&tall, [1, 2, 3]);
    assert_eq!((sq.width, sq.height), (4, 4));
    for y in 0..4 {
        for x in 0..4 {
            let px = &sq.data[(y * 4 + x) * 3..][..3];
            let want: &[u8] = if x == 1 { &[9, 9, 9] } else { &[1, 2, 3] };
            assert_eq!(px, want, "({x}, {y})");
        }
    }
    // Wide 3×2: 3×3 canvas, pasted at y = (3 − 2) / 2 = 0, background in the last row.
    let wide = RgbImage::filled(3, 2, [9, 9, 9]);
    let sq = pad_to_square(&wide, [1, 2, 3]);
    assert_eq!(&sq.data[..18], &[9; 18]);
    assert_eq!(&sq.data[18..], &[1, 2, 3].repeat(3)[..]);
    // Square images are untouched.
    assert_eq!(pad_to_square(&sq, [0; 3]), sq);
}

/// FNV-1a 64 of a byte string.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[test]
fn resize_pass_order_matches_pillow_13() {
    // A synthetic image both sides can generate; the hashes are of Pillow 13.0.0's
    // `Image.fromarray(src).resize((ow, oh), Image.BICUBIC)`. In each case the two pass orders
    // give different bytes (147 to 837 of them), so a wrong order cannot pass.
    let src = |w: usize, h: usize| RgbImage {
        width: w,
        height: h,
        data: (0..h * w * 3)
            .map(|i| {
                let (y, x, c) = (i / (w * 3), i / 3 % w, i % 3);
                ((x * 37 + y * 91 + c * 53 + (x * y % 17) * 11) % 256) as u8
            })
            .collect(),
    };
    let cases = [
        ((37, 61), (50, 20), 0xe8f3_3758_ce08_6363u64), // height first
        ((61, 37), (20, 50), 0x9a02_812d_1cf8_2987),    // width first (height grows)
        ((64, 64), (40, 10), 0x394b_10cc_b2e4_f0ba),    // height first, both shrink
        ((64, 64), (30, 10), 0x49d8_cc11_27fb_c942),    // width first, both shrink
    ];
    for ((w, h), (ow, oh), want) in cases {
        let got = resize_bicubic(&src(w, h), ow, oh);
        assert_eq!(fnv1a(&got.data), want, "{w}x{h} -> {ow}x{oh}");
    }
}

#[test]
fn resize_to_same_size_is_identity() {
    let img = load_image(fixtures().join("images/photo.png")).unwrap();
    assert_eq!(resize_bicubic(&img, img.width, img.height), img);
}

#[test]
fn config_fields_and_defaults() {
    let a = PreprocessConfig::from_file(fixtures().join("florence2-a/preprocessor_config.json"))
        .unwrap();
    assert_eq!((a.height, a.width), (64, 64));
    assert!(a.do_resize && a.do_rescale && a.do_normalize);
    assert_eq!(a.image_mean, [0.485, 0.456, 0.406]);
    let d = PreprocessConfig::from_json(&serde_json::json!({}), "x.json").unwrap();
    assert_eq!(d, PreprocessConfig::default());
    assert_eq!((d.height, d.width), (768, 768));
    let scalar = serde_json::json!({"image_mean": 0.5, "image_std": 0.5, "do_center_crop": true,
        "crop_size": {"height": 768, "width": 768}});
    let s = PreprocessConfig::from_json(&scalar, "x.json").unwrap();
    assert_eq!(s.image_mean, [0.5; 3]);
}

/// The error message of a failed result, which must name the file.
fn message<T: std::fmt::Debug>(r: fvl_wgpu::Result<T>, file: &str) -> String {
    let msg = r.unwrap_err().to_string();
    assert!(msg.contains(file), "message does not name {file}: {msg}");
    assert!(!msg.contains('\n'), "message is not one line: {msg}");
    msg
}

#[test]
fn config_errors_name_file_and_field() {
    let bad = [
        (serde_json::json!({"resample": 2}), "`resample`"),
        (
            serde_json::json!({"size": {"shortest_edge": 224}}),
            "`size`",
        ),
        (serde_json::json!({"image_std": [1, 2]}), "`image_std`"),
        (serde_json::json!({"do_resize": "yes"}), "`do_resize`"),
        (
            serde_json::json!({"do_center_crop": true}),
            "`do_center_crop`",
        ),
    ];
    for (json, field) in bad {
        let msg = message(PreprocessConfig::from_json(&json, "cfg.json"), "cfg.json");
        println!("{msg}");
        assert!(msg.contains(field), "{msg}");
    }
    let msg = message(
        PreprocessConfig::from_json(&serde_json::json!({"resample": 2}), "cfg.json"),
        "cfg.json",
    );
    assert!(msg.contains("only 3 (PIL bicubic)"), "{msg}");
}

/// Writes `bytes` to a fresh file under the temp dir and returns its path.
fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("fvl-image-test-{}-{name}", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    path
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    let start = out.len();
    out.extend(kind);
    out.extend(data);
    let crc = crc32(&out[start..]);
    out.extend(crc.to_be_bytes());
    out
}

/// A PNG whose (valid, CRC-checked) header claims `w × h` RGB8, followed by a few bytes of
/// bogus image data: any decoder that believes the header before checking would allocate.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit, RGB, deflate, adaptive filter, no interlace
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &ihdr));
    png.extend(png_chunk(b"IDAT", &[0x78, 0x9c, 0, 0]));
    png.extend(png_chunk(b"IEND", &[]));
    png
}

/// A BMP with a 40-byte info header claiming `w × h`, 24-bit, and no pixel data.
fn bmp_header_only(w: i32, h: i32) -> Vec<u8> {
    let mut b = b"BM".to_vec();
    b.extend(54u32.to_le_bytes()); // file size
    b.extend([0; 4]);
    b.extend(54u32.to_le_bytes()); // pixel data offset
    b.extend(40u32.to_le_bytes());
    b.extend(w.to_le_bytes());
    b.extend(h.to_le_bytes());
    b.extend(1u16.to_le_bytes()); // planes
    b.extend(24u16.to_le_bytes()); // bits per pixel
    b.extend([0; 24]); // no compression, sizes, resolution, palette counts
    b
}

#[test]
fn rejects_non_image() {
    let path = temp_file("text.png", b"this is plain text, not a picture\n");
    let msg = message(load_image(&path), "text.png");
    println!("{msg}");
    assert!(msg.contains("not an image"), "{msg}");
    std::fs::remove_file(path).unwrap();
}

#[test]
fn rejects_truncated_png() {
    let full = std::fs::read(fixtures().join("images/photo.png")).unwrap();
    let path = temp_file("half.png", &full[..full.len() / 2]);
    let msg = message(load_image(&path), "half.png");
    println!("{msg}");
    assert!(msg.contains("truncated"), "{msg}");
    std::fs::remove_file(path).unwrap();
}

#[test]
fn rejects_zero_sized() {
    // Both decoders refuse these headers themselves ("too large", "invalid dimensions");
    // the message must still say what is wrong.
    for (name, bytes) in [
        ("zero-width.bmp", bmp_header_only(0, 5)),
        ("zero-height.bmp", bmp_header_only(5, 0)),
        ("zero.png", png_header_only(0, 0)),
    ] {
        let path = temp_file(name, &bytes);
        let msg = message(load_image(&path), name);
        println!("{msg}");
        assert!(msg.contains("zero width or height"), "{msg}");
        std::fs::remove_file(path).unwrap();
    }
}

#[test]
fn rejects_giant_header_before_decoding() {
    for (name, bytes) in [
        ("giant.png", png_header_only(30000, 30000)),
        ("giant.bmp", bmp_header_only(30000, 30000)),
        // Within the per-side limit but above the pixel-count limit.
        ("wide.png", png_header_only(16000, 16000)),
    ] {
        let path = temp_file(name, &bytes);
        let msg = message(load_image(&path), name);
        println!("{msg}");
        assert!(msg.contains("too large"), "{msg}");
        std::fs::remove_file(path).unwrap();
    }
}

/// The JPEG variants of `tools/make_jpeg_cases.py` (4:2:0, 4:2:2, 4:4:4, progressive, grey,
/// CMYK, EXIF orientations 6 and 3, a header with more rows than its scan) decode to exactly
/// the bytes PIL gives after `exif_transpose` and `.convert("RGB")`.
#[test]
fn jpeg_variants_decode_to_pil_bytes() {
    let dir = fixtures().join("images/jpeg");
    let bytes = std::fs::read(dir.join("decoded.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    assert_eq!(names.len(), 9, "{names:?}");
    for name in names {
        let want = st.tensor(name).unwrap();
        let got = load_image(dir.join(format!("{name}.jpg"))).unwrap();
        assert_eq!(want.shape(), [got.height, got.width, 3], "{name}");
        let differ = got.data.iter().zip(want.data()).filter(|(a, b)| a != b).count();
        println!("{name}: {differ} of {} bytes differ", got.data.len());
        assert_eq!(differ, 0, "{name}.jpg differs from PIL's decode");
        // The same bytes from memory.
        let raw = std::fs::read(dir.join(format!("{name}.jpg"))).unwrap();
        assert_eq!(decode_image(&raw, name).unwrap(), got);
    }
}

/// PIL refuses a JPEG cut short (`refused.json`): so do we, naming the file.
#[test]
fn rejects_truncated_jpeg() {
    let full = std::fs::read(fixtures().join("images/jpeg/420.jpg")).unwrap();
    let refused: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("images/jpeg/refused.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(refused.as_object().unwrap().len(), 4);
    let cuts = [
        ("cut_30_percent", full.len() * 30 / 100),
        ("cut_60_percent", full.len() * 60 / 100),
        ("cut_90_percent", full.len() * 90 / 100),
        ("no_eoi", full.len() - 2),
    ];
    for (case, len) in cuts {
        assert!(refused[case].is_string(), "PIL refuses {case}");
        let msg = message(decode_image(&full[..len], case), case);
        println!("{msg}");
        assert!(msg.contains("truncated"), "{msg}");
    }
}
