//! `fvl-wgpu infer`: one image and a question through Florence-VL — features, the llama3
//! prompt with the image rows spliced in, prefill from embeddings and a decode streamed to
//! stdout until `<|eot_id|>` (or one JSON object with `--json`).

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use fvl_wgpu::image::{load_image, preprocess_image, Preprocessed};
use fvl_wgpu::pipeline::{AskOptions, FlorenceVl};
use fvl_wgpu::weights::Checkpoint;
use fvl_wgpu::{Error, Result};

use super::chat::converse;
use super::{batch, phase, AnswerPhases, DecodeArgs, ImagesArgs, ModelArgs, Quant, TowerTokenizerArgs};

/// Arguments of `infer`.
#[derive(clap::Args)]
// --images asks every image the --prompt question.
#[command(group(clap::ArgGroup::new("many").args(["images"]).requires("prompt")))]
pub struct InferArgs {
    // The Florence-VL checkpoint (LLaVA layout: Llama or Phi-3, projector, Florence-2 tower).
    #[command(flatten)]
    pub model: ModelArgs<Quant>,
    #[command(flatten)]
    pub input: ImagesArgs,
    /// The question about the image. Without it: an interactive chat about the image (one
    /// question a line on stdin; follow-ups reuse the cache; an empty line or EOF ends).
    #[arg(short = 'p', long, value_name = "TEXT")]
    pub prompt: Option<String>,
    #[command(flatten)]
    pub decode: DecodeArgs,
    #[command(flatten)]
    pub tokenizer: TowerTokenizerArgs,
    /// Drop the mean token: 576 image rows instead of 577.
    #[arg(long)]
    pub drop_mean_token: bool,
}

pub fn run(args: &InferArgs) -> Result<()> {
    // The image is read, decoded and size-checked before the model loads.
    let image = args.input.image.as_deref().map(load_image).transpose()?;
    let gpu = args.model.device.open()?;
    let t0 = Instant::now();
    let model = args.model.resolve()?;
    // A folder written by `quantize` loads in its own format unless told otherwise.
    let stored = Checkpoint::open(&model)?.stored_quant();
    let quant = args.model.dtype(&gpu, stored);
    let tokenizer = args.tokenizer.resolve()?;
    let loading = phase("loading the model");
    let mut m = FlorenceVl::load(gpu, &model, quant, tokenizer.as_deref())?;
    drop(loading);
    m.model.keep_mean_token = !args.drop_mean_token;
    let load_s = t0.elapsed().as_secs_f64();
    let seed = args.decode.seed();
    let opts = AskOptions {
        max_new_tokens: args.decode.max_new_tokens,
        pick: args.decode.pick(),
        seed: seed.unwrap_or(0),
    };
    let json = args.model.device.json;
    let Some(image) = image else {
        let question = args.prompt.as_deref().unwrap_or_default();
        let (cfg, pad) = (m.model.preprocess.clone(), m.model.config.pad_to_square);
        let prepare = |p: &Path| load_image(p).map(|i| preprocess_image(&i, &cfg, pad));
        return batch::run(&args.input.images, args.input.out.as_deref(), prepare, |image| {
            let (_, reply) = m.chat_preprocessed(&image, question, &opts, &mut |_| true)?;
            Ok(serde_json::json!({
                "answer": reply.text,
                "token_ids": reply.token_ids,
                "stopped": reply.stopped.name(),
                "seed": seed,
            }))
        });
    };
    let image = preprocess_image(&image, &m.model.preprocess, m.model.config.pad_to_square);
    let Some(question) = &args.prompt else {
        if json {
            return Err(Error::input(
                "--json needs --prompt (the interactive chat prints text)",
            ));
        }
        return interactive(&m, &image, &opts);
    };
    let seen = {
        let _vision = phase("vision (tower, encoder, projector)");
        m.see(&image)?
    };
    let mut chat = m.open_chat(&seen, &opts)?;
    let mut phases = AnswerPhases::start("prefill", json);
    let mut stdout = std::io::stdout();
    let answer = chat.ask(question, &opts, &mut |piece| {
        phases.piece();
        if !json {
            print!("{piece}");
            stdout.flush().ok();
        }
        true
    })?;
    drop(phases);
    let (stopped, prompt_len, decode_tps) = (
        answer.stopped.name(),
        answer.prompt_positions,
        answer.decode_tokens_per_s,
    );
    let (vision_s, prefill_s) = (answer.vision_ms / 1e3, answer.prefill_ms / 1e3);
    let (answer, ids_out) = (answer.text, answer.token_ids);
    if json {
        let summary = serde_json::json!({
            "answer": answer,
            "token_ids": ids_out,
            "stopped": stopped,
            "prompt_positions": prompt_len,
            "quant": quant.name(),
            "seed": seed,
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

/// Questions from stdin, answers streamed to stdout; the first question sees the image, the
/// rest continue the same conversation (its KV cache). A question the chat refuses (too long,
/// outside the vocabulary) or a line that is not text gets one line on stderr and the chat
/// goes on; so does a full context, which the chat handles by dropping its oldest turns.
fn interactive(m: &FlorenceVl, image: &Preprocessed, opts: &AskOptions) -> Result<()> {
    let seen = {
        let _vision = phase("vision (tower, encoder, projector)");
        m.see(image)?
    };
    let mut chat = m.open_chat(&seen, opts)?;
    converse("the system message and the image", |q, print| {
        chat.ask(q, opts, print)
    })
}
