//! Image decoding and Florence-2 preprocessing, matching what the Python reference
//! (PIL + HF `CLIPImageProcessor`, Florence-VL's `expand2square`) feeds the vision tower.
//!
//! * [`load_image`] / [`decode_image`] (a file / bytes in memory): decode PNG/JPEG/WebP/BMP
//!   (JPEG with libjpeg-turbo, to PIL's bytes), apply EXIF orientation, convert to 8-bit RGB
//!   the way PIL's `.convert("RGB")` does. Dimensions are checked from the header before any
//!   pixel buffer is allocated ([`MAX_IMAGE_SIDE`], [`MAX_IMAGE_PIXELS`]).
//! * [`pad_to_square`]: Florence-VL's pad-to-square with the mean colour.
//! * [`resize_bicubic`]: bit-exact port of PIL's `Image.resize(size, BICUBIC)` for uint8 RGB.
//! * [`pixel_values`]: `(u8 · rescale − mean) / std`, CHW.
//! * [`preprocess`]: all of the above for one file.
//!
//! Owns: pixels from files or bytes up to the normalised tensor on the host. Must not touch:
//! the GPU (the pipeline uploads the pixels), model folders (the pipeline passes the
//! preprocessor config it resolved through `weights`).

use std::io::Cursor;
use std::path::Path;

use ::image::error::ImageError;
use ::image::metadata::Orientation;
use ::image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use serde_json::Value;

use crate::{Error, Result};

mod jpeg;

/// Largest accepted width or height, in pixels. Checked from the file header, before decoding.
pub const MAX_IMAGE_SIDE: u32 = 16384;
/// Largest accepted pixel count (width × height), checked before decoding. 100 Mpixel is a
/// little above PIL's own `MAX_IMAGE_PIXELS` warning threshold (~89.5 Mpixel).
pub const MAX_IMAGE_PIXELS: u64 = 100_000_000;
/// Largest resize target side `preprocessor_config.json` may ask for: bounds the pixel
/// buffer and the vision pass before anything is allocated (Florence-2 uses 768).
pub const MAX_RESIZE_SIDE: usize = 4096;
/// Memory the decoder may allocate: enough for the largest accepted image at 16-bit RGBA
/// (8 bytes a pixel), so no accepted image trips it, but a lying header cannot run away.
const MAX_DECODER_ALLOC: u64 = MAX_IMAGE_PIXELS * 8 + (64 << 20);

/// ImageNet mean, Florence-2-large's `image_mean`.
const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
/// ImageNet std, Florence-2-large's `image_std`.
const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];
/// PIL's resampling filter number for bicubic, the only one implemented.
const PIL_BICUBIC: u64 = 3;

/// An 8-bit RGB image, rows top to bottom, pixels interleaved `R G B`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height × width × 3` bytes, HWC.
    pub data: Vec<u8>,
}

impl RgbImage {
    /// A `width × height` image filled with one colour.
    pub fn filled(width: usize, height: usize, rgb: [u8; 3]) -> RgbImage {
        RgbImage {
            width,
            height,
            data: rgb.repeat(width * height),
        }
    }
}

/// The image-processor settings of a CLIP-style `preprocessor_config.json`.
///
/// Absent fields take Florence-2-large's values (768×768, bicubic, rescale 1/255, ImageNet
/// mean/std, no centre crop). `do_convert_rgb` is only type-checked: [`load_image`] always
/// yields RGB, which is what HF's conversion produces for every image the model can take.
#[derive(Clone, Debug, PartialEq)]
pub struct PreprocessConfig {
    /// Resize to `width × height` (aspect ratio not kept), as CLIP's `size {height, width}`.
    pub do_resize: bool,
    /// Target height (`size.height`).
    pub height: usize,
    /// Target width (`size.width`).
    pub width: usize,
    /// Multiply the uint8 values by `rescale_factor`.
    pub do_rescale: bool,
    /// Usually 1/255.
    pub rescale_factor: f64,
    /// Subtract `image_mean` and divide by `image_std`, per channel.
    pub do_normalize: bool,
    /// Per-channel mean, R G B.
    pub image_mean: [f64; 3],
    /// Per-channel standard deviation, R G B.
    pub image_std: [f64; 3],
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig {
            do_resize: true,
            height: 768,
            width: 768,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: IMAGENET_MEAN,
            image_std: IMAGENET_STD,
        }
    }
}

