//! Command-line parsing and dispatch. Every command that runs on a GPU takes `--device`;
//! `--json` prints one JSON object on stdout and sends tables and progress to stderr.
//!
//! Owns: arguments, progress bars, printing, and the benches. Must not touch: the graphics
//! API, or pipelines an application would need (those live in `fvl_wgpu::pipeline`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

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
        /// Smaller sizes, for a quick look on slow devices (the default on a CPU adapter).
        #[arg(long)]
        quick: bool,
        /// The full sizes, also on a CPU adapter.
        #[arg(long, conflicts_with = "quick")]
        full: bool,
        /// Only kernels whose name contains this text (e.g. `matvec`).
        #[arg(long, value_name = "TEXT")]
        only: Option<String>,
    },
    /// Florence-2 language model at the real sizes, random weights: the encoder on the three
    /// Florence-VL prompts as one batch, and greedy decoder tokens/s.
    Florence2(bench::Florence2Bench),
    /// Llama prefill and decode at the real sizes, random weights: tokens/s and GB/s against
    /// the copy bandwidth.
    Decode {
        #[command(flatten)]
        device: DeviceArgs,
        /// Model: llama-1b, llama-8b or phi3.5-mini (Florence-VL 3B's LLM).
        #[arg(long, default_value = "llama-1b")]
        config: String,
        /// Weight storage of the linear layers.
        #[arg(long, visible_alias = "quant", value_enum, default_value = "q4", value_name = "FORMAT")]
        precision: Quant,
        /// Prompt tokens for the prefill (default: 64, or 16 on a CPU adapter).
        #[arg(short = 'p', long, value_name = "N")]
        prompt: Option<usize>,
        /// Decode steps to time (default: 16, or 4 on a CPU adapter).
        #[arg(long, value_name = "N")]
        tokens: Option<usize>,
    },
    /// Florence-VL end to end at the real sizes, random weights: time to first token split
    /// into vision + fusion and prefill, decode tokens/s, memory.
    E2e {
        #[command(flatten)]
        device: DeviceArgs,
        /// Florence-2 tower and encoder size: base or large (Florence-VL uses large; the
        /// default, or base on a CPU adapter).
        #[arg(long, value_name = "SIZE")]
        vision: Option<String>,
        /// Language model: llama-8b (Florence-VL 8B; the default, or llama-1b on a CPU
        /// adapter), phi3.5-mini (Florence-VL 3B) or llama-1b (fits small machines).
        #[arg(long, value_name = "MODEL")]
        llm: Option<String>,
        /// Weight storage of the linear layers.
        #[arg(long, visible_alias = "quant", value_enum, default_value = "q4", value_name = "FORMAT")]
        precision: Quant,
        /// Square input image side in pixels (default: 768, or 384 on a CPU adapter).
        #[arg(long, value_name = "PIXELS")]
        size: Option<usize>,
        /// Decode steps to time (default: 8, or 4 on a CPU adapter).
        #[arg(long, value_name = "N")]
        tokens: Option<usize>,
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
        #[arg(short = 'm', long, value_name = "DIR")]
        model: PathBuf,
        /// Images: folders, globs or files (cycled to --count).
        #[arg(long, value_name = "DIR|GLOB|FILE", num_args = 1.., required = true)]
        images: Vec<PathBuf>,
        /// Images to run (default: 8, or 3 on a CPU adapter).
        #[arg(long, value_name = "N")]
        count: Option<usize>,
        /// Weight storage (default: f16 where the adapter has SHADER_F16, else f32).
        #[arg(long, visible_alias = "quant", value_enum, value_name = "FORMAT")]
        precision: Option<Precision>,
    },
    /// Florence-2 vision path (DaViT + image head) at the real sizes, random weights.
    Vision(bench::Florence2Bench),
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

/// A set of weight storage formats a command accepts for `--precision`.
pub trait Storage: ValueEnum + Clone + Copy + Send + Sync + 'static {
    /// The tensor dtype.
    fn dtype(self) -> DType;
}

/// Weight precision of the Florence-2 commands (their weights are f32 or f16 on the GPU).
#[derive(Clone, Copy, ValueEnum)]
pub enum Precision {
    /// The exact path the parity tests use.
    F32,
    /// Half the memory; accumulation stays f32.
    F16,
}

impl Storage for Precision {
    fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
        }
    }
}

/// Weight storage of the language models' linear layers and embedding table.
#[derive(Clone, Copy, ValueEnum)]
pub enum Quant {
    /// The exact path the parity tests use.
    F32,
    /// Half the memory; accumulation stays f32.
    F16,
    /// 8-bit blocks of 32 with an f16 scale (8.5 bits a weight).
    Q8,
    /// 4-bit blocks of 32 with an f16 scale (4.5 bits a weight).
    Q4,
}

