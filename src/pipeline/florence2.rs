//! Florence-2 tasks on one image (spec §5.5): preprocessing, vision tower, BART encoder, beam
//! search or greedy decoding, and post-processing into typed answers.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::Value;

use crate::gpu::{DType, Gpu, Graph, Tensor};
use crate::image::{preprocess_image, PreprocessConfig, Preprocessed};
use crate::model::bart::Bart;
use crate::model::beam::BeamOptions;
use crate::model::florence2::VisionTower;
use crate::postprocess::{Answer, PostProcessor};
use crate::text::bart::{prompt, task_tokens, BartTokenizer};
use crate::weights::florence2::Florence2Checkpoint;
use crate::{Error, Result, Setting};

use super::ImageInput;

/// Most beams a search runs: the cost of a step (decoder passes, cache, the CPU's selection)
/// grows with each, and far below this the answers stop changing.
pub const MAX_BEAMS: usize = 64;

/// Generation length when [`TaskOptions::max_new_tokens`] is not given (capped by the
/// position table).
pub const DEFAULT_MAX_NEW_TOKENS: usize = 1024;

/// A Florence-2 task: its token (`<OD>`, `<CAPTION>`, …) and, for the tasks that take one,
/// its text (a phrase to ground, a region).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    token: String,
    text: Option<String>,
}

impl Task {
    /// Checks `token` against the known tasks and `text` against what the task takes.
    pub fn new(token: &str, text: Option<&str>) -> Result<Task> {
        if !task_tokens().any(|t| t == token) {
            let known: Vec<_> = task_tokens().collect();
            return Err(Error::input(format!(
                "unknown task {token:?}; known tasks: {}",
                known.join(" ")
            )));
        }
        let task = Task {
            token: token.to_string(),
            text: text.map(str::to_string),
        };
        prompt(&task.prompt())?;
        Ok(task)
    }

    /// The task token, e.g. `<OD>`.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The task's text input, if any.
    pub fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }

    /// Token and text as one string, the form the tokenizer and post-processor take.
    fn prompt(&self) -> String {
        format!("{}{}", self.token, self.text.as_deref().unwrap_or(""))
    }
}

/// How [`Florence2::run`] decodes.
#[derive(Clone, Debug)]
pub struct TaskOptions {
    /// Most tokens to generate (default: [`DEFAULT_MAX_NEW_TOKENS`], or the model's position
    /// table if smaller).
    pub max_new_tokens: Option<usize>,
    /// Beams of the beam search; 1 with `no_repeat_ngram_size` 0 is greedy with the argmax
    /// on the GPU (and streams text). Default: the model's `generation_config.json`, else its
    /// `text_config`, as transformers reads them.
    pub num_beams: Option<usize>,
    /// Ban tokens that would repeat an n-gram of this size (0: off). Default: as `num_beams`.
    pub no_repeat_ngram_size: Option<usize>,
}

impl Default for TaskOptions {
    /// Every setting from the model's own configs.
    fn default() -> Self {
        TaskOptions {
            max_new_tokens: None,
            num_beams: None,
            no_repeat_ngram_size: None,
        }
    }
}

/// A task checked against a model folder: its prompt ids and decoding length. Made by
/// [`Florence2Folder::plan`] before any GPU work.
#[derive(Clone, Debug)]
pub struct Plan {
    task: Task,
    prompt: Vec<u32>,
    max_new: usize,
    num_beams: usize,
    no_repeat_ngram_size: usize,
}

impl Plan {
    /// Tokens in the task's prompt.
    pub fn prompt_len(&self) -> usize {
        self.prompt.len()
    }
}

/// What [`Florence2::run`] produced.
#[derive(Clone, Debug)]
pub struct TaskOutput {
    /// The task token.
    pub task: String,
    /// The decoder's ids, start token first.
    pub token_ids: Vec<u32>,
    /// The ids decoded with special tokens kept (`<loc_k>`, `</s>`, …).
    pub text: String,
    /// The typed answer: text, boxes, quads or polygons in original-image pixels.
    pub answer: Answer,
    /// The answer as HF's `post_process_generation` returns it: `{task: …}`.
    pub result: Value,
    /// The original image's (width, height).
    pub image_size: (u32, u32),
    /// Whether the callback stopped decoding early.
    pub cancelled: bool,
    /// Image rows the encoder saw before the prompt.
    pub image_tokens: usize,
    /// Time of the vision tower in ms.
    pub vision_ms: f64,
    /// Time of encoder and decoding in ms.
    pub decode_ms: f64,
}

