//! Embedding fvl-wgpu in an application: load a Florence-2 model once, then run tasks on an
//! image held in memory — a caption, object detection and OCR with typed results.
//!
//! ```sh
//! cargo run --release --example florence2 -- tests/fixtures/florence2-a tests/fixtures/images/photo.png
//! ```
//! (model folder, image).

use std::path::PathBuf;

use fvl_wgpu::gpu::{Gpu, GpuOptions};
use fvl_wgpu::pipeline::{Answer, Florence2, ImageInput, Task, TaskOptions};

fn main() -> fvl_wgpu::Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let (Some(model), Some(image)) = (args.first(), args.get(1)) else {
        eprintln!("usage: florence2 MODEL_DIR IMAGE");
        std::process::exit(2);
    };
    let gpu = Gpu::new(&GpuOptions::default())?;
    let dtype = gpu.default_dtype();
    let m = Florence2::load(gpu, model, dtype)?;
    // Bytes as an upload or a camera would hand them over.
    let bytes = std::fs::read(image)
        .map_err(|e| fvl_wgpu::Error::input(format!("{}: {e}", image.display())))?;
    let opts = TaskOptions {
        max_new_tokens: Some(64),
        ..Default::default()
    };
    for token in ["<CAPTION>", "<OD>", "<OCR_WITH_REGION>"] {
        let task = Task::new(token, None)?;
        // The callback could update a UI, and return false to cancel.
        let out = m.run(ImageInput::Bytes(&bytes), &task, &opts, &mut |_| true)?;
        match out.answer {
            Answer::Text(text) => println!("{token}: {text}"),
            Answer::Boxes { bboxes, labels } => {
                println!("{token}: {} boxes", bboxes.len());
                for (label, b) in labels.iter().zip(&bboxes) {
                    println!("  {label:?} at {b:?}");
                }
            }
            Answer::Quads { quad_boxes, labels } => {
                println!("{token}: {} text regions", quad_boxes.len());
                for (label, q) in labels.iter().zip(&quad_boxes) {
                    println!("  {label:?} at {q:?}");
                }
            }
            other => println!("{token}: {}", other.to_json()),
        }
    }
    Ok(())
}
