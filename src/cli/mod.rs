//! Command-line parsing and dispatch. Every command that runs on a GPU takes `--device`;
//! `--json` prints one JSON object on stdout and sends tables and progress to stderr.
//!
//! Owns: arguments, progress bars, printing, and the benches. Must not touch: the graphics
//! API, or pipelines an application would need (those live in `fvl_wgpu::pipeline`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use fvl_wgpu::gpu::{DType, Gpu, GpuOptions};
use fvl_wgpu::Result;

mod annotate;
mod batch;
mod bench;
mod chat;
mod devices;
mod features;
mod florence2;
mod generate;
mod hub;
mod infer;
mod inspect;
mod quantize;
mod selfcheck;
mod serve;

/// Florence-VL and Florence-2 inference on any GPU (Vulkan, Metal, DX12) through wgpu.
#[derive(Parser)]
#[command(name = "fvl-wgpu", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List GPU adapters with backend, type, ML-relevant limits and features.
    Devices {
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Quick check that the kernels compute the right thing on this device: an MLP block
    /// (linear in every weight format, LayerNorm, SiLU) on small random inputs against a CPU
    /// reference (the full per-kernel table is the test suite's).
    Selfcheck(DeviceArgs),
    /// Show what a model folder holds: layout, tensor counts, dtypes, memory per weight format.
    Inspect(inspect::InspectArgs),
    /// Rewrite a Llama checkpoint with its matrices packed as q8/q4 (a later load copies them).
    Quantize(quantize::QuantizeArgs),
    /// Run the Florence-2 vision path on one image and write its tensors to safetensors.
    Features(features::FeaturesArgs),
    /// Generate text with a Llama-3 checkpoint, streamed to stdout.
    Generate(generate::GenerateArgs),
    /// Run one Florence-2 task (caption, detection, OCR, grounding, …) on one image.
    Florence2(florence2::Florence2Args),
    /// Answer a question about an image with a Florence-VL checkpoint, streamed to stdout.
    Infer(infer::InferArgs),
    /// Download a model from the Hugging Face hub into its cache ahead of time (a Florence-VL
    /// checkpoint's tower repo too).
    Pull(hub::PullArgs),
    /// List the models in the Hugging Face cache with their sizes and revisions.
    Models(hub::ModelsArgs),
    /// Serve the model over HTTP: OpenAI chat completions (streaming), /v1/florence2,
    /// /v1/models, /health.
    Serve(serve::ServeArgs),
    /// Serve the model to agents and editors over MCP (stdio): Florence-2 tools caption,
    /// detailed_caption, ocr, detect, ground; Florence-VL tool ask.
    Mcp(serve::McpArgs),
    /// Measure kernels or whole models (random weights, real sizes) against the device's own
    /// ceilings.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Time each kernel family and compare with measured copy bandwidth and best matmul.
    Kernels {
        #[command(flatten)]
        device: DeviceArgs,
        /// Smaller sizes, for a quick look on slow (software) devices.
        #[arg(long)]
        quick: bool,
        /// Only kernels whose name contains this text (e.g. `matvec`).
        #[arg(long, value_name = "TEXT")]
        only: Option<String>,
    },
    /// Florence-2 language model at the real sizes, random weights: the encoder on the three
    /// Florence-VL prompts as one batch, and greedy decoder tokens/s.
    Florence2 {
        #[command(flatten)]
        device: DeviceArgs,
        /// Model size: base or large.
        #[arg(long, default_value = "large")]
        config: String,
        /// Weight precision (default: f16 where the adapter has SHADER_F16, else f32).
        #[arg(long, value_enum)]
        precision: Option<Precision>,
    },
    /// Llama prefill and decode at the real sizes, random weights: tokens/s and GB/s against
    /// the copy bandwidth.
    Decode {
        #[command(flatten)]
        device: DeviceArgs,
        /// Model: llama-1b, llama-8b or phi3.5-mini (Florence-VL 3B's LLM).
        #[arg(long, default_value = "llama-1b")]
        config: String,
        /// Linear weight format.
        #[arg(long, value_enum, default_value = "q4")]
        quant: Quant,
        /// Prompt tokens for the prefill.
        #[arg(long, default_value_t = 64)]
        prompt: usize,
        /// Decode steps to time.
        #[arg(long, default_value_t = 16)]
        tokens: usize,
    },
    /// Florence-VL end to end at the real sizes, random weights: time to first token split
    /// into vision + fusion and prefill, decode tokens/s, memory.
    E2e {
        #[command(flatten)]
        device: DeviceArgs,
        /// Florence-2 tower and encoder size: base or large (Florence-VL uses large).
        #[arg(long, default_value = "large")]
        vision: String,
        /// Language model: llama-8b (Florence-VL 8B), phi3.5-mini (Florence-VL 3B) or llama-1b
        /// (fits small machines).
        #[arg(long, default_value = "llama-8b")]
        llm: String,
        /// Llama weight format.
        #[arg(long, value_enum, default_value = "q4")]
        quant: Quant,
        /// Square input image side in pixels.
        #[arg(long, default_value_t = 768)]
        size: usize,
        /// Decode steps to time.
        #[arg(long, default_value_t = 8)]
        tokens: usize,
    },
    /// Checkpoint load speed: `Checkpoint::open` plus reading every tensor, for a
    /// safetensors and a PyTorch `.bin` file of random tensors (or a given model folder),
    /// in bytes per second next to a plain sequential read of the same files.
    Load {
        #[command(flatten)]
        device: DeviceArgs,
        /// Size of each generated file in MiB (default: 1024, or 64 on a CPU adapter).
        #[arg(long, value_name = "MIB", conflicts_with = "dir")]
        size_mb: Option<usize>,
        /// Time this model folder (config.json and its weights) instead of generated files.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Many images through one Florence-2 model: `<CAPTION>` images/s one at a time against
    /// the batch path (decoding overlapping the GPU), and against a process per image.
    Batch {
        #[command(flatten)]
        device: DeviceArgs,
        /// Florence-2 model folder.
        #[arg(long, value_name = "DIR")]
        model: PathBuf,
        /// Images: folders, globs or files (cycled to --count).
        #[arg(long, value_name = "DIR|GLOB|FILE", num_args = 1.., required = true)]
        images: Vec<PathBuf>,
        /// Images to run.
        #[arg(long, default_value_t = 8)]
        count: usize,
        /// Weight precision (default: f16 where the adapter has SHADER_F16, else f32).
        #[arg(long, value_enum)]
        precision: Option<Precision>,
    },
    /// Florence-2 vision path (DaViT + image head) at the real sizes, random weights.
    Vision {
        #[command(flatten)]
        device: DeviceArgs,
        /// Model size: base or large.
        #[arg(long, default_value = "large")]
        config: String,
        /// Square input image side in pixels.
        #[arg(long, default_value_t = 768)]
        size: usize,
        /// Weight precision (default: f16 where the adapter has SHADER_F16, else f32).
        #[arg(long, value_enum)]
        precision: Option<Precision>,
    },
}

/// Options every GPU command takes.
#[derive(Args, Clone)]
pub struct DeviceArgs {
    /// Adapter to use: a name substring or an index from `fvl-wgpu devices` (default: the
    /// best one, or FVL_ADAPTER).
    #[arg(long, value_name = "NAME|INDEX")]
    pub device: Option<String>,
    /// Print one JSON object on stdout; tables and progress go to stderr.
    #[arg(long)]
    pub json: bool,
}

impl DeviceArgs {
    /// Opens the chosen device and reports it on stderr.
    pub fn open(&self) -> Result<Gpu> {
        let gpu = Gpu::new(&GpuOptions {
            adapter: self.device.clone(),
            on_warning: Some(|w| eprintln!("warning: {w}")),
            ..Default::default()
        })?;
        eprintln!("device: {}", gpu.describe());
        Ok(gpu)
    }
}

/// Weight precision on the GPU.
#[derive(Clone, Copy, ValueEnum)]
pub enum Precision {
    /// f32 weights: the exact path the parity tests use.
    F32,
    /// f16 weights (accumulation stays f32).
    F16,
}

/// Weight storage of the Llama linear layers and the embedding table.
#[derive(Clone, Copy, ValueEnum)]
pub enum Quant {
    /// f32: the exact path the parity tests use.
    F32,
    /// f16 (accumulation stays f32).
    F16,
    /// 8-bit blocks of 32 with an f16 scale (8.5 bits a weight).
    Q8,
    /// 4-bit blocks of 32 with an f16 scale (4.5 bits a weight).
    Q4,
}

impl Quant {
    /// The tensor dtype.
    pub fn dtype(self) -> DType {
        match self {
            Quant::F32 => DType::F32,
            Quant::F16 => DType::F16,
            Quant::Q8 => DType::Q8,
            Quant::Q4 => DType::Q4,
        }
    }
}

/// f16 where the adapter has SHADER_F16, else f32.
pub fn default_dtype(gpu: &Gpu) -> DType {
    gpu.default_dtype()
}

/// The LLM weight storage: `--quant` if given, else the format a folder written by
/// `quantize` stores, else [`default_dtype`].
pub fn llm_dtype(flag: Option<Quant>, stored: Option<DType>, gpu: &Gpu) -> DType {
    match (flag, stored) {
        (Some(q), _) => q.dtype(),
        (None, Some(stored)) => stored,
        (None, None) => default_dtype(gpu),
    }
}

/// How the language-model commands pick tokens.
#[derive(Args, Clone)]
pub struct DecodeArgs {
    /// Most tokens to generate, at least 1 (stops earlier at an end-of-sequence id or the
    /// end of the context).
    #[arg(long, default_value_t = 128, value_parser = max_new_tokens)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 (the default) is greedy decoding.
    #[arg(long, default_value_t = 0.0, value_parser = temperature)]
    pub temperature: f32,
    /// Sample from the K most likely tokens only (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: u32,
    /// Sample from the smallest set of tokens holding this much probability (0 < P ≤ 1).
    #[arg(long, default_value_t = 1.0, value_parser = top_p)]
    pub top_p: f32,
    /// Sampling seed: the same seed and settings give the same tokens.
    #[arg(long, default_value_t = 0)]
    pub seed: u32,
}

impl DecodeArgs {
    /// Greedy at temperature 0, else sampling with the given filters.
    pub fn pick(&self) -> fvl_wgpu::model::generate::Pick {
        use fvl_wgpu::model::generate::Pick;
        if self.temperature > 0.0 {
            Pick::Sample {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
            }
        } else {
            Pick::Greedy
        }
    }
}

/// `--temperature`: a finite number ≥ 0, refused while parsing (a negative or NaN one meant
/// greedy without a word).
fn temperature(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(t),
        _ => Err(format!("expected a number ≥ 0 (0 is greedy), got {s}")),
    }
}