/// A Florence-2 model folder read on the CPU: checkpoint index and configs, tokenizer,
/// post-processing and preprocessing settings. Lets a caller check a task before opening a
/// GPU.
pub struct Florence2Folder {
    dir: PathBuf,
    ck: Florence2Checkpoint,
    tokenizer: BartTokenizer,
    post: PostProcessor,
    preprocess: PreprocessConfig,
}

impl Florence2Folder {
    /// Reads the folder's configs and tokenizer (no weights yet).
    pub fn open(dir: &Path) -> Result<Florence2Folder> {
        // A Florence-VL folder's tokenizer and processor configs are its tower's.
        let ck = Florence2Checkpoint::open(dir)?;
        let home = ck.config_dir().to_path_buf();
        Ok(Florence2Folder {
            dir: dir.to_path_buf(),
            tokenizer: BartTokenizer::open(&home)?.check_vocab(ck.text().vocab_size)?,
            post: PostProcessor::for_model(&home)?,
            preprocess: PreprocessConfig::from_dir_or_default(&home)?,
            ck,
        })
    }

    /// Tokenizes the task's prompt and checks it and the decoding length against the
    /// position table.
    pub fn plan(&self, task: &Task, opts: &TaskOptions) -> Result<Plan> {
        let positions = self.ck.text().max_position_embeddings;
        let prompt = self.tokenizer.encode_task(&task.prompt())?;
        if prompt.len() >= positions {
            return Err(Error::input(format!(
                "the prompt is {} tokens; with the image tokens it must fit the model's {positions} positions",
                prompt.len()
            )));
        }
        let defaults = &self.ck.text().generation;
        let num_beams = opts.num_beams.unwrap_or(defaults.num_beams);
        if num_beams == 0 {
            return Err(Error::setting(Setting::NumBeams, "", " 0: at least one beam"));
        }
        let most = MAX_BEAMS.min(self.ck.text().vocab_size);
        if num_beams > most {
            return Err(Error::setting(Setting::NumBeams, "", format!(
                " {num_beams}: at most {most} (each beam is a whole decoder pass and cache per step, and beams past the vocabulary's size can only repeat; Florence-2 uses 3)"
            )));
        }
        let max_new = opts
            .max_new_tokens
            .unwrap_or(DEFAULT_MAX_NEW_TOKENS.min(positions));
        if max_new == 0 || max_new > positions {
            return Err(Error::setting(Setting::MaxNewTokens, "", format!(
                " {max_new}: must be 1..={positions} (the model's position table)"
            )));
        }
        Ok(Plan {
            task: task.clone(),
            prompt,
            max_new,
            num_beams,
            no_repeat_ngram_size: opts
                .no_repeat_ngram_size
                .unwrap_or(defaults.no_repeat_ngram_size),
        })
    }

    /// Tensors the vision tower loads (for a progress bar).
    pub fn tower_tensor_count(&self) -> usize {
        VisionTower::tensor_count(self.ck.vision())
    }

    /// Loads the weights on `gpu` as `dtype`; `on_tensor` ticks once per vision-tower tensor.
    pub fn load(self, gpu: Gpu, dtype: DType, on_tensor: &dyn Fn()) -> Result<Florence2> {
        let tower = VisionTower::from_checkpoint(&gpu, &self.ck, dtype, on_tensor)?;
        let bart = Bart::from_checkpoint(&gpu, &self.ck, dtype)?;
        Ok(Florence2 {
            gpu,
            folder: self,
            tower,
            bart,
            dtype,
        })
    }
}

/// A Florence-2 model on a GPU, ready to run tasks.
pub struct Florence2 {
    /// The GPU the model lives on.
    pub gpu: Gpu,
    folder: Florence2Folder,
    tower: VisionTower,
    bart: Bart,
    dtype: DType,
}

impl Florence2 {
    /// Loads the model folder `dir` on `gpu` with weights as `dtype`.
    pub fn load(gpu: Gpu, dir: &Path, dtype: DType) -> Result<Florence2> {
        Florence2Folder::open(dir)?.load(gpu, dtype, &|| {})
    }

    /// The weight precision.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The model folder.
    pub fn dir(&self) -> &Path {
        &self.folder.dir
    }

    /// How images are resized and normalised for this model.
    pub fn preprocess_config(&self) -> &PreprocessConfig {
        &self.folder.preprocess
    }