impl PreprocessConfig {
    /// `dir/preprocessor_config.json` when the folder has one, else the defaults.
    pub fn from_dir_or_default(dir: &Path) -> Result<PreprocessConfig> {
        let path = dir.join("preprocessor_config.json");
        if path.is_file() {
            PreprocessConfig::from_file(path)
        } else {
            Ok(PreprocessConfig::default())
        }
    }

    /// Reads and parses `preprocessor_config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<PreprocessConfig> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(&shown, e))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| Error::file(&shown, format!("invalid JSON: {e}")))?;
        PreprocessConfig::from_json(&json, &shown)
    }

    /// Parses an already loaded config; `path` only names the file in error messages.
    pub fn from_json(json: &Value, path: &str) -> Result<PreprocessConfig> {
        let err = |field: &str, msg: String| Error::file(path, format!("field `{field}`: {msg}"));
        let obj = json
            .as_object()
            .ok_or_else(|| Error::file(path, "expected a JSON object"))?;
        let get = |key: &str| obj.get(key).filter(|v| !v.is_null());
        let boolean = |key: &str, default: bool| match get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| err(key, format!("expected true or false, got {v}"))),
        };
        let number = |key: &str, default: f64| match get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| err(key, format!("expected a number, got {v}"))),
        };
        // HF accepts a scalar (same for all channels) or one value per channel.
        let triple = |key: &str, default: [f64; 3]| -> Result<[f64; 3]> {
            match get(key) {
                None => Ok(default),
                Some(v) => {
                    if let Some(x) = v.as_f64() {
                        return Ok([x; 3]);
                    }
                    let bad = || err(key, format!("expected a number or 3 numbers, got {v}"));
                    let list = v.as_array().filter(|a| a.len() == 3).ok_or_else(bad)?;
                    let mut out = [0.0; 3];
                    for (o, x) in out.iter_mut().zip(list) {
                        *o = x.as_f64().ok_or_else(bad)?;
                    }
                    Ok(out)
                }
            }
        };

        let d = PreprocessConfig::default();
        let (height, width) = match get("size") {
            None => (d.height, d.width),
            Some(size) => hw(size).ok_or_else(|| {
                err(
                    "size",
                    format!(
                        "expected {{\"height\": H, \"width\": W}} with positive integers, got \
                         {size} (aspect-preserving `shortest_edge` resizing is not supported)"
                    ),
                )
            })?,
        };
        if height.max(width) > MAX_RESIZE_SIDE {
            return Err(err(
                "size",
                format!(
                    "{height}×{width} is above the {MAX_RESIZE_SIDE}-pixel side this engine \
                     resizes to (Florence-2 uses 768)"
                ),
            ));
        }
        if let Some(v) = get("resample") {
            if v.as_u64() != Some(PIL_BICUBIC) {
                return Err(err(
                    "resample",
                    format!("{v} is not supported; only 3 (PIL bicubic) is"),
                ));
            }
        }
        // A centre crop to the resize target is a no-op; any other crop is not implemented.
        if boolean("do_center_crop", false)? {
            let crop = get("crop_size").and_then(hw);
            if crop != Some((height, width)) {
                return Err(err(
                    "do_center_crop",
                    "a centre crop different from `size` is not supported".into(),
                ));
            }
        }
        boolean("do_convert_rgb", true)?;
        let cfg = PreprocessConfig {
            do_resize: boolean("do_resize", d.do_resize)?,
            height,
            width,
            do_rescale: boolean("do_rescale", d.do_rescale)?,
            rescale_factor: number("rescale_factor", d.rescale_factor)?,
            do_normalize: boolean("do_normalize", d.do_normalize)?,
            image_mean: triple("image_mean", d.image_mean)?,
            image_std: triple("image_std", d.image_std)?,
        };
        if !cfg.rescale_factor.is_finite() || cfg.image_mean.iter().any(|m| !m.is_finite()) {
            return Err(err(
                "rescale_factor",
                "rescale_factor and image_mean must be finite".into(),
            ));
        }
        if cfg.image_std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
            return Err(err(
                "image_std",
                "values must be finite and non-zero".into(),
            ));
        }
        Ok(cfg)
    }

    /// Florence-VL's padding colour: `int(m · 255)` per channel of `image_mean`
    /// ((123, 116, 103) for ImageNet).
    pub fn pad_fill(&self) -> [u8; 3] {
        // `as u8` truncates like Python's int() (and saturates outside 0..255).
        self.image_mean.map(|m| (m * 255.0) as u8)
    }
}

