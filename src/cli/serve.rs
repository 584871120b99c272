//! `fvl-wgpu serve` and `fvl-wgpu mcp`: load one model (Florence-2 or Florence-VL, told
//! apart by its config) and hand it to the library's server.

use std::path::PathBuf;

use fvl_wgpu::pipeline::florence2::Florence2Folder;
use fvl_wgpu::pipeline::FlorenceVl;
use fvl_wgpu::server::worker::Loaded;
use fvl_wgpu::server::{self, ServeOptions};
use fvl_wgpu::{Error, Result};

use super::{ModelArgs, Quant, TowerTokenizerArgs};

/// The model options `serve` and `mcp` share.
#[derive(clap::Args)]
pub struct ServedModel {
    // A Florence-2 folder (tasks) or a Florence-VL one (LLaVA layout, questions); q8/q4
    // apply to Florence-VL's language model.
    #[command(flatten)]
    pub model: ModelArgs<Quant>,
    #[command(flatten)]
    pub tokenizer: TowerTokenizerArgs,
}

impl ServedModel {
    /// Loads the model on the chosen device.
    pub fn load(&self) -> Result<Loaded> {
        let dir = &self.model.resolve()?;
        let tokenizer = self.tokenizer.resolve()?;
        let config = dir.join("config.json");
        let text = std::fs::read_to_string(&config).map_err(|e| Error::File {
            path: config.display().to_string(),
            msg: format!("cannot read: {e}"),
        })?;
        let is_vl = text.contains("\"mm_projector_type\"");
        let gpu = self.model.device.open()?;
        let _loading = super::phase("loading the model");
        if is_vl {
            // A folder written by `quantize` loads in its own format unless told otherwise.
            let stored = fvl_wgpu::weights::Checkpoint::open(dir)?.stored_quant();
            let dtype = self.model.dtype(&gpu, stored);
            let m = FlorenceVl::load(gpu, dir, dtype, tokenizer.as_deref())?;
            Ok(Loaded::FlorenceVl(m))
        } else {
            let dtype = self.model.dtype(&gpu, None);
            let m = Florence2Folder::open(dir)?.load(gpu, dtype, &|| {})?;
            Ok(Loaded::Florence2(m))
        }
    }
}

/// Arguments of `serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ServedModel,
    /// Address to listen on (127.0.0.1: this machine only).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free port; the address is printed on stderr).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Requests that may wait for the GPU besides the running one; more get 429.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub max_queue: usize,
    /// Require `Authorization: Bearer KEY` on every route but /health.
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// A folder whose images file:// URLs and paths may name (repeatable).
    #[arg(long, value_name = "DIR")]
    pub allow_path: Vec<PathBuf>,
    /// Largest request body (and image file) in bytes; larger gets 413.
    #[arg(long, value_name = "BYTES", default_value_t = 20 << 20)]
    pub max_body_bytes: usize,
    /// Largest decoded image in pixels; larger gets 413.
    #[arg(long, value_name = "N", default_value_t = 40_000_000)]
    pub max_image_pixels: u64,
    /// Answer length when a request gives no max_tokens.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_tokens: usize,
}

/// Loads the model and serves until SIGINT/SIGTERM.
pub fn run(args: &ServeArgs) -> Result<()> {
    let model = args.model.load()?;
    let opts = ServeOptions {
        host: args.host.clone(),
        port: args.port,
        max_queue: args.max_queue,
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
        allow_paths: args.allow_path.clone(),
        max_body_bytes: args.max_body_bytes,
        max_image_pixels: args.max_image_pixels,
        default_max_tokens: args.max_tokens,
        model_name: server::model_name(&args.model.model.model),
    };
    server::serve(model, opts, &mut |addr| {
        eprintln!("listening on http://{addr}");
    })
}

/// Arguments of `mcp`.
#[derive(clap::Args)]
pub struct McpArgs {
    #[command(flatten)]
    pub model: ServedModel,
}

/// Loads the model and answers MCP messages on stdin/stdout until stdin closes.
pub fn mcp(args: &McpArgs) -> Result<()> {
    let model = args.model.load()?;
    eprintln!("mcp: ready ({} tools)", server::mcp::tools(server::mcp::Kind::of(&model)).len());
    server::mcp::serve_stdio(&model, std::io::stdin().lock(), std::io::stdout().lock())
}
