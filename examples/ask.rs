//! Embedding fvl-wgpu in an application: load a Florence-VL model once, then ask several
//! questions about an image, streaming each answer as it decodes.
//!
//! ```sh
//! cargo run --release --example ask -- tests/fixtures/florence-vl-tiny tests/fixtures/images/photo.png tests/fixtures/florence2-a
//! ```
//! (model folder, image, and optionally the folder of the Florence-2 tokenizer).

use std::io::Write;
use std::path::PathBuf;

use fvl_wgpu::gpu::{Gpu, GpuOptions};
use fvl_wgpu::pipeline::{AskOptions, FlorenceVl, ImageInput};

fn main() -> fvl_wgpu::Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let (Some(model), Some(image)) = (args.first(), args.get(1)) else {
        eprintln!("usage: ask MODEL_DIR IMAGE [FLORENCE2_TOKENIZER_DIR]");
        std::process::exit(2);
    };
    let gpu = Gpu::new(&GpuOptions::default())?;
    let dtype = gpu.default_dtype();
    let vl = FlorenceVl::load(gpu, model, dtype, args.get(2).map(PathBuf::as_path))?;
    let opts = AskOptions {
        max_new_tokens: 32,
        ..Default::default()
    };
    for question in ["What is in the picture?", "What colours do you see?"] {
        println!("Q: {question}");
        print!("A: ");
        let answer = vl.ask(ImageInput::Path(image), question, &opts, &mut |piece| {
            print!("{piece}");
            std::io::stdout().flush().is_ok() // a UI would return false to cancel
        })?;
        println!(
            "\n   ({} tokens, {}, {:.1} tokens/s)",
            answer.token_ids.len(),
            answer.stopped.name(),
            answer.decode_tokens_per_s
        );
    }
    Ok(())
}
