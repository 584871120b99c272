//! Embedding fvl-wgpu in an application: load a Florence-VL model once, hand it an image held
//! in memory (an upload, a camera frame), ask a question, then a follow-up in the same
//! conversation, streaming each answer as it decodes.
//!
//! ```sh
//! cargo run --release --example ask -- tests/fixtures/florence-vl-tiny tests/fixtures/images/photo.png tests/fixtures/florence2-a
//! ```
//! (model folder, image, and optionally the folder of the Florence-2 tokenizer).

use std::io::Write;
use std::path::{Path, PathBuf};

use fvl_wgpu::gpu::{Gpu, GpuOptions};
use fvl_wgpu::pipeline::{AskOptions, FlorenceVl, ImageInput, Reply};
use fvl_wgpu::Error;

/// The question, then a follow-up that relies on the first answer.
pub const QUESTIONS: [&str; 2] = ["What is in the picture?", "What colours does it have?"];

fn main() {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let (Some(model), Some(image)) = (args.first(), args.get(1)) else {
        eprintln!("usage: ask MODEL_DIR IMAGE [FLORENCE2_TOKENIZER_DIR]");
        std::process::exit(2);
    };
    let tokenizer = args.get(2).map(PathBuf::as_path);
    // The error's Display is one line meant for people (Debug, what `main` returning a
    // Result would print, is for programmers).
    if let Err(e) = run(model, image, tokenizer, &mut std::io::stdout()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Loads the model, then asks [`QUESTIONS`] about the image at `image` in one conversation,
/// writing each question and its streamed answer to `out`.
pub fn run(
    model: &Path,
    image: &Path,
    tokenizer: Option<&Path>,
    out: &mut dyn Write,
) -> fvl_wgpu::Result<()> {
    // An application usually has the image as bytes already; any encoded PNG, JPEG, WebP or
    // BMP works, as do decoded `image::RgbImage` pixels (ImageInput::Decoded).
    let bytes = std::fs::read(image).map_err(|e| Error::file(image, format!("cannot read: {e}")))?;
    let gpu = Gpu::new(&GpuOptions::default())?;
    let dtype = gpu.default_dtype();
    let vl = FlorenceVl::load(gpu, model, dtype, tokenizer)?;
    let opts = AskOptions {
        max_new_tokens: 32,
        ..Default::default()
    };
    let io = |e: std::io::Error| Error::input(format!("writing the answer: {e}"));

    // The first question runs the vision pass and keeps the image rows in the chat's cache.
    write!(out, "Q: {}\nA: ", QUESTIONS[0]).map_err(io)?;
    let image = ImageInput::Bytes(&bytes);
    let (mut chat, first) = vl.chat(image, QUESTIONS[0], &opts, &mut |p| stream(out, p))?;
    report(out, &first).map_err(io)?;

    // A follow-up prefills only its own tokens: the image and the first turn are cached.
    write!(out, "Q: {}\nA: ", QUESTIONS[1]).map_err(io)?;
    let second = chat.ask(QUESTIONS[1], &opts, &mut |p| stream(out, p))?;
    report(out, &second).map_err(io)
}

/// Writes a piece of an answer as it decodes; `false` (the reader went away) cancels, as a UI
/// would cancel on a click.
fn stream(out: &mut dyn Write, piece: &str) -> bool {
    write!(out, "{piece}").and_then(|_| out.flush()).is_ok()
}

/// One line on what an answer cost: a follow-up prefills far fewer positions than the first
/// question (its image rows and system message) and runs no vision pass.
fn report(out: &mut dyn Write, reply: &Reply) -> std::io::Result<()> {
    writeln!(
        out,
        "\n   ({} tokens, {}; prefilled {} positions in {:.0} ms, vision {:.0} ms; {:.1} tokens/s)",
        reply.token_ids.len(),
        reply.stopped.name(),
        reply.prompt_positions,
        reply.prefill_ms,
        reply.vision_ms,
        reply.decode_tokens_per_s
    )
}