impl Storage for Quant {
    fn dtype(self) -> DType {
        match self {
            Quant::F32 => DType::F32,
            Quant::F16 => DType::F16,
            Quant::Q8 => DType::Q8,
            Quant::Q4 => DType::Q4,
        }
    }
}

/// The weight storage: the flag if given, else the format a folder written by `quantize`
/// stores, else the adapter's default (f16 where it has SHADER_F16, else f32).
pub fn storage_dtype<P: Storage>(flag: Option<P>, stored: Option<DType>, gpu: &Gpu) -> DType {
    match (flag, stored) {
        (Some(p), _) => p.dtype(),
        (None, Some(stored)) => stored,
        (None, None) => gpu.default_dtype(),
    }
}

/// How the language-model commands pick tokens.
#[derive(Args, Clone)]
pub struct DecodeArgs {
    /// Most tokens to generate, at least 1 (stops earlier at an end-of-sequence id or the
    /// end of the context).
    #[arg(short = 'n', long, default_value_t = 128, value_parser = max_new_tokens)]
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
    /// Sampling seed: the same seed and settings give the same tokens (default: a random
    /// one, printed on stderr and in --json output so the run can be repeated).
    #[arg(long, value_name = "S")]
    pub seed: Option<u32>,
}

impl DecodeArgs {
    /// The seed of this run: `None` for greedy decoding (no randomness), else --seed, else a
    /// fresh random one, said on stderr with the flag that repeats the run.
    pub fn seed(&self) -> Option<u32> {
        use std::hash::BuildHasher;
        if self.temperature == 0.0 {
            return None;
        }
        Some(self.seed.unwrap_or_else(|| {
            // RandomState is seeded from the OS's randomness: no extra crate for one number.
            let seed = std::collections::hash_map::RandomState::new()
                .hash_one(std::time::SystemTime::now()) as u32;
            eprintln!("seed: {seed} (--seed {seed} repeats this run)");
            seed
        }))
    }

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

/// The model, its weight storage and the device: what every model command takes. `P` is the
/// set of storage formats the command can load ([`Precision`] or [`Quant`]).
#[derive(Args, Clone)]
pub struct ModelArgs<P: Storage> {
    /// Model folder (config.json and safetensors or pytorch_model.bin, single or sharded), or
    /// a hub id owner/name[@revision] (from the Hugging Face cache, downloading what is
    /// missing).
    #[arg(short = 'm', long, value_name = "DIR|OWNER/NAME")]
    pub model: PathBuf,
    /// Weight storage (default: the format of a folder packed by `quantize`, else f16 where
    /// the adapter has SHADER_F16, else f32).
    #[arg(long, visible_alias = "quant", value_enum, value_name = "FORMAT")]
    pub precision: Option<P>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl<P: Storage> ModelArgs<P> {
    /// The model folder `--model` names (a hub id resolves through the cache).
    pub fn resolve(&self) -> Result<PathBuf> {
        fvl_wgpu::weights::hub::resolve(&self.model, fvl_wgpu::weights::hub::Needs::Model)
    }

    /// The weight dtype on `gpu`: `--precision` if given, else the format a folder written by
    /// `quantize` stores (`stored`), else f16 where the adapter has SHADER_F16, else f32.
    pub fn dtype(&self, gpu: &Gpu, stored: Option<DType>) -> DType {
        storage_dtype(self.precision, stored, gpu)
    }

    /// Opens the device and loads a model on it with a progress bar of `tensors` ticks
    /// (`load` gets the GPU, the weight dtype and the tick); returns the model, its dtype and
    /// the time the whole load took.
    pub fn load_model<T>(
        &self,
        tensors: usize,
        load: impl FnOnce(Gpu, DType, &dyn Fn()) -> Result<T>,
    ) -> Result<(T, DType, Duration)> {
        let t0 = Instant::now();
        let gpu = self.device.open()?;
        let dtype = self.dtype(&gpu, None);
        let bar = progress(tensors, "loading the model");
        let model = load(gpu, dtype, &|| bar.inc(1))?;
        bar.finish_and_clear();
        Ok((model, dtype, t0.elapsed()))
    }
}

/// `--florence-tokenizer`, for the commands that load a Florence-VL folder.
#[derive(Args, Clone)]
pub struct TowerTokenizerArgs {
    /// Folder or hub id with the Florence-2 (BART) tokenizer.json for Florence-VL's three
    /// encoder prompts (default: the tower's folder, else Florence-VL's hard-coded ids).
    #[arg(long, value_name = "DIR|OWNER/NAME")]
    pub florence_tokenizer: Option<PathBuf>,
}

impl TowerTokenizerArgs {
    /// The tokenizer folder, a hub id resolved through the cache; `None` when not given.
    pub fn resolve(&self) -> Result<Option<PathBuf>> {
        use fvl_wgpu::weights::hub::{resolve, Needs};
        self.florence_tokenizer
            .as_ref()
            .map(|t| resolve(t, Needs::Configs))
            .transpose()
    }
}

/// One image, or many through the batch path.
#[derive(Args, Clone)]
pub struct ImagesArgs {
    /// Image file (PNG, JPEG, WebP or BMP).
    #[arg(short = 'i', long, value_name = "FILE", required_unless_present = "images")]
    pub image: Option<PathBuf>,
    /// Many images: folders, globs (`photos/*.jpg`) or files; one JSON line per image.
    #[arg(long, value_name = "DIR|GLOB|FILE", num_args = 1.., conflicts_with = "image")]
    pub images: Vec<PathBuf>,
    /// With --images: write the JSON lines to this file instead of stdout.
    #[arg(long, value_name = "FILE.jsonl", requires = "images")]
    pub out: Option<PathBuf>,
}

/// The flag that sets a library setting, so that an error names what the user typed (the
/// library's messages name the setting itself: "num_beams 0" is "--num-beams 0" here).
pub fn flag(setting: fvl_wgpu::Setting) -> Option<&'static str> {
    use fvl_wgpu::Setting;
    Some(match setting {
        Setting::NumBeams => "--num-beams",
        Setting::MaxNewTokens => "--max-new-tokens",
        Setting::TaskText => "--text",
        Setting::WeightStorage => "--precision",
        Setting::TowerTokenizer => "--florence-tokenizer DIR",
        Setting::Adapter => "--device",
        Setting::OutputFolder => "--out",
        Setting::Images => "--images",
        Setting::AllowedFolders => "--allow-path",
        _ => return None,
    })
}

/// A progress bar on stderr for `len` steps of `what`: drawn on a terminal, else one line
/// `what…` as it starts (logs show every phase without a bar's redraws).
pub fn progress(len: usize, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    if bar.is_hidden() {
        eprintln!("{what}…");
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// A phase of a command that may take a while, on stderr until dropped: a spinner with the
/// time so far on a terminal (cleared at the end), else one line `what…` as it starts.
pub struct Phase(indicatif::ProgressBar);

/// Starts a [`Phase`].
pub fn phase(what: impl Into<String>) -> Phase {
    let what = what.into();
    let bar = indicatif::ProgressBar::new_spinner();
    if bar.is_hidden() {
        eprintln!("{what}…");
    } else {
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg}… {elapsed}")
                .expect("valid template"),
        );
        bar.set_message(what);
        bar.enable_steady_tick(std::time::Duration::from_millis(100));
    }
    Phase(bar)
}

impl Drop for Phase {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// The phases of an answer streamed through a callback: "prefill" until the first piece of
/// text, then "decoding" until dropped. Without `--json` the answer streams to stdout and is
/// its own progress, so only the prefill is said.
pub struct AnswerPhases {
    json: bool,
    now: Option<Phase>,
    started: bool,
}

impl AnswerPhases {
    /// The prefill of `what` (e.g. "prefill 90 positions") begins.
    pub fn start(what: impl Into<String>, json: bool) -> AnswerPhases {
        AnswerPhases {
            json,
            now: Some(phase(what)),
            started: false,
        }
    }