/// `{"height": H, "width": W}` with positive integers.
fn hw(v: &Value) -> Option<(usize, usize)> {
    let dim = |k: &str| {
        v.get(k)?
            .as_u64()
            .filter(|&n| n > 0)
            .and_then(|n| usize::try_from(n).ok())
    };
    Some((dim("height")?, dim("width")?))
}

/// The file formats [`encode_image`] writes, chosen by a file name's extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveFormat {
    /// PNG (lossless).
    Png,
    /// JPEG, quality 95, no chroma subsampling (thin coloured lines stay sharp).
    Jpeg,
    /// Lossless WebP.
    WebP,
    /// Uncompressed BMP.
    Bmp,
}

impl SaveFormat {
    /// The format `path`'s extension names: `png`, `jpg`/`jpeg`, `webp` or `bmp` (any case).
    pub fn from_path(path: &Path) -> Result<SaveFormat> {
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("png") => Ok(SaveFormat::Png),
            Some("jpg" | "jpeg") => Ok(SaveFormat::Jpeg),
            Some("webp") => Ok(SaveFormat::WebP),
            Some("bmp") => Ok(SaveFormat::Bmp),
            _ => Err(Error::file(
                path,
                "names no image format that can be written; end it in .png, .jpg, .jpeg, .webp or .bmp",
            )),
        }
    }
}

/// Encodes `img` as a `format` file.
pub fn encode_image(img: &RgbImage, format: SaveFormat) -> Result<Vec<u8>> {
    let fail = |e: String| Error::input(format!("{format:?} encoding failed: {e}"));
    let as_image_crate = match format {
        SaveFormat::Jpeg => return jpeg::encode(img).map_err(fail),
        SaveFormat::Png => ImageFormat::Png,
        SaveFormat::WebP => ImageFormat::WebP,
        SaveFormat::Bmp => ImageFormat::Bmp,
    };
    let buf = ::image::RgbImage::from_raw(img.width as u32, img.height as u32, img.data.clone())
        .ok_or_else(|| fail(format!("{} bytes for {}×{} RGB", img.data.len(), img.width, img.height)))?;
    let mut out = Cursor::new(Vec::new());
    buf.write_to(&mut out, as_image_crate).map_err(|e| fail(e.to_string()))?;
    Ok(out.into_inner())
}

/// Decodes an image file to 8-bit RGB; see [`decode_image`] (this reads the file and names it
/// in errors).
pub fn load_image(path: impl AsRef<Path>) -> Result<RgbImage> {
    let path = path.as_ref();
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| Error::file(&shown, format!("cannot read: {e}")))?;
    decode_image(&bytes, &shown)
}

