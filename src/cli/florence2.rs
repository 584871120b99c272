//! `fvl-wgpu florence2`: one Florence-2 task on one image — preprocessing, vision tower, BART
//! encoder, beam search (or greedy) decoding and post-processing (spec §5.5) — printed as text or JSON, and
//! optionally drawn onto the image.

use std::path::{Path, PathBuf};

use fvl_wgpu::image::{load_image, preprocess_image};
use fvl_wgpu::pipeline::florence2::Florence2Folder;
use fvl_wgpu::pipeline::{Answer, ImageInput, Task, TaskOptions};
use fvl_wgpu::Result;

use super::{annotate, batch, phase, ImagesArgs, ModelArgs, Precision};

/// Arguments of `florence2`.
#[derive(clap::Args)]
pub struct Florence2Args {
    #[command(flatten)]
    pub model: ModelArgs<Precision>,
    #[command(flatten)]
    pub input: ImagesArgs,
    /// Task token, e.g. `<CAPTION>`, `<OD>`, `<OCR_WITH_REGION>`,
    /// `<CAPTION_TO_PHRASE_GROUNDING>` (which takes --text).
    #[arg(long, value_name = "TASK")]
    pub task: String,
    /// Text input of the tasks that take one (grounding, segmentation, region tasks).
    #[arg(long, value_name = "STR")]
    pub text: Option<String>,
    /// Most tokens to generate (default: 1024, or the model's position table if smaller).
    #[arg(short = 'n', long, value_name = "N")]
    pub max_new_tokens: Option<usize>,
    /// Beams of the beam search (1 with --no-repeat-ngram-size 0: greedy, argmax on the GPU).
    /// Default: the model's generation_config.json, else its text_config (Florence-2's: 3).
    #[arg(long, value_name = "N")]
    pub num_beams: Option<usize>,
    /// Ban tokens that would repeat an n-gram of this size (0: off). Default: the model's
    /// generation settings, as --num-beams (Florence-2's: 3).
    #[arg(long, value_name = "N")]
    pub no_repeat_ngram_size: Option<usize>,
    /// Draw the boxes, quads and polygons with their labels on the image and save it; the
    /// extension picks the format (.png, .jpg/.jpeg, .webp, .bmp). Checked before the run.
    #[arg(long, value_name = "OUT.png", conflicts_with = "images")]
    pub annotate: Option<PathBuf>,
}

/// The one-line summary of an answer, then one line per item.
fn describe(answer: &Answer) -> String {
    let fmt = |v: &[i32]| {
        let s: Vec<_> = v.iter().map(i32::to_string).collect();
        format!("[{}]", s.join(", "))
    };
    // "N what", then each label with its item's coordinates.
    let list = |what: &str, labels: &[String], coords: Vec<String>| {
        let mut out = format!("{} {what}", labels.len().min(coords.len()));
        for (label, c) in labels.iter().zip(coords) {
            out += &format!("\n  {label:?} {c}");
        }
        out
    };
    match answer {
        Answer::Text(t) => format!("answer: {t}"),
        Answer::Boxes { bboxes, labels } => {
            let coords = bboxes.iter().map(|b| fmt(b)).collect();
            list("boxes (x1, y1, x2, y2)", labels, coords)
        }
        Answer::Quads { quad_boxes, labels } => {
            let coords = quad_boxes.iter().map(|q| fmt(q)).collect();
            list("quads (x1, y1, …, x4, y4)", labels, coords)
        }
        Answer::Polygons { polygons, labels } => {
            let outlines = |p: &Vec<Vec<i32>>| p.iter().map(|p| fmt(p)).collect::<Vec<_>>();
            let coords = polygons.iter().map(|p| outlines(p).join(" ")).collect();
            list("instances (polygons of x, y)", labels, coords)
        }
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
    // Checked before the work, so a bad --annotate fails in a moment.
    let annotate = match (&args.annotate, &args.input.image) {
        (Some(path), Some(image)) => Some((path.as_path(), annotate::check(path, &[dir, image])?)),
        _ => None,
    };
    if fvl_wgpu::text::bart::takes_text(&args.task) == Some(true) && args.text.is_none() {
        return Err(fvl_wgpu::Error::input(format!(
            "task {} needs --text, e.g. --text \"a red car\"",
            args.task
        )));
    }
    let task = Task::new(&args.task, args.text.as_deref())?;
    let folder = Florence2Folder::open(dir)?;
    let opts = TaskOptions {
        max_new_tokens: args.max_new_tokens,
        num_beams: args.num_beams,
        no_repeat_ngram_size: args.no_repeat_ngram_size,
    };
    let plan = folder.plan(&task, &opts)?;

    let count = folder.tower_tensor_count();
    let (model, dtype, t_load) = args
        .model
        .load_model(count, |gpu, dtype, tick| folder.load(gpu, dtype, tick))?;

    let Some(image_path) = &args.input.image else {
        let cfg = model.preprocess_config().clone();
        let prepare = |p: &Path| load_image(p).map(|i| preprocess_image(&i, &cfg, false));
        return batch::run(&args.input.images, args.input.out.as_deref(), prepare, |image| {
            let out = model.run_plan(&image, &plan, &mut |_| true)?;
            Ok(serde_json::json!({"task": out.task, "text": out.text, "result": out.result}))
        });
    };
    let image = model.preprocess(ImageInput::Path(image_path))?;
    // The first step's callback ends the vision pass and the encoder.
    let mut vision = Some(phase("vision and encoder"));
    let mut decoding = None;
    let out = model.run_plan(&image, &plan, &mut |_| {
        if vision.take().is_some() {
            decoding = Some(phase("decoding"));
        }
        true
    })?;
    drop((vision, decoding));
    if let Some(target) = annotate {
        let _writing = phase(format!("drawing the answer on {}", target.0.display()));
        let original = load_image(image_path)?;
        annotate::draw(&original, &out.answer, target, &[image_path, dir])?;
    }
    if args.model.device.json {
        let summary = serde_json::json!({
            "task": out.task,
            "token_ids": out.token_ids,
            "text": out.text,
            "result": out.result,
        });
        println!("{summary}");
    } else {
        println!("{}", out.text);
        println!("{}", describe(&out.answer));
    }
    eprintln!(
        "{} tokens ({} precision): load {:.0} ms, run {:.0} ms",
        out.token_ids.len(),
        dtype.name(),
        t_load.as_secs_f64() * 1e3,
        out.vision_ms + out.decode_ms
    );
    Ok(())
}