    /// A piece of the answer arrived: the first ends the prefill.
    pub fn piece(&mut self) {
        if !self.started {
            self.started = true;
            self.now = None;
            if self.json {
                self.now = Some(phase("decoding"));
            }
        }
    }
}

/// Help and version go to stdout (exit 0); a usage error is printed as one line — clap's
/// message, its list and tip folded in, and the command's `--help` named — with exit status 2.
fn usage_error(e: clap::Error) -> ! {
    if !e.use_stderr() {
        e.exit();
    }
    eprintln!("{}", one_line(&e.render().to_string()));
    std::process::exit(2);
}

/// clap's multi-line usage error folded into one line: the message up to its "Usage:" block,
/// lines joined, then the `--help` of the (sub)command the arguments name.
fn one_line(rendered: &str) -> String {
    let message = rendered.split_once("\nUsage:").map_or(rendered, |(m, _)| m);
    let mut line = String::new();
    for part in message.lines().map(str::trim) {
        if part.is_empty() || part.starts_with("For more information") {
            continue;
        }
        if !line.is_empty() {
            line += if line.ends_with(':') { " " } else { "; " };
        }
        line += part;
    }
    let mut command = <Cli as clap::CommandFactory>::command();
    let mut path = vec!["fvl-wgpu".to_string()];
    for arg in std::env::args().skip(1) {
        let Some(sub) = command.find_subcommand(&arg).cloned() else {
            break;
        };
        path.push(arg);
        command = sub;
    }
    format!("{line} (see '{} --help')", path.join(" "))
}

/// Parses the command line and runs the command.
pub fn run() -> Result<()> {
    let cli = Cli::try_parse().unwrap_or_else(|e| usage_error(e));
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
                    full,
                    only,
                },
        } => bench::kernels(&device, quick, full, only.as_deref()),
        Command::Bench {
            what:
                BenchWhat::E2e {
                    device,
                    vision,
                    llm,
                    precision,
                    size,
                    tokens,
                },
        } => bench::e2e(&device, bench::E2e { vision, llm, size, tokens }, precision.dtype()),
        Command::Bench {
            what:
                BenchWhat::Decode {
                    device,
                    config,
                    precision,
                    prompt,
                    tokens,
                },
        } => bench::decode(&device, &config, precision.dtype(), prompt, tokens),
        Command::Bench {
            what: BenchWhat::Florence2(args),
        } => bench::florence2(&args),
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
            what: BenchWhat::Vision(args),
        } => bench::vision(&args),
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every (sub)command with the path that reaches it.
    fn commands() -> Vec<(String, clap::Command)> {
        let mut out = vec![];
        let mut todo = vec![("fvl-wgpu".to_string(), Cli::command())];
        while let Some((path, cmd)) = todo.pop() {
            for sub in cmd.get_subcommands() {
                todo.push((format!("{path} {}", sub.get_name()), sub.clone()));
            }
            out.push((path, cmd));
        }
        out
    }

    #[test]
    fn every_command_and_flag_has_help() {
        Cli::command().debug_assert();
        let mut missing = vec![];
        for (path, cmd) in commands() {
            if path != "fvl-wgpu" && cmd.get_about().is_none() {
                missing.push(path.clone());
            }
            for arg in cmd.get_arguments() {
                if arg.get_help().is_none() && !matches!(arg.get_id().as_str(), "help" | "version") {
                    missing.push(format!("{path} --{}", arg.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }

    #[test]
    fn shared_flags_have_one_name_and_short_form_everywhere() {
        let mut seen = 0;
        for (path, cmd) in commands() {
            for arg in cmd.get_arguments() {
                let short = match arg.get_long() {
                    Some("model") => Some('m'),
                    Some("image") => Some('i'),
                    Some("prompt") => Some('p'),
                    Some("max-new-tokens") => Some('n'),
                    Some("precision") => {
                        let aliases = arg.get_visible_aliases().unwrap_or_default();
                        assert_eq!(aliases, ["quant"], "{path} --precision");
                        None
                    }
                    Some(long) => {
                        assert_ne!(long, "quant", "{path}: --quant is --precision's alias");
                        continue;
                    }
                    None => continue,
                };
                seen += 1;
                assert_eq!(arg.get_short(), short, "{path} --{}", arg.get_id());
            }
        }
        // generate, infer, florence2, features, serve, mcp, quantize, inspect, bench …
        assert!(seen >= 25, "only {seen} shared flags found");
    }

    #[test]
    fn usage_errors_fold_into_one_line_naming_the_help() {
        for args in [
            &["fvl-wgpu", "infer", "--image", "x.png"][..],
            &["fvl-wgpu", "infer", "-m", "x", "--precision", "q5"],
            &["fvl-wgpu", "florence2", "--modle", "x"],
            &["fvl-wgpu", "nope"],
        ] {
            let e = Cli::try_parse_from(args).err().expect("a usage error");
            let rendered = e.render().to_string();
            assert!(rendered.trim().lines().count() > 1, "clap's own is multi-line: {rendered}");
            let line = one_line(&rendered);
            assert_eq!(line.lines().count(), 1, "{args:?}: {line}");
            assert!(line.starts_with("error: ") && line.ends_with("--help')"), "{line}");
            assert!(!line.contains("Usage:"), "{line}");
        }
        let e = Cli::try_parse_from(["fvl-wgpu", "infer", "-i", "x.png"]).err().unwrap();
        assert!(one_line(&e.render().to_string()).contains("not provided: --model"));
    }
}