/// Decodes an encoded image held in memory (the bytes of a PNG, JPEG, WebP or BMP file) to
/// 8-bit RGB; `name` labels errors (a file name, a URL, "upload").
///
/// The format comes from the content, not a name. JPEGs decode with libjpeg-turbo under PIL's
/// settings, to PIL's bytes (see the `jpeg` module); the other formats with the `image` crate.
/// EXIF orientation is applied (as HF's `load_image` does with `exif_transpose`; a bare PIL
/// `Image.open` does not). Colour conversion follows PIL's `.convert("RGB")` on what PIL opens:
/// alpha is dropped (not composited), grey is replicated to the three channels, palettes are
/// expanded, CMYK uses PIL's formula, and 16-bit samples keep their high byte (PIL's
/// `RGB;16B`-style unpacking).
/// Deviation: PIL opens 16-bit greyscale as mode `I` and clips it to 0..255 on conversion
/// (a near-white image); here it keeps the high byte like every other 16-bit type.
///
/// Errors name `name` and the problem: unrecognised or unsupported format, corrupt or
/// truncated data, a zero width or height, or dimensions above [`MAX_IMAGE_SIDE`] /
/// [`MAX_IMAGE_PIXELS`] (refused from the header, before the pixels are allocated).
pub fn decode_image(bytes: &[u8], name: &str) -> Result<RgbImage> {
    let err = |msg: String| Error::file(name, msg);
    if bytes.starts_with(&jpeg::MAGIC) {
        let (img, orientation) = jpeg::decode(bytes).map_err(err)?;
        return Ok(oriented(img, orientation));
    }
    let head = &bytes[..bytes.len().min(HEADER_BYTES)];
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| err(format!("cannot read: {e}")))?;
    let format = match reader.format() {
        Some(f @ (ImageFormat::Png | ImageFormat::WebP | ImageFormat::Bmp)) => f,
        Some(other) => {
            return Err(err(format!(
                "unsupported image format {other:?} (supported: PNG, JPEG, WebP, BMP)"
            )))
        }
        None => {
            return Err(err(
                "not an image: unrecognised content (supported: PNG, JPEG, WebP, BMP)".into(),
            ))
        }
    };

    // No dimension limits yet, so a too-large header reaches our own check (with a message
    // that gives the size); the allocation cap protects the header parse itself.
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODER_ALLOC);
    reader.limits(limits.clone());
    let mut decoder = reader.into_decoder().map_err(|e| {
        // The PNG and BMP decoders refuse a zero size in the header with unrelated wording
        // ("too large"); say what is wrong when the header shows it.
        match header_dimensions(head, format).map(|(w, h)| check_dimensions(w, h)) {
            Some(Err(msg)) => err(msg),
            _ => decode_err(name, e),
        }
    })?;
    let (w, h) = decoder.dimensions();
    check_dimensions(w, h).map_err(err)?;
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    decoder
        .set_limits(limits)
        .map_err(|e| decode_err(name, e))?;

    let orientation = decoder.orientation().map_err(|e| decode_err(name, e))?;
    let img = DynamicImage::from_decoder(decoder).map_err(|e| decode_err(name, e))?;
    Ok(oriented(to_rgb(img), orientation))
}

/// `img` turned as its EXIF orientation says.
fn oriented(img: RgbImage, orientation: Orientation) -> RgbImage {
    if orientation == Orientation::NoTransforms {
        return img;
    }
    let (w, h) = (img.width as u32, img.height as u32);
    let buf = ::image::RgbImage::from_raw(w, h, img.data).expect("RGB buffer of its own size");
    let mut dynamic = DynamicImage::ImageRgb8(buf);
    dynamic.apply_orientation(orientation);
    to_rgb(dynamic)
}

/// Bytes read up front for [`header_dimensions`].
const HEADER_BYTES: usize = 26;

/// Width and height as a PNG (IHDR) or BMP (BITMAPINFOHEADER or later) header states them.
fn header_dimensions(head: &[u8], format: ImageFormat) -> Option<(u32, u32)> {
    let field = |i: usize| -> Option<[u8; 4]> { head.get(i..i + 4)?.try_into().ok() };
    match format {
        ImageFormat::Png => Some((
            u32::from_be_bytes(field(16)?),
            u32::from_be_bytes(field(20)?),
        )),
        // Negative BMP heights mean top-down rows; the 12-byte OS/2 header has no i32 fields.
        ImageFormat::Bmp if u32::from_le_bytes(field(14)?) >= 40 => Some((
            i32::from_le_bytes(field(18)?).unsigned_abs(),
            i32::from_le_bytes(field(22)?).unsigned_abs(),
        )),
        _ => None,
    }
}

