//! `fvl-wgpu features`: one image through the Florence-2 vision path and encoder, tensors
//! written to a safetensors file: `pixel_values`, `image_features` (V) and, where the folder
//! has a tokenizer, `encoder_caption`, `encoder_ocr`, `encoder_dense_region_caption` — the image-token
//! rows of the encoder output for Florence-VL's three prompts, run as one batch.

use std::path::PathBuf;

use fvl_wgpu::pipeline::features::FeaturesFolder;
use fvl_wgpu::weights::{save_safetensors, Dtype, TensorBytes};
use fvl_wgpu::Result;

use super::{phase, ModelArgs, Precision};

/// Arguments of `features`.
#[derive(clap::Args)]
pub struct FeaturesArgs {
    #[command(flatten)]
    pub model: ModelArgs<Precision>,
    /// Image file (PNG, JPEG, WebP or BMP).
    #[arg(short = 'i', long, value_name = "FILE")]
    pub image: PathBuf,
    /// Output safetensors file.
    #[arg(long, value_name = "FILE.safetensors")]
    pub out: PathBuf,
    /// Pad the image to a square with the mean colour first (Florence-VL's `pad`).
    #[arg(long)]
    pub pad: bool,
}

pub fn run(args: &FeaturesArgs) -> Result<()> {
    let dir = &args.model.resolve()?;
    // Checked before the work, so a bad --out fails in a moment, not after the model ran.
    fvl_wgpu::output::check_writable(&args.out, &[dir, &args.image])?;
    let folder = FeaturesFolder::open(dir)?;
    let layout = folder.layout();
    let image = folder.preprocess((&args.image).into(), args.pad)?;
    let count = folder.tower_tensor_count();
    let (model, dtype, t_load) = args
        .model
        .load_model(count, |gpu, dtype, tick| folder.load(gpu, dtype, tick))?;
    let out = {
        let _vision = phase("vision and encoder");
        model.run(&image)?
    };

    let (rows, d) = out.shape;
    let batched = vec![1, rows, d];
    let pixel_shape = vec![1, 3, image.height, image.width];
    let mut tensors = vec![
        ("pixel_values", pixel_shape, &image.pixel_values),
        ("image_features", batched.clone(), &out.image_features),
    ];
    for (name, values) in &out.encoder_views {
        tensors.push((*name, batched.clone(), values));
    }
    let views: Vec<TensorBytes> = tensors
        .iter()
        .map(|(n, s, d)| {
            let bytes: &[u8] = bytemuck::cast_slice(d.as_slice());
            (n.to_string(), Dtype::F32, s.clone(), bytes.into())
        })
        .collect();
    let writing = phase(format!("writing {}", args.out.display()));
    save_safetensors(&args.out, &views, None, &[dir, &args.image])?;
    drop(writing);
    let summary = serde_json::json!({
        "model": dir.display().to_string(),
        "layout": format!("{layout:?}"),
        "precision": dtype.name(),
        "image": args.image.display().to_string(),
        "original_size": [image.original_size.0, image.original_size.1],
        "pixel_values": [1, 3, image.height, image.width],
        "image_features": batched,
        "tensors": tensors.iter().map(|t| t.0).collect::<Vec<_>>(),
        "grid": [out.grid.0, out.grid.1],
        "dispatches": out.dispatches,
        "load_ms": t_load.as_secs_f64() * 1e3,
        "vision_ms": out.vision_ms,
        "out": args.out.display().to_string(),
    });
    if args.model.device.json {
        println!("{summary}");
    } else {
        eprintln!(
            "image_features {:?} ({} precision) in {:.1} ms → {}",
            [rows, d],
            dtype.name(),
            out.vision_ms,
            args.out.display()
        );
    }
    Ok(())
}