/// `--max-new-tokens`: a whole number ≥ 1, refused while parsing (0 generated one token
/// anyway; transformers refuses it too). A huge one is bounded by the context later.
fn max_new_tokens(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("expected a whole number ≥ 1, got {s}")),
    }
}

/// `--top-p`: a probability in (0, 1], refused while parsing, before any model loads.
fn top_p(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(p) if p > 0.0 && p <= 1.0 => Ok(p),
        _ => Err(format!("expected a number in (0, 1], got {s}")),
    }
}

/// Options every model command takes.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Model folder (config.json and safetensors, single or sharded), or a hub id owner/name[@revision]
    /// (from the Hugging Face cache, downloading what is missing).
    #[arg(long, value_name = "DIR|OWNER/NAME")]
    pub model: PathBuf,
    /// Weight precision (default: f16 where the adapter has SHADER_F16, else f32).
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl ModelArgs {
    /// The model folder `--model` names (a hub id resolves through the cache).
    pub fn resolve(&self) -> Result<PathBuf> {
        fvl_wgpu::weights::hub::resolve(&self.model, fvl_wgpu::weights::hub::Needs::Model)
    }

    /// The weight dtype for `gpu`.
    pub fn dtype(&self, gpu: &Gpu) -> DType {
        Self::dtype_for(self.precision, gpu)
    }

    /// The weight dtype `precision` asks for on `gpu`.
    pub fn dtype_for(precision: Option<Precision>, gpu: &Gpu) -> DType {
        match precision {
            Some(Precision::F32) => DType::F32,
            Some(Precision::F16) => DType::F16,
            None => default_dtype(gpu),
        }
    }

    /// Opens the device and loads a model on it with a progress bar of `tensors` ticks
    /// (`load` gets the GPU, the weight dtype and the tick); returns the model and its dtype.
    pub fn load_with_progress<T>(
        &self,
        tensors: usize,
        what: &str,
        load: impl FnOnce(Gpu, DType, &dyn Fn()) -> Result<T>,
    ) -> Result<(T, DType)> {
        let gpu = self.device.open()?;
        let dtype = self.dtype(&gpu);
        let bar = progress(tensors, what);
        let model = load(gpu, dtype, &|| bar.inc(1))?;
        bar.finish_and_clear();
        Ok((model, dtype))
    }
}