fn check_dimensions(w: u32, h: u32) -> std::result::Result<(), String> {
    if w == 0 || h == 0 {
        return Err(format!("image has zero width or height ({w}×{h})"));
    }
    let pixels = w as u64 * h as u64;
    if w > MAX_IMAGE_SIDE || h > MAX_IMAGE_SIDE || pixels > MAX_IMAGE_PIXELS {
        return Err(format!(
            "image too large: {w}×{h} (limits: {MAX_IMAGE_SIDE} pixels per side, {} Mpixel)",
            MAX_IMAGE_PIXELS / 1_000_000
        ));
    }
    Ok(())
}

/// One line per decoder failure class; the decoder's own text says where it went wrong.
fn decode_err(path: &str, e: ImageError) -> Error {
    let msg = match &e {
        ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            format!("truncated image data ({e})")
        }
        ImageError::IoError(_) => format!("cannot read: {e}"),
        ImageError::Decoding(_) => format!("corrupt or truncated image data ({e})"),
        ImageError::Unsupported(_) => format!("unsupported image: {e}"),
        ImageError::Limits(_) => format!("image exceeds the decoder's limits ({e})"),
        _ => e.to_string(),
    };
    Error::file(path, msg)
}

/// PIL `.convert("RGB")` semantics; see [`load_image`].
fn to_rgb(img: DynamicImage) -> RgbImage {
    let (width, height) = (img.width() as usize, img.height() as usize);
    let data = match img {
        DynamicImage::ImageRgb8(b) => b.into_raw(),
        DynamicImage::ImageRgba8(b) => gather(b.as_raw(), 4, |v| v),
        DynamicImage::ImageLuma8(b) => gather(b.as_raw(), 1, |v| v),
        DynamicImage::ImageLumaA8(b) => gather(b.as_raw(), 2, |v| v),
        DynamicImage::ImageRgb16(b) => gather(b.as_raw(), 3, high_byte),
        DynamicImage::ImageRgba16(b) => gather(b.as_raw(), 4, high_byte),
        DynamicImage::ImageLuma16(b) => gather(b.as_raw(), 1, high_byte),
        DynamicImage::ImageLumaA16(b) => gather(b.as_raw(), 2, high_byte),
        // Float images come from none of the enabled decoders; the crate's conversion will do.
        other => other.into_rgb8().into_raw(),
    };
    RgbImage {
        width,
        height,
        data,
    }
}

fn high_byte(v: u16) -> u8 {
    (v >> 8) as u8
}

/// RGB bytes from `channels`-sample pixels: grey (1–2 channels) is replicated, alpha dropped.
fn gather<T: Copy>(src: &[T], channels: usize, to_u8: impl Fn(T) -> u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len() / channels * 3);
    for px in src.chunks_exact(channels) {
        if channels < 3 {
            out.extend([to_u8(px[0]); 3]);
        } else {
            out.extend(px[..3].iter().map(|&v| to_u8(v)));
        }
    }
    out
}

/// Florence-VL's `expand2square`: a square canvas of side max(W, H) filled with `fill`, the
/// image pasted at ((S − W) / 2, (S − H) / 2) rounded down. Square images are returned as is.
pub fn pad_to_square(img: &RgbImage, fill: [u8; 3]) -> RgbImage {
    let side = img.width.max(img.height);
    let mut out = RgbImage::filled(side, side, fill);
    let (x0, y0) = ((side - img.width) / 2, (side - img.height) / 2);
    let row = img.width * 3;
    for y in 0..img.height {
        let dst = ((y0 + y) * side + x0) * 3;
        out.data[dst..dst + row].copy_from_slice(&img.data[y * row..(y + 1) * row]);
    }
    out
}

