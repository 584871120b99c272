//! `fvl-wgpu florence2`: one Florence-2 task on one image — preprocessing, vision tower, BART
//! encoder, beam search (or greedy) decoding and post-processing (spec §5.5) — printed as text or JSON, and
//! optionally drawn onto the image.

use std::path::PathBuf;
use std::time::Instant;

use fvl_wgpu::gpu::Graph;
use fvl_wgpu::image::{load_image, preprocess, PreprocessConfig};
use fvl_wgpu::model::bart::Bart;
use fvl_wgpu::model::beam::BeamOptions;
use fvl_wgpu::model::florence2::VisionTower;
use fvl_wgpu::postprocess::{Answer, PostProcessor};
use fvl_wgpu::tasks::{task_tokens, Tokenizer};
use fvl_wgpu::weights::florence2::Florence2Checkpoint;
use fvl_wgpu::{Error, Result};

use super::{annotate, load_tower, ModelArgs};

/// Generation length when `--max-new-tokens` is not given (capped by the position table).
const DEFAULT_MAX_NEW_TOKENS: usize = 1024;

/// Arguments of `florence2`.
#[derive(clap::Args)]
pub struct Florence2Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Image file (PNG, JPEG, WebP or BMP).
    #[arg(long, value_name = "FILE")]
    pub image: PathBuf,
    /// Task token, e.g. `<CAPTION>`, `<OD>`, `<OCR_WITH_REGION>`,
    /// `<CAPTION_TO_PHRASE_GROUNDING>` (which takes --text).
    #[arg(long, value_name = "TASK")]
    pub task: String,
    /// Text input of the tasks that take one (grounding, segmentation, region tasks).
    #[arg(long, value_name = "STR")]
    pub text: Option<String>,
    /// Most tokens to generate (default: 1024, or the model's position table if smaller).
    #[arg(long, value_name = "N")]
    pub max_new_tokens: Option<usize>,
    /// Beams of the beam search (1 with --no-repeat-ngram-size 0: greedy, argmax on the GPU).
    /// The default is Florence-2's generation config.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub num_beams: usize,
    /// Ban tokens that would repeat an n-gram of this size (0: off); Florence-2's config has 3.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub no_repeat_ngram_size: usize,
    /// Draw the boxes, quads and polygons with their labels on the image and save it as PNG.
    #[arg(long, value_name = "OUT.png")]
    pub annotate: Option<PathBuf>,
}

/// The one-line summary of an answer, then one line per item.
fn describe(answer: &Answer) -> String {
    let fmt = |v: &[i32]| {
        let s: Vec<_> = v.iter().map(i32::to_string).collect();
        format!("[{}]", s.join(", "))
    };
    let list = |what: &str, items: Vec<(String, String)>| {
        let mut out = format!("{} {what}", items.len());
        for (label, coords) in items {
            out += &format!("\n  {label:?} {coords}");
        }
        out
    };
    let pair = |l: &String, c: String| (l.clone(), c);
    match answer {
        Answer::Text(t) => format!("answer: {t}"),
        Answer::Boxes { bboxes, labels } => list(
            "boxes (x1, y1, x2, y2)",
            labels
                .iter()
                .zip(bboxes)
                .map(|(l, b)| pair(l, fmt(b)))
                .collect(),
        ),
        Answer::Quads { quad_boxes, labels } => list(
            "quads (x1, y1, …, x4, y4)",
            labels
                .iter()
                .zip(quad_boxes)
                .map(|(l, q)| pair(l, fmt(q)))
                .collect(),
        ),
        Answer::Polygons { polygons, labels } => list(
            "instances (polygons of x, y)",
            labels
                .iter()
                .zip(polygons)
                .map(|(l, p)| pair(l, p.iter().map(|p| fmt(p)).collect::<Vec<_>>().join(" ")))
                .collect(),
        ),
        Answer::BoxesOrPolygons {
            bboxes,
            bboxes_labels,
            polygons,
            polygons_labels,
        } => {
            let boxes = Answer::Boxes {
                bboxes: bboxes.clone(),
                labels: bboxes_labels.clone(),
            };
            let polys = Answer::Polygons {
                polygons: polygons.clone(),
                labels: polygons_labels.clone(),
            };
            format!("{}\n{}", describe(&boxes), describe(&polys))
        }
    }
}

