//! `fvl-wgpu generate`: text generation with a Llama-3 or Phi-3 checkpoint, streamed to stdout
//! as it decodes, or one JSON object with `--json`.

use std::io::Write;
use std::time::Instant;

use fvl_wgpu::gpu::{DType, Gpu};
use fvl_wgpu::model::generate::{Limits, Prompt, Session};
use fvl_wgpu::model::llama::{Llama, LlamaConfig};
use fvl_wgpu::pipeline::{AskOptions, TextChat};
use fvl_wgpu::text::llama::{LlamaTokenizer, Message, TextStream};
use fvl_wgpu::weights::Checkpoint;
use fvl_wgpu::{Error, Result};

use super::chat::converse;
use super::{progress, AnswerPhases, DecodeArgs, ModelArgs, Quant};

/// Arguments of `generate`.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("input").args(["prompt", "prompt_ids"])))]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs<Quant>,
    /// Prompt text (tokenised with the tokenizer's leading BOS, if it adds one).
    #[arg(short = 'p', long, value_name = "TEXT", required_unless_present_any = ["prompt_ids", "chat"])]
    pub prompt: Option<String>,
    /// Prompt as token ids, comma-separated (used as given).
    #[arg(long, value_name = "ID,ID,...", value_delimiter = ',')]
    pub prompt_ids: Option<Vec<u32>>,
    /// Wrap --prompt as a user message in the model's chat template (Llama 3 or Phi-3; Phi-3
    /// chats start with the system message "You are a helpful AI assistant."). Without
    /// --prompt: an interactive chat (one message a line on stdin; an empty line or EOF ends;
    /// a full context drops the oldest turns).
    #[arg(long, conflicts_with = "prompt_ids")]
    pub chat: bool,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Context length in positions, prompt included (default: max_position_embeddings; an
    /// interactive chat: at most 4096).
    #[arg(long, value_name = "N")]
    pub context: Option<usize>,
}

pub fn run(args: &GenerateArgs) -> Result<()> {
    let model = args.model.resolve()?;
    let ck = Checkpoint::open(&model)?;
    let cfg = LlamaConfig::from_checkpoint(&ck)?;
    let tok_path = model.join("tokenizer.json");
    let tok = if args.prompt.is_some() || args.chat || tok_path.is_file() {
        Some(LlamaTokenizer::open(&model)?)
    } else {
        None
    };
    if let (true, None, Some(tok)) = (args.chat, &args.prompt, &tok) {
        if args.model.device.json {
            return Err(Error::input(
                "--json needs --prompt (the interactive chat prints text)",
            ));
        }
        let context = match args.context {
            Some(_) => cfg.checked_context(args.context)?,
            None => cfg.checked_context(None)?.min(CHAT_CONTEXT),
        };
        let (gpu, llama, _) = load(args, &ck, &cfg, Some(tok))?;
        return interactive(&gpu, &llama, tok, context, args);
    }
    let prompt = match (&args.prompt, &args.prompt_ids, &tok) {
        (Some(text), _, Some(tok)) if args.chat => {
            let system = tok.template.default_system().map(|s| Message::new("system", s));
            let messages: Vec<Message> = system.into_iter().chain([Message::new("user", text)]).collect();
            tok.encode_chat(&messages)?
        }
        (Some(text), _, Some(tok)) => tok.encode(text, true)?,
        (_, Some(ids), _) => ids.clone(),
        _ => unreachable!("clap requires --prompt or --prompt-ids"),
    };
    if prompt.is_empty() {
        return Err(Error::input("the prompt has no tokens"));
    }
    cfg.check_ids(&prompt)?;
    let context = cfg.checked_context(args.context)?;
    if prompt.len() >= context {
        return Err(Error::input(format!(
            "the prompt has {} tokens, the context holds {context} positions (prompt plus at least one new token); shorten the prompt or raise --context",
            prompt.len()
        )));
    }
    let pick = args.decode.pick();

    let (gpu, llama, quant) = load(args, &ck, &cfg, tok.as_ref())?;
    let cache_len = context.min(prompt.len().saturating_add(args.decode.max_new_tokens));
    let seed = args.decode.seed();
    let mut session = Session::new(&gpu, &llama, cache_len, pick, seed.unwrap_or(0))?;

    let mut phases = AnswerPhases::start("prefill", args.model.device.json);
    let t0 = Instant::now();
    let first = session.prefill(Prompt::Ids(&prompt), false)?;
    let prefill_s = t0.elapsed().as_secs_f64();
    phases.piece();
    let mut stream = TextStream::default();
    let mut text = String::new();
    let mut stdout = std::io::stdout();
    let limits = Limits {
        max_new: args.decode.max_new_tokens,
        reserve: 0,
        keep_stop: true,
    };
    let is_stop = |id| tok.as_ref().is_some_and(|t| t.is_stop(id));
    let gen = session.generate(first, &limits, &is_stop, &mut |id| {
        if let Some(piece) = match &tok {
            Some(tok) => stream.push(tok, id)?,
            None => None,
        } {
            if !args.model.device.json {
                print!("{piece}");
                stdout.flush().ok();
            }
            text += &piece;
        }
        Ok(true)
    })?;
    drop(phases);
    let (ids, stopped, decode_tps) = (gen.ids, gen.stopped.name(), gen.decode_tokens_per_s);
    let prefill_tps = prompt.len() as f64 / prefill_s;
    if args.model.device.json {
        let summary = serde_json::json!({
            "token_ids": ids,
            "text": text,
            "prompt_tokens": prompt.len(),
            "stopped": stopped,
            "quant": quant.name(),
            "seed": seed,
            "prefill_tokens_per_s": prefill_tps,
            "decode_tokens_per_s": decode_tps,
        });
        println!("{summary}");
    } else {
        println!();
        eprintln!(
            "{} tokens ({stopped}); prefill {} at {prefill_tps:.1} tokens/s, decode {decode_tps:.1} tokens/s ({})",
            ids.len(),
            match prompt.len() {
                1 => "1 token".to_string(),
                n => format!("{n} tokens"),
            },
            quant.name()
        );
    }
    Ok(())
}