/// Fixed-point bits of PIL's 8-bit resampler: 32 bits minus 8 for the sample, minus 2 of
/// headroom because bicubic weights go negative and partial sums can exceed 1.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's bicubic kernel (a = −0.5), with its exact operation order.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per-output-sample source window and fixed-point weights for one axis (PIL's
/// `precompute_coeffs` + `normalize_coeffs_8bpc`).
struct Taps {
    /// First source index of each output sample.
    start: Vec<usize>,
    /// Weights of each output sample, `len` of them from `start`.
    weights: Vec<Vec<i32>>,
}

fn taps(in_size: usize, out_size: usize) -> Taps {
    // PIL passes the box edges as C floats; for whole-image resizes they are exact integers.
    let scale = (in_size as f32) as f64 / out_size as f64;
    // Downscaling widens the kernel by the scale factor (antialiasing); upscaling does not.
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ss = 1.0 / filterscale;
    let mut start = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // `as i64` truncates towards zero like C's `(int)`, which PIL relies on here.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
        let w: Vec<f64> = (xmin..xmax)
            .map(|x| bicubic((x as f64 - center + 0.5) * ss))
            .collect();
        let sum: f64 = w.iter().sum();
        let one = (1u32 << PRECISION_BITS) as f64;
        let fixed = w
            .iter()
            .map(|&k| {
                let k = if sum != 0.0 { k / sum } else { k };
                // Round half away from zero, then truncate, as PIL does.
                if k < 0.0 {
                    (-0.5 + k * one) as i32
                } else {
                    (0.5 + k * one) as i32
                }
            })
            .collect();
        start.push(xmin as usize);
        weights.push(fixed);
    }
    Taps { start, weights }
}

/// Rounds a fixed-point accumulator (which started at one half) to a clipped byte.
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One separable pass over `lines` independent lines (rows or columns). `stride` is the
/// step between neighbouring samples of a line, in `src` and `dst` alike (3 along a row,
/// one row along a column); `src_line` / `dst_line` step from one line to the next.
fn resample_pass(
    src: &[u8],
    dst: &mut [u8],
    taps: &Taps,
    lines: usize,
    src_line: usize,
    dst_line: usize,
    stride: usize,
) {
    for line in 0..lines {
        for (o, (&s0, w)) in taps.start.iter().zip(&taps.weights).enumerate() {
            let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
            for (t, &k) in w.iter().enumerate() {
                let p = line * src_line + (s0 + t) * stride;
                for c in 0..3 {
                    acc[c] += src[p + c] as i32 * k;
                }
            }
            let q = line * dst_line + o * stride;
            for c in 0..3 {
                dst[q + c] = clip8(acc[c]);
            }
        }
    }
}

/// Width pass: every row resampled to `new_w`.
fn resize_width(img: &RgbImage, new_w: usize) -> RgbImage {
    let t = taps(img.width, new_w);
    let mut data = vec![0u8; new_w * img.height * 3];
    resample_pass(
        &img.data,
        &mut data,
        &t,
        img.height,
        img.width * 3,
        new_w * 3,
        3,
    );
    RgbImage {
        width: new_w,
        height: img.height,
        data,
    }
}

/// Height pass: every column resampled to `new_h`.
fn resize_height(img: &RgbImage, new_h: usize) -> RgbImage {
    let t = taps(img.height, new_h);
    let mut data = vec![0u8; img.width * new_h * 3];
    // Columns are the lines here: taps step by a row, outputs by a row.
    let row = img.width * 3;
    resample_pass(&img.data, &mut data, &t, img.width, 3, 3, row);
    RgbImage {
        width: img.width,
        height: new_h,
        data,
    }
}

