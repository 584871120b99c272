//! JPEG decoding with libjpeg-turbo, the library PIL decodes with, under PIL's settings, so the
//! bytes equal PIL's: TurboJPEG's defaults are PIL's (accurate integer "ISLOW" IDCT, fancy
//! (triangle-filter) chroma upsampling), CMYK files are read inverted as PIL reads them (Adobe
//! convention) and converted with PIL's `cmyk2rgb`. Libjpeg warnings that PIL ignores (corrupt
//! entropy data, a header with more rows than the scan, which leaves mid-grey blocks) are
//! ignored too; a file that ends before its EOI marker is refused, as PIL refuses it.

use ::image::metadata::Orientation;
use turbojpeg::{Colorspace, Decompressor, Image, PixelFormat};

use super::RgbImage;

/// The SOI marker and the first byte of the next marker: how a JPEG file starts.
pub(super) const MAGIC: [u8; 3] = [0xFF, 0xD8, 0xFF];

/// Decodes a JPEG to PIL's RGB bytes (before EXIF orientation) and returns the EXIF
/// orientation to apply. Errors are one phrase, without the file name.
pub(super) fn decode(data: &[u8]) -> Result<(RgbImage, Orientation), String> {
    let mut d = Decompressor::new().map_err(|e| format!("cannot start the JPEG decoder: {e}"))?;
    let header = d.read_header(data).map_err(|e| {
        if scan_start(data).is_none() {
            TRUNCATED.to_string()
        } else {
            format!("corrupt JPEG header ({})", libjpeg_message(&e))
        }
    })?;
    let (w, h) = (header.width, header.height);
    super::check_dimensions(
        u32::try_from(w).unwrap_or(u32::MAX),
        u32::try_from(h).unwrap_or(u32::MAX),
    )?;
    let (format, channels) = match header.colorspace {
        Colorspace::Gray => (PixelFormat::GRAY, 1),
        Colorspace::CMYK | Colorspace::YCCK => (PixelFormat::CMYK, 4),
        _ => (PixelFormat::RGB, 3),
    };
    let mut pixels = vec![0u8; w * h * channels];
    let out = Image {
        pixels: &mut pixels[..],
        width: w,
        pitch: w * channels,
        height: h,
        format,
    };
    if let Err(e) = d.decompress(data, out) {
        let msg = libjpeg_message(&e);
        if msg.starts_with("Premature end of JPEG file") {
            return Err(TRUNCATED.into());
        }
        if !is_ignored_warning(&msg) {
            return Err(format!("corrupt JPEG data ({msg})"));
        }
    }
    let data_rgb = match channels {
        1 => pixels.iter().flat_map(|&v| [v; 3]).collect(),
        4 => pixels.chunks_exact(4).flat_map(cmyk_to_rgb).collect(),
        _ => pixels,
    };
    let img = RgbImage {
        width: w,
        height: h,
        data: data_rgb,
    };
    let orientation = exif_payload(data)
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    Ok((img, orientation))
}

/// Encodes RGB bytes as a JPEG: quality 95, no chroma subsampling. Errors are one phrase.
pub(super) fn encode(img: &RgbImage) -> Result<Vec<u8>, String> {
    let image = Image {
        pixels: &img.data[..],
        width: img.width,
        pitch: img.width * 3,
        height: img.height,
        format: PixelFormat::RGB,
    };
    turbojpeg::compress(image, 95, turbojpeg::Subsamp::None)
        .map(|buf| buf.to_vec())
        .map_err(|e| libjpeg_message(&e))
}

/// What PIL calls "image file is truncated": the data ends before the decoder is done.
const TRUNCATED: &str = "truncated JPEG data (the file ends before the image does)";

/// Libjpeg's own message (the binding's other errors have no libjpeg text).
fn libjpeg_message(e: &turbojpeg::Error) -> String {
    match e {
        turbojpeg::Error::TurboJpegError(m) => m.clone(),
        other => other.to_string(),
    }
}

/// Libjpeg's warnings (its `JWRN_*` messages) other than the end of the file: the image is
/// complete, with damaged blocks decoded as libjpeg decodes them, and PIL returns it.
fn is_ignored_warning(msg: &str) -> bool {
    const WARNINGS: [&str; 6] = [
        "Corrupt JPEG data",
        "Warning:",
        "Inconsistent progression sequence",
        "Invalid SOS parameters for sequential JPEG",
        "Unknown Adobe color transform code",
        "Application transferred too many scanlines",
    ];
    WARNINGS.iter().any(|w| msg.starts_with(w))
}

/// PIL's `CMYK;I` unpacking (Adobe's inverted CMYK) followed by its `cmyk2rgb`:
/// `channel = clip(nk − nk·c/255)` with `nk = 255 − k` and PIL's rounded division by 255.
fn cmyk_to_rgb(px: &[u8]) -> [u8; 3] {
    let muldiv255 = |a: i32, b: i32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    let inv = |v: u8| 255 - v as i32;
    let nk = 255 - inv(px[3]);
    [0, 1, 2].map(|i| (nk - muldiv255(inv(px[i]), nk)).clamp(0, 255) as u8)
}

/// The marker segments before the first scan, as (marker, body); stops at a malformed or cut
/// segment list.
fn segments(data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut i = 2;
    std::iter::from_fn(move || {
        if data.get(i) != Some(&0xFF) {
            return None;
        }
        let marker = *data.get(i + 1)?;
        let len = u16::from_be_bytes([*data.get(i + 2)?, *data.get(i + 3)?]) as usize;
        let body = data.get(i + 4..(i + 2 + len).max(i + 4))?;
        i += 2 + len;
        Some((marker, body))
    })
}

/// The start-of-scan header, if the data gets that far.
fn scan_start(data: &[u8]) -> Option<&[u8]> {
    segments(data).find(|&(m, _)| m == 0xDA).map(|(_, b)| b)
}

/// The EXIF block of the first APP1 "Exif" segment before the scan (the TIFF header onwards).
fn exif_payload(data: &[u8]) -> Option<&[u8]> {
    segments(data)
        .take_while(|&(m, _)| m != 0xDA)
        .find_map(|(m, body)| body.strip_prefix(b"Exif\0\0").filter(|_| m == 0xE1))
}
