//! Whole pipelines, the library layer the CLI, the examples and the server call: image in,
//! answer out. [`Florence2`] runs Florence-2 tasks (caption, detection, OCR, grounding, …)
//! with typed results; [`FlorenceVl`] answers questions about an image and keeps a
//! conversation going ([`Chat`]): both own their [`Gpu`](crate::gpu::Gpu), stream what they
//! generate through a callback and stop when it returns `false`. [`features::VisionFeatures`]
//! gives the vision path's tensors themselves (the `features` command).
//!
//! Owns: loading a model folder as a whole, preprocessing, decoding loops and
//! post-processing glue. Must not touch: the graphics API (only `gpu/` names it), argument
//! parsing or printing (the CLI's), kernels or forward passes (`ops/`, `model/`).

pub mod batch;
pub mod chat;
pub mod features;
pub mod florence2;
pub mod florence_vl;

use std::path::Path;

use crate::image::{decode_image, load_image, RgbImage};
use crate::{Error, Result};

pub use crate::postprocess::Answer;
pub use florence2::{Florence2, Task, TaskOptions, TaskOutput};
pub use chat::TextChat;
pub use florence_vl::{AskOptions, Chat, FlorenceVl, Reply, Seen};

/// An image as a caller has it: a file, encoded bytes (PNG, JPEG, WebP, BMP), or pixels
/// already decoded with the `image` crate.
#[derive(Clone, Copy, Debug)]
pub enum ImageInput<'a> {
    /// A file to decode.
    Path(&'a Path),
    /// Encoded bytes, e.g. an upload.
    Bytes(&'a [u8]),
    /// Decoded 8-bit RGB pixels.
    Decoded(&'a ::image::RgbImage),
}

impl ImageInput<'_> {
    /// The 8-bit RGB pixels (decoding files and bytes with [`load_image`]'s rules and limits).
    pub fn decode(&self) -> Result<RgbImage> {
        match *self {
            ImageInput::Path(p) => load_image(p),
            ImageInput::Bytes(b) => decode_image(b, "image bytes"),
            ImageInput::Decoded(img) if img.width() == 0 || img.height() == 0 => {
                Err(Error::input(format!(
                    "image has zero width or height ({}×{})",
                    img.width(),
                    img.height()
                )))
            }
            ImageInput::Decoded(img) => Ok(RgbImage {
                width: img.width() as usize,
                height: img.height() as usize,
                data: img.as_raw().clone(),
            }),
        }
    }
}

impl<'a> From<&'a Path> for ImageInput<'a> {
    fn from(p: &'a Path) -> Self {
        ImageInput::Path(p)
    }
}

impl<'a> From<&'a std::path::PathBuf> for ImageInput<'a> {
    fn from(p: &'a std::path::PathBuf) -> Self {
        ImageInput::Path(p)
    }
}

impl<'a> From<&'a [u8]> for ImageInput<'a> {
    fn from(b: &'a [u8]) -> Self {
        ImageInput::Bytes(b)
    }
}

impl<'a> From<&'a Vec<u8>> for ImageInput<'a> {
    fn from(b: &'a Vec<u8>) -> Self {
        ImageInput::Bytes(b)
    }
}

impl<'a> From<&'a ::image::RgbImage> for ImageInput<'a> {
    fn from(img: &'a ::image::RgbImage) -> Self {
        ImageInput::Decoded(img)
    }
}