/// Resizes like PIL's `Image.resize((new_w, new_h), Image.BICUBIC)` on a uint8 RGB image,
/// bit for bit: two separable passes through a clipped uint8 intermediate, each skipped when
/// its dimension is unchanged. Panics if a size is zero.
///
/// The pass order matters for the result. Pillow's older `Resample.c` always resizes the
/// width first; Pillow 13 (the fixtures' version) resizes the height first when the height
/// shrinks and `2·new_w + h > 2·w + new_h`. That rule was measured, not read from source:
/// it reproduces Pillow 13.0.0 exactly on ~1700 random size pairs (2..3000 px, 768² targets).
pub fn resize_bicubic(img: &RgbImage, new_w: usize, new_h: usize) -> RgbImage {
    assert!(
        img.width > 0 && img.height > 0 && new_w > 0 && new_h > 0,
        "resize_bicubic: zero-sized image or target"
    );
    let (w, h) = (img.width, img.height);
    let height_first = new_h < h && 2 * new_w + h > 2 * w + new_h;
    match (new_w != w, new_h != h) {
        (false, false) => img.clone(),
        (true, false) => resize_width(img, new_w),
        (false, true) => resize_height(img, new_h),
        (true, true) if height_first => resize_width(&resize_height(img, new_h), new_w),
        (true, true) => resize_height(&resize_width(img, new_w), new_h),
    }
}

/// Normalised CHW float values: `(v · rescale − mean_c) / std_c` per channel, with the
/// rescale and normalisation each skipped when the config turns it off. Computed in f64
/// and rounded once, so it is at least as close to HF's float32 numpy result as it can be.
pub fn pixel_values(img: &RgbImage, cfg: &PreprocessConfig) -> Vec<f32> {
    let plane = img.width * img.height;
    let scale = if cfg.do_rescale {
        cfg.rescale_factor
    } else {
        1.0
    };
    let (mean, std) = if cfg.do_normalize {
        (cfg.image_mean, cfg.image_std)
    } else {
        ([0.0; 3], [1.0; 3])
    };
    let mut out = vec![0f32; 3 * plane];
    for c in 0..3 {
        let lut: Vec<f32> = (0..256)
            .map(|v| ((v as f64 * scale - mean[c]) / std[c]) as f32)
            .collect();
        for (o, px) in out[c * plane..(c + 1) * plane]
            .iter_mut()
            .zip(img.data.chunks_exact(3))
        {
            *o = lut[px[c] as usize];
        }
    }
    out
}

/// The vision tower's input for one image.
#[derive(Clone, Debug)]
pub struct Preprocessed {
    /// `[3, height, width]` floats, channel-major (the batch dimension of 1 is implied).
    pub pixel_values: Vec<f32>,
    /// Height of `pixel_values`.
    pub height: usize,
    /// Width of `pixel_values`.
    pub width: usize,
    /// The decoded image's (width, height) before padding and resizing, for mapping
    /// predicted boxes back (Florence-2's post-processing takes it as `image_size`).
    pub original_size: (usize, usize),
}

/// Loads `path` and prepares it for the vision tower: [`preprocess_image`] on
/// [`load_image`].
pub fn preprocess(
    path: impl AsRef<Path>,
    cfg: &PreprocessConfig,
    pad: bool,
) -> Result<Preprocessed> {
    Ok(preprocess_image(&load_image(path)?, cfg, pad))
}

/// Prepares a decoded image for the vision tower: optional Florence-VL pad-to-square (with
/// [`PreprocessConfig::pad_fill`]), PIL-exact bicubic resize if `do_resize`, then
/// [`pixel_values`].
pub fn preprocess_image(img: &RgbImage, cfg: &PreprocessConfig, pad: bool) -> Preprocessed {
    let original_size = (img.width, img.height);
    let padded;
    let img = if pad {
        padded = pad_to_square(img, cfg.pad_fill());
        &padded
    } else {
        img
    };
    let resized;
    let img = if cfg.do_resize {
        resized = resize_bicubic(img, cfg.width, cfg.height);
        &resized
    } else {
        img
    };
    Preprocessed {
        pixel_values: pixel_values(img, cfg),
        height: img.height,
        width: img.width,
        original_size,
    }
}