/// Default context of an interactive chat: a full `max_position_embeddings` cache (128k
/// positions for Llama 3.1) would take many GB; llama.cpp's and ollama's chats start smaller
/// too.
const CHAT_CONTEXT: usize = 4096;

/// Opens the device and loads the weights with a progress bar: (GPU, model, storage).
fn load(
    args: &GenerateArgs,
    ck: &Checkpoint,
    cfg: &LlamaConfig,
    tok: Option<&LlamaTokenizer>,
) -> Result<(Gpu, Llama, DType)> {
    let gpu = args.model.device.open()?;
    // A checkpoint written by `quantize` loads in its own format unless told otherwise.
    let quant = args.model.dtype(&gpu, ck.stored_quant());
    let bar = progress(Llama::tensor_count(cfg), "loading weights");
    let mut llama = Llama::from_checkpoint(&gpu, ck, quant, &|| bar.inc(1))?;
    if let Some(tok) = tok {
        llama.sampled_vocab = tok.len();
    }
    bar.finish_and_clear();
    if llama.f16_fallbacks > 0 {
        eprintln!(
            "note: {} weight(s) with rows that are not a multiple of 32 long are stored as f16, not {}",
            llama.f16_fallbacks,
            quant.name()
        );
    }
    Ok((gpu, llama, quant))
}

/// Messages from stdin, answers streamed to stdout, one conversation in one KV cache. A
/// message the chat refuses or a line that is not text gets one line on stderr and the chat
/// goes on; a full context drops the oldest turns (the chat's policy), said on stderr.
fn interactive(
    gpu: &Gpu,
    llama: &Llama,
    tok: &LlamaTokenizer,
    context: usize,
    args: &GenerateArgs,
) -> Result<()> {
    let opts = AskOptions {
        max_new_tokens: args.decode.max_new_tokens,
        pick: args.decode.pick(),
        seed: args.decode.seed().unwrap_or(0),
    };
    let mut chat = TextChat::new(gpu, llama, tok, None, context, &opts)?;
    converse("the system message", |text, print| {
        chat.ask(text, &opts, print)
    })
}