/// Runs the task: input errors (unknown task, text where none is taken or missing, a prompt
/// or length over the position table) come before any GPU work.
pub fn run(args: &Florence2Args) -> Result<()> {
    let dir = &args.model.resolve()?;
    if let Some(path) = &args.annotate {
        // Checked before the work, so a bad --annotate fails in a moment.
        fvl_wgpu::output::check_target(path, &[dir, &args.image])?;
    }
    if !task_tokens().any(|t| t == args.task) {
        let known: Vec<_> = task_tokens().collect();
        return Err(Error::input(format!(
            "unknown task {:?}; known tasks: {}",
            args.task,
            known.join(" ")
        )));
    }
    let ck = Florence2Checkpoint::open(dir)?;
    let cfg = ck.text();
    let tokenizer = Tokenizer::open(dir)?;
    let task = format!("{}{}", args.task, args.text.as_deref().unwrap_or(""));
    let prompt = tokenizer.encode_task(&task)?;
    let positions = cfg.max_position_embeddings;
    if prompt.len() >= positions {
        return Err(Error::input(format!(
            "the prompt is {} tokens; with the image tokens it must fit the model's {positions} positions",
            prompt.len()
        )));
    }
    if args.num_beams == 0 {
        return Err(Error::input("--num-beams 0: at least one beam"));
    }
    let max_new = args
        .max_new_tokens
        .unwrap_or(DEFAULT_MAX_NEW_TOKENS.min(positions));
    if max_new == 0 || max_new > positions {
        return Err(Error::input(format!(
            "--max-new-tokens {max_new}: must be 1..={positions} (the model's position table)"
        )));
    }
    let post = PostProcessor::for_model(dir)?;
    let pp = PreprocessConfig::from_dir_or_default(dir)?;
    let image = preprocess(&args.image, &pp, false)?;

    let t0 = Instant::now();
    let gpu = args.model.device.open()?;
    let dtype = args.model.dtype(&gpu);
    let tower = load_tower(&gpu, &ck, dtype)?;
    let bart = Bart::from_checkpoint(&gpu, &ck, dtype)?;
    let t_load = t0.elapsed();

    let t1 = Instant::now();
    let pixels = VisionTower::pixels(&gpu, &image)?;
    let mut g = Graph::new(&gpu);
    let p = g.external(&pixels);
    let out = tower.forward(&mut g, p)?;
    g.keep(out.features);
    let exe = g.build()?;
    exe.run(&gpu, &[])?;
    let features = exe.tensor(out.features);
    let n_image = features.shape()[0];
    if n_image + prompt.len() > positions {
        return Err(Error::input(format!(
            "{n_image} image tokens and a {}-token prompt exceed the model's {positions} positions; shorten --text",
            prompt.len()
        )));
    }
    let ids = if args.num_beams == 1 && args.no_repeat_ngram_size == 0 {
        bart.greedy(&gpu, features, &prompt, max_new)?
    } else {
        let opts = BeamOptions {
            num_beams: args.num_beams,
            no_repeat_ngram_size: args.no_repeat_ngram_size,
            max_new_tokens: max_new,
            early_stopping: true,
            length_penalty: 1.0,
        };
        bart.beam_search(&gpu, features, &prompt, &opts)?
    };
    let t_run = t1.elapsed();

    let text = tokenizer.decode(&ids)?;
    let (w, h) = image.original_size;
    let size = (w as u32, h as u32);
    let answer = post.parse(&task, &text, size);
    if let Some(path) = &args.annotate {
        let original = load_image(&args.image)?;
        annotate::draw(&original, &answer, path, &[&args.image, &args.model.model])?;
    }
    if args.model.device.json {
        let summary = serde_json::json!({
            "task": args.task,
            "token_ids": ids,
            "text": text,
            "result": post.parse_json(&task, &text, size),
        });
        println!("{summary}");
    } else {
        println!("{text}");
        println!("{}", describe(&answer));
    }
    eprintln!(
        "{} tokens ({} precision): load {:.0} ms, run {:.0} ms",
        ids.len(),
        dtype.name(),
        t_load.as_secs_f64() * 1e3,
        t_run.as_secs_f64() * 1e3
    );
    Ok(())
}