    /// [`Florence2Folder::plan`] for this model.
    pub fn plan(&self, task: &Task, opts: &TaskOptions) -> Result<Plan> {
        self.folder.plan(task, opts)
    }

    /// Decodes and preprocesses an image for this model (CPU only; may run on another
    /// thread while the GPU works on the previous image).
    pub fn preprocess(&self, image: ImageInput) -> Result<Preprocessed> {
        Ok(preprocess_image(
            &image.decode()?,
            &self.folder.preprocess,
            false,
        ))
    }

    /// Runs `task` on `image`. `on_text` gets the answer's text as it decodes (greedy: piece
    /// by piece; beam search: an empty piece each step, the text being known only at the
    /// end); returning `false` stops decoding and the answer so far is post-processed.
    pub fn run(
        &self,
        image: ImageInput,
        task: &Task,
        opts: &TaskOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<TaskOutput> {
        let plan = self.plan(task, opts)?;
        let image = self.preprocess(image)?;
        self.run_plan(&image, &plan, on_text)
    }

    /// [`Florence2::run`] on an image already preprocessed and a task already planned.
    pub fn run_plan(
        &self,
        image: &Preprocessed,
        plan: &Plan,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<TaskOutput> {
        let gpu = &self.gpu;
        let t0 = Instant::now();
        let pixels = VisionTower::pixels(gpu, image)?;
        let mut g = Graph::new(gpu);
        let p = g.external(&pixels);
        let out = self.tower.forward(&mut g, p)?;
        g.keep(out.features);
        let exe = g.build()?;
        exe.run(gpu, &[])?;
        let features = exe.tensor(out.features);
        let image_tokens = features.shape()[0];
        let vision_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t1 = Instant::now();
        let ids = self.decode(features, plan, on_text)?;
        let (ids, cancelled) = (ids.0, ids.1);
        let decode_ms = t1.elapsed().as_secs_f64() * 1e3;

        let prompt = plan.task.prompt();
        let text = self.folder.tokenizer.decode(&ids)?;
        let (w, h) = image.original_size;
        let size = (w as u32, h as u32);
        Ok(TaskOutput {
            task: plan.task.token.clone(),
            answer: self.folder.post.parse(&prompt, &text, size),
            result: self.folder.post.parse_json(&prompt, &text, size),
            token_ids: ids,
            text,
            image_size: size,
            cancelled,
            image_tokens,
            vision_ms,
            decode_ms,
        })
    }

    /// Greedy (streaming text) or beam search over V; returns the ids and whether `on_text`
    /// cancelled.
    fn decode(
        &self,
        features: &Tensor,
        plan: &Plan,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<(Vec<u32>, bool)> {
        let n_image = features.shape()[0];
        let positions = self.bart.cfg.max_position_embeddings;
        if n_image + plan.prompt.len() > positions {
            return Err(Error::setting(
                Setting::TaskText,
                format!(
                    "{n_image} image tokens and a {}-token prompt exceed the model's {positions} positions; shorten ",
                    plan.prompt.len()
                ),
                "",
            ));
        }
        let mut cancelled = false;
        let ids = if plan.num_beams == 1 && plan.no_repeat_ngram_size == 0 {
            let tok = &self.folder.tokenizer;
            let mut shown = String::new();
            let mut failed = None;
            let ids = self.bart.greedy_with(
                &self.gpu,
                features,
                &plan.prompt,
                plan.max_new,
                &mut |seq| {
                    let text = match tok.decode(seq) {
                        Ok(t) => t,
                        Err(e) => {
                            failed = Some(e);
                            return false;
                        }
                    };
                    // Hold back a piece that ends inside a multi-byte character (or that
                    // rewrote the text shown so far).
                    if text.ends_with('\u{FFFD}') || !text.starts_with(shown.as_str()) {
                        return true;
                    }
                    let go = on_text(&text[shown.len()..]);
                    shown = text;
                    cancelled = !go;
                    go
                },
            )?;
            if let Some(e) = failed {
                return Err(e);
            }
            ids
        } else {
            let opts = BeamOptions {
                num_beams: plan.num_beams,
                no_repeat_ngram_size: plan.no_repeat_ngram_size,
                max_new_tokens: plan.max_new,
                early_stopping: self.folder.ck.text().generation.early_stopping,
                length_penalty: 1.0,
            };
            self.bart
                .beam_search_with(&self.gpu, features, &plan.prompt, &opts, &mut |_| {
                    cancelled = !on_text("");
                    !cancelled
                })?
        };
        Ok((ids, cancelled))
    }
}
