//! `fvl-wgpu features`: one image through the Florence-2 vision path and encoder, tensors
//! written to a safetensors file: `pixel_values`, `image_features` (V) and, where the folder
//! has a tokenizer, `encoder_caption`, `encoder_ocr`, `encoder_grounding` — the image-token
//! rows of the encoder output for Florence-VL's three prompts, run as one batch.

use std::path::PathBuf;
use std::time::Instant;

use fvl_wgpu::gpu::{Graph, Tensor};
use fvl_wgpu::image::{preprocess, PreprocessConfig};
use fvl_wgpu::model::bart::Bart;
use fvl_wgpu::model::florence2::VisionTower;
use fvl_wgpu::tasks::Tokenizer;
use fvl_wgpu::weights::florence2::Florence2Checkpoint;
use fvl_wgpu::weights::{save_safetensors, Dtype, TensorBytes};
use fvl_wgpu::Result;

use super::{load_tower, ModelArgs};

/// Arguments of `features`.
#[derive(clap::Args)]
pub struct FeaturesArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Image file (PNG, JPEG, WebP or BMP).
    #[arg(long, value_name = "FILE")]
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
    fvl_wgpu::output::check_target(&args.out, &[dir, &args.image])?;
    let ck = Florence2Checkpoint::open(dir)?;
    let pp = PreprocessConfig::from_dir_or_default(ck.config_dir())?;
    let t0 = Instant::now();
    let image = preprocess(&args.image, &pp, args.pad)?;
    let gpu = args.model.device.open()?;
    let dtype = args.model.dtype(&gpu);
    let tower = load_tower(&gpu, &ck, dtype)?;
    // The encoder outputs need the BART tokenizer; a folder without one gets V only.
    let encoder = if ck.has_tokenizer() {
        let (ids, len) = Tokenizer::open(ck.config_dir())?
            .check_vocab(ck.text().vocab_size)?
            .florence_vl_prompts(ck.text().pad_token_id)?;
        let ids = Tensor::from_u32(&gpu, &[3, len], &ids, "prompts")?;
        Some((Bart::from_checkpoint(&gpu, &ck, dtype)?, ids))
    } else {
        None
    };
    let t_load = t0.elapsed();

    let pixels = VisionTower::pixels(&gpu, &image)?;
    let mut g = Graph::new(&gpu);
    let p = g.external(&pixels);
    let out = tower.forward(&mut g, p)?;
    g.keep(out.features);
    let mut encoded = None;
    if let Some((bart, ids)) = &encoder {
        let ids = g.external(ids);
        let e = bart.encode(&mut g, out.features, ids)?;
        g.keep(e);
        encoded = Some(e);
    }
    let exe = g.build()?;
    let t1 = Instant::now();
    exe.run(&gpu, &[])?;
    let features = exe.tensor(out.features).read_f32(&gpu)?;
    let t_run = t1.elapsed();
    let shape = exe.tensor(out.features).shape().to_vec();
    let batched = [&[1][..], &shape].concat();

    let pixel_shape = vec![1, 3, image.height, image.width];
    let mut tensors = vec![
        ("pixel_values", pixel_shape, image.pixel_values.clone()),
        ("image_features", batched.clone(), features),
    ];
    if let Some(e) = encoded {
        // [3, N + L, D]: the first N (image-token) rows of each prompt's output.
        let all = exe.tensor(e).read_f32(&gpu)?;
        let (seq, d) = (exe.tensor(e).shape()[1], shape[1]);
        let names = ["encoder_caption", "encoder_ocr", "encoder_grounding"];
        for (p, name) in names.into_iter().enumerate() {
            let rows = all[p * seq * d..(p * seq + shape[0]) * d].to_vec();
            tensors.push((name, batched.clone(), rows));
        }
    }
    let views: Vec<TensorBytes> = tensors
        .iter()
        .map(|(n, s, d)| {
            let bytes: &[u8] = bytemuck::cast_slice(d);
            (n.to_string(), Dtype::F32, s.clone(), bytes.into())
        })
        .collect();
    save_safetensors(&args.out, &views, None, &[dir, &args.image])?;
    let summary = serde_json::json!({
        "model": dir.display().to_string(),
        "layout": format!("{:?}", ck.layout()),
        "precision": dtype.name(),
        "image": args.image.display().to_string(),
        "original_size": [image.original_size.0, image.original_size.1],
        "pixel_values": [1, 3, image.height, image.width],
        "image_features": batched,
        "tensors": tensors.iter().map(|t| t.0).collect::<Vec<_>>(),
        "grid": [out.grid.0, out.grid.1],
        "dispatches": exe.dispatches(),
        "load_ms": t_load.as_secs_f64() * 1e3,
        "vision_ms": t_run.as_secs_f64() * 1e3,
        "out": args.out.display().to_string(),
    });
    if args.model.device.json {
        println!("{summary}");
    } else {
        eprintln!(
            "image_features {:?} ({} precision) in {:.1} ms → {}",
            shape,
            dtype.name(),
            t_run.as_secs_f64() * 1e3,
            args.out.display()
        );
    }
    Ok(())
}
