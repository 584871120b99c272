//! `bench batch`: `<CAPTION>` on N images through one loaded Florence-2 model, one at a time
//! (decode, preprocess, GPU, in turn) against the batch path (image k+1 decoded and
//! preprocessed while the GPU works on image k), plus what separate processes would cost
//! (a model load per image).

use std::path::{Path, PathBuf};
use std::time::Instant;

use fvl_wgpu::image::{load_image, preprocess_image};
use fvl_wgpu::pipeline::batch::{expand_inputs, overlapped};
use fvl_wgpu::pipeline::florence2::Florence2Folder;
use fvl_wgpu::pipeline::{ImageInput, Task, TaskOptions};
use fvl_wgpu::Result;

use super::Sizes;
use crate::cli::{phase, storage_dtype, DeviceArgs, Precision};

/// Times `<CAPTION>` on `count` images cycled from `images`.
pub fn batch(
    args: &DeviceArgs,
    model: &Path,
    images: &[PathBuf],
    count: Option<usize>,
    precision: Option<Precision>,
) -> Result<()> {
    let listed = expand_inputs(images)?;
    let folder = Florence2Folder::open(model)?;
    let plan = folder.plan(&Task::new("<CAPTION>", None)?, &TaskOptions::default())?;
    let gpu = args.open()?;
    let mut sizes = Sizes::new(&gpu);
    let count = sizes.pick("--count", count, 8, 3);
    sizes.announce();
    let paths: Vec<PathBuf> = listed.into_iter().cycle().take(count.max(1)).collect();
    let dtype = storage_dtype(precision, None, &gpu);
    let loading = phase("loading the model");
    let t = Instant::now();
    let m = folder.load(gpu, dtype, &|| {})?;
    let load_s = t.elapsed().as_secs_f64();
    drop(loading);
    // Warm-up: pipelines compiled, buffers allocated.
    let warming = phase("warm-up run");
    let first = m.preprocess(ImageInput::Path(&paths[0]))?;
    m.run_plan(&first, &plan, &mut |_| true)?;
    drop(warming);

    let serial = phase(format!("{} images one at a time", paths.len()));
    let t = Instant::now();
    for p in &paths {
        let image = m.preprocess(ImageInput::Path(p))?;
        m.run_plan(&image, &plan, &mut |_| true)?;
    }
    let serial_s = t.elapsed().as_secs_f64();
    drop(serial);
    let batched = phase(format!("{} images through the batch path", paths.len()));

    let cfg = m.preprocess_config().clone();
    let t = Instant::now();
    overlapped(
        &paths,
        |p| load_image(p).map(|i| preprocess_image(&i, &cfg, false)),
        |_, _, image| m.run_plan(&image?, &plan, &mut |_| true).map(|_| ()),
    )?;
    let batch_s = t.elapsed().as_secs_f64();
    drop(batched);

    let n = paths.len() as f64;
    let per_process_s = serial_s + n * load_s;
    let summary = serde_json::json!({
        "task": "<CAPTION>",
        "images": paths.len(), "light_defaults": sizes.light(),
        "precision": dtype.name(),
        "load_s": load_s,
        "one_at_a_time_images_per_s": n / serial_s,
        "batch_images_per_s": n / batch_s,
        "process_per_image_images_per_s": n / per_process_s,
        "speedup": serial_s / batch_s,
    });
    if args.json {
        println!("{summary}");
    } else {
        eprintln!(
            "<CAPTION> on {} images ({}): one at a time {:.2} images/s, batch {:.2} images/s ({:.2}×); a process per image (load {:.2} s each) {:.2} images/s",
            paths.len(),
            dtype.name(),
            n / serial_s,
            n / batch_s,
            serial_s / batch_s,
            load_s,
            n / per_process_s
        );
    }
    Ok(())
}
