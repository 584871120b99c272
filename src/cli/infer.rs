//! `fvl-wgpu infer`: one image and a question through Florence-VL — features, the llama3
//! prompt with the image rows spliced in, prefill from embeddings and a decode streamed to
//! stdout until `<|eot_id|>` (or one JSON object with `--json`).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use fvl_wgpu::gpu::{DType, Graph, Tensor};
use fvl_wgpu::image::preprocess;
use fvl_wgpu::model::florence_vl::FlorenceVl;
use fvl_wgpu::model::llama::{Pick, Prompt, Session};
use fvl_wgpu::text::llama::TextStream;
use fvl_wgpu::Result;

use super::DeviceArgs;
use super::{default_dtype, Quant};

/// Arguments of `infer`.
#[derive(clap::Args)]
pub struct InferArgs {
    /// Florence-VL folder (LLaVA layout: Llama, projector and Florence-2 tower in its shards).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Image file (PNG, JPEG, WebP or BMP).
    #[arg(long, value_name = "FILE")]
    pub image: PathBuf,
    /// The question about the image.
    #[arg(long, value_name = "TEXT")]
    pub prompt: String,
    /// Most tokens to generate (stops earlier at <|eot_id|> or another end id).
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 (the default) is greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample from the smallest set of tokens holding this much probability.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Sampling seed: the same seed and settings give the same tokens.
    #[arg(long, default_value_t = 0)]
    pub seed: u32,
    /// Llama weight storage (default: f16 where the adapter has SHADER_F16, else f32); the
    /// vision path is f32 with f32, else f16 where available.
    #[arg(long, value_enum)]
    pub quant: Option<Quant>,
    /// Folder with the Florence-2 (BART) tokenizer.json for the three encoder prompts
    /// (default: the tower's folder, else Florence-VL's hard-coded ids).
    #[arg(long, value_name = "DIR")]
    pub florence_tokenizer: Option<PathBuf>,
    /// Drop the mean token: 576 image rows instead of 577.
    #[arg(long)]
    pub drop_mean_token: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(args: &InferArgs) -> Result<()> {
    let gpu = args.device.open()?;
    let quant = args.quant.map_or_else(|| default_dtype(&gpu), Quant::dtype);
    let t0 = Instant::now();
    let mut m = FlorenceVl::load(&gpu, &args.model, quant, args.florence_tokenizer.as_deref())?;
    m.keep_mean_token = !args.drop_mean_token;
    let load_s = t0.elapsed().as_secs_f64();
    let ids = m.prompt_ids(&args.prompt)?;
    let image = preprocess(&args.image, &m.preprocess, m.config.pad_to_square)?;
    let shape = [3, image.height, image.width];
    let pixels = Tensor::from_f32(&gpu, &shape, DType::F32, &image.pixel_values, "pixels")?;

    let mut g = Graph::new(&gpu);
    let p = g.external(&pixels);
    let features = m.features(&mut g, p)?;
    let embeds = m.embed_prompt(&mut g, &ids, features.projected)?;
    g.keep(embeds);
    let exe = g.build()?;
    let t1 = Instant::now();
    exe.run(&gpu, &[])?;
    let vision_s = t1.elapsed().as_secs_f64();
    let x = exe.tensor(embeds);
    let prompt_len = x.shape()[0];

    let pick = if args.temperature > 0.0 {
        Pick::Sample {
            temperature: args.temperature,
            top_k: 0,
            top_p: args.top_p,
        }
    } else {
        Pick::Greedy
    };
    // The merged prompt fits tokenizer_model_max_length (embed_prompt checks) and generation
    // runs up to that length, with room for at least one token.
    let context = m.config.max_length.max(prompt_len + 1);
    let cache_len = context.min(prompt_len + args.max_new_tokens);
    let mut session = Session::new(&gpu, &m.llama, cache_len, pick, args.seed)?;
    let t2 = Instant::now();
    let mut id = session.prefill(Prompt::Embeddings(x), false)?;
    let prefill_s = t2.elapsed().as_secs_f64();

    let mut ids_out = Vec::new();
    let mut stream = TextStream::default();
    let mut answer = String::new();
    let mut stdout = std::io::stdout();
    let t3 = Instant::now();
    let stopped = loop {
        if m.tokenizer.is_stop(id) {
            break "eos";
        }
        ids_out.push(id);
        if let Some(piece) = stream.push(&m.tokenizer, id)? {
            if !args.device.json {
                print!("{piece}");
                stdout.flush().ok();
            }
            answer += &piece;
        }
        if ids_out.len() == args.max_new_tokens {
            break "length";
        }
        if session.position() == cache_len {
            break "context";
        }
        id = session.decode(None)?;
    };
    let decode_s = t3.elapsed().as_secs_f64();
    let decode_steps = session.position() - prompt_len;
    let decode_tps = if decode_steps > 0 {
        decode_steps as f64 / decode_s
    } else {
        0.0
    };
    if args.device.json {
        let summary = serde_json::json!({
            "answer": answer,
            "token_ids": ids_out,
            "stopped": stopped,
            "prompt_positions": prompt_len,
            "quant": quant.name(),
            "timings": {
                "load_ms": load_s * 1e3,
                "vision_ms": vision_s * 1e3,
                "prefill_ms": prefill_s * 1e3,
                "decode_tokens_per_s": decode_tps,
            },
        });
        println!("{summary}");
    } else {
        println!();
        eprintln!(
            "{} tokens ({stopped}); vision {:.1} ms, prefill {prompt_len} positions in {:.1} ms, decode {decode_tps:.1} tokens/s ({})",
            ids_out.len(),
            vision_s * 1e3,
            prefill_s * 1e3,
            quant.name()
        );
    }
    Ok(())
}