/// A progress bar on stderr for `len` steps (hidden when stderr is not a terminal).
pub fn progress(len: usize, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Parses the command line and runs the command.
pub fn run() -> Result<()> {
    let cli = Cli::parse();
    // The server writes to sockets and must see a closed one as an error; every other
    // command writes to stdout, where a reader that went away (`| head`) ends it quietly.
    if !matches!(cli.command, Command::Serve(_)) {
        crate::quiet_closed_pipe();
    }
    match cli.command {
        Command::Devices { json } => devices::run(json),
        Command::Selfcheck(args) => selfcheck::run(&args),
        Command::Features(args) => features::run(&args),
        Command::Quantize(args) => quantize::run(&args),
        Command::Inspect(args) => inspect::run(&args),
        Command::Generate(args) => generate::run(&args),
        Command::Florence2(args) => florence2::run(&args),
        Command::Infer(args) => infer::run(&args),
        Command::Pull(args) => hub::pull(&args),
        Command::Models(args) => hub::models(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Mcp(args) => serve::mcp(&args),
        Command::Bench {
            what:
                BenchWhat::Kernels {
                    device,
                    quick,
                    only,
                },
        } => bench::kernels(&device, quick, only.as_deref()),
        Command::Bench {
            what:
                BenchWhat::E2e {
                    device,
                    vision,
                    llm,
                    quant,
                    size,
                    tokens,
                },
        } => bench::e2e(&device, &vision, &llm, quant.dtype(), size, tokens),
        Command::Bench {
            what:
                BenchWhat::Decode {
                    device,
                    config,
                    quant,
                    prompt,
                    tokens,
                },
        } => bench::decode(&device, &config, quant.dtype(), prompt, tokens),
        Command::Bench {
            what:
                BenchWhat::Florence2 {
                    device,
                    config,
                    precision,
                },
        } => bench::florence2(&device, &config, precision),
        Command::Bench {
            what:
                BenchWhat::Batch {
                    device,
                    model,
                    images,
                    count,
                    precision,
                },
        } => bench::batch(&device, &model, &images, count, precision),
        Command::Bench {
            what:
                BenchWhat::Vision {
                    device,
                    config,
                    size,
                    precision,
                },
        } => bench::vision(&device, &config, size, precision),
        Command::Bench {
            what:
                BenchWhat::Load {
                    device,
                    size_mb,
                    dir,
                },
        } => bench::load(&device, size_mb, dir.as_deref()),
    }
}
