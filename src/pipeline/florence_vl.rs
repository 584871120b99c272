//! Florence-VL questions about an image (spec §7.3, §8.2): the vision path and the prompt
//! embeddings, prefill, then a streamed decode; [`Chat`] keeps the KV cache for follow-ups.

use std::path::Path;
use std::time::Instant;

use crate::gpu::{DType, Gpu, Graph, Tensor};
use crate::image::{preprocess_image, Preprocessed};
use crate::model::florence2::VisionTower;
use crate::model::florence_vl::{merged_positions, FlorenceVl as Model, IMAGE_PLACEHOLDER};
use crate::model::generate::{Pick, Prompt, Session, Stop};
use crate::Result;

use super::chat::{Dialogue, Opening};

use super::ImageInput;

/// A Florence-VL model on a GPU, ready to answer questions.
pub struct FlorenceVl {
    /// The GPU the model lives on.
    pub gpu: Gpu,
    /// The forward passes and their settings (e.g. `keep_mean_token`).
    pub model: Model,
}

/// How [`FlorenceVl::ask`] decodes.
#[derive(Clone, Debug)]
pub struct AskOptions {
    /// Most tokens in the answer.
    pub max_new_tokens: usize,
    /// Greedy or sampling (temperature, top-k, top-p).
    pub pick: Pick,
    /// Seed of the sampler, for reproducible draws.
    pub seed: u32,
}

impl Default for AskOptions {
    fn default() -> Self {
        AskOptions {
            max_new_tokens: 128,
            pick: Pick::Greedy,
            seed: 0,
        }
    }
}

/// An answer from [`FlorenceVl::ask`] with what it cost.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The decoded answer text.
    pub text: String,
    /// The answer's token ids (without the stop token).
    pub token_ids: Vec<u32>,
    /// Why decoding stopped.
    pub stopped: Stop,
    /// Prompt positions (text tokens plus image rows).
    pub prompt_positions: usize,
    /// Time of the vision pass and prompt embedding in ms (0 for follow-up turns).
    pub vision_ms: f64,
    /// Time of the prompt prefill in ms.
    pub prefill_ms: f64,
    /// Decode throughput in tokens per second.
    pub decode_tokens_per_s: f64,
    /// Oldest turns of the conversation dropped before this answer because the context was
    /// full (see [`Chat::ask`]); 0 almost always.
    pub dropped_turns: usize,
}

/// A conversation about one image: the KV cache keeps the image rows and every turn, so a
/// follow-up question only prefills its own tokens. When the context is full, the chat
/// drops its oldest turns and carries on ([`Chat::ask`]).
pub struct Chat<'m> {
    image: ImageOpening<'m>,
    dialogue: Dialogue<'m>,
}

/// A Florence-VL chat's opening: the system message and the image rows in the first user
/// turn.
struct ImageOpening<'m> {
    vl: &'m Model,
    gpu: &'m Gpu,
    seen: Seen,
}

impl FlorenceVl {
    /// Loads the LLaVA folder `dir` on `gpu`: the Llama weights as `quant` (F32, F16, Q8 or
    /// Q4), the vision side as f32 with F32, else f16 where the adapter has SHADER_F16.
    /// `bart_tokenizer` names a folder with the Florence-2 `tokenizer.json` for the encoder
    /// prompts (default: the tower's folder, else Florence-VL's hard-coded ids).
    pub fn load(
        gpu: Gpu,
        dir: &Path,
        quant: DType,
        bart_tokenizer: Option<&Path>,
    ) -> Result<FlorenceVl> {
        let model = Model::from_folder(&gpu, dir, quant, bart_tokenizer)?;
        Ok(FlorenceVl { gpu, model })
    }

    /// Decodes and preprocesses an image for this model (CPU only; may run on another
    /// thread while the GPU works).
    pub fn preprocess(&self, image: ImageInput) -> Result<Preprocessed> {
        let m = &self.model;
        Ok(preprocess_image(
            &image.decode()?,
            &m.preprocess,
            m.config.pad_to_square,
        ))
    }

    /// Answers `question` about `image`: vision path and prompt embeddings in one submit,
    /// prefill, then one submit per token. `on_text` gets each piece of text as it decodes;
    /// returning `false` cancels (the answer so far is returned, and the model stays ready
    /// for the next question).
    pub fn ask(
        &self,
        image: ImageInput,
        question: &str,
        opts: &AskOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Reply> {
        Ok(self.chat(image, question, opts, on_text)?.1)
    }

    /// [`FlorenceVl::ask`], keeping the conversation for follow-up questions
    /// ([`Chat::ask`]). The cache holds `tokenizer_model_max_length` positions.
    pub fn chat(
        &self,
        image: ImageInput,
        question: &str,
        opts: &AskOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<(Chat<'_>, Reply)> {
        let pre = self.preprocess(image)?;
        self.chat_preprocessed(&pre, question, opts, on_text)
    }

    /// [`FlorenceVl::chat`] on an image already preprocessed.
    pub fn chat_preprocessed(
        &self,
        pre: &Preprocessed,
        question: &str,
        opts: &AskOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<(Chat<'_>, Reply)> {
        let seen = self.see(pre)?;
        self.chat_seen(&seen, &[], question, opts, on_text)
    }

    /// Runs the vision path (tower, encoder on the three prompts, projector): the image rows
    /// a conversation starts from, reusable by any number of [`FlorenceVl::chat_seen`].
    pub fn see(&self, pre: &Preprocessed) -> Result<Seen> {
        let (gpu, m) = (&self.gpu, &self.model);
        let t = Instant::now();
        let pixels = VisionTower::pixels(gpu, pre)?;
        let mut g = Graph::new(gpu);
        let p = g.external(&pixels);
        let rows = m.image_rows(&mut g, p)?;
        // Waited for, so that the time is the vision pass's and a caller can tell when it
        // ends; overlapping it with tokenizing the question saved well under a millisecond.
        g.build()?.run(gpu, &[])?;
        Ok(Seen {
            rows,
            ms: t.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Starts a conversation on image rows from [`FlorenceVl::see`]: earlier `(question,
    /// answer)` turns (prefilled as given), then `question`, answered as in
    /// [`FlorenceVl::ask`].
    pub fn chat_seen(
        &self,
        seen: &Seen,
        turns: &[(String, String)],
        question: &str,
        opts: &AskOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<(Chat<'_>, Reply)> {
        let mut chat = self.open_chat(seen, opts)?;
        chat.dialogue.turns = turns.to_vec();
        let reply = chat.ask(question, opts, on_text)?;
        Ok((chat, reply))
    }

    /// A conversation on image rows from [`FlorenceVl::see`] with no question yet: every
    /// question goes to [`Chat::ask`]. The cache holds `tokenizer_model_max_length`
    /// positions; `opts` sets the sampler for the whole conversation.
    pub fn open_chat(&self, seen: &Seen, opts: &AskOptions) -> Result<Chat<'_>> {
        let m = &self.model;
        let session = Session::new(&self.gpu, &m.llama, m.config.max_length, opts.pick, opts.seed)?;
        Ok(Chat {
            image: ImageOpening {
                vl: m,
                gpu: &self.gpu,
                seen: seen.clone(),
            },
            dialogue: Dialogue::new(&m.tokenizer, session),
        })
    }
}

/// The image rows of one image (the projector's output), from [`FlorenceVl::see`]. Cloning
/// shares the rows.
#[derive(Clone)]
pub struct Seen {
    rows: Tensor,
    /// Time of the vision path in ms.
    ms: f64,
}

impl Chat<'_> {
    /// Answers `question` in this conversation: the first one with the system message and
    /// the image; a follow-up after the template's turn end closing the last answer
    /// (`<|eot_id|>`, Phi-3 `<|end|>\n`; a stop token that ended it stands for its part)
    /// and only those tokens are prefilled (spec §7.3).
    ///
    /// When the question and room for its answer (`max_new_tokens`, at most half the
    /// context) no longer fit, the oldest turns are dropped as llama.cpp's and ollama's chats
    /// do, keeping the system message and the image, and the rest is re-read
    /// ([`Reply::dropped_turns`] says how many). A question that can't fit even alone is an
    /// error and leaves the conversation as it was, as does any other input error.
    pub fn ask(
        &mut self,
        question: &str,
        opts: &AskOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Reply> {
        self.dialogue.ask(question, opts, on_text, &self.image)
    }

    /// The model's tokenizer (to check that an answer re-tokenizes to the same ids).
    pub fn tokenizer(&self) -> &crate::text::llama::LlamaTokenizer {
        &self.image.vl.tokenizer
    }

    /// Positions the conversation holds so far.
    pub fn position(&self) -> usize {
        self.dialogue.position()
    }
}

impl Opening for ImageOpening<'_> {
    fn context_source(&self) -> String {
        format!("tokenizer_model_max_length = {}", self.vl.config.max_length)
    }

    fn check_question(&self, question: &str) -> Result<()> {
        // The rule of the first question (conversation_ids) holds for every one.
        if question.contains(IMAGE_PLACEHOLDER) {
            self.vl.conversation_ids(&[], question)?;
        }
        Ok(())
    }

    fn positions(&self, turns: &[(String, String)], question: &str) -> Result<usize> {
        let ids = self.vl.conversation_ids(turns, question)?;
        Ok(merged_positions(&ids, self.seen.rows.shape()[0]))
    }

    fn with_prompt(
        &self,
        turns: &[(String, String)],
        question: &str,
        run: &mut dyn FnMut(Prompt, f64) -> Result<Reply>,
    ) -> Result<Reply> {
        let (vl, gpu) = (self.vl, self.gpu);
        let t = Instant::now();
        let ids = vl.conversation_ids(turns, question)?;
        let mut g = Graph::new(gpu);
        let projected = g.external(&self.seen.rows);
        let embeds = vl.embed_prompt(&mut g, &ids, projected)?;
        g.keep(embeds);
        let exe = g.build()?;
        exe.run(gpu, &[])?;
        // The first question also counts the vision pass, submitted just before.
        let first = if turns.is_empty() { self.seen.ms } else { 0.0 };
        let ms = t.elapsed().as_secs_f64() * 1e3 + first;
        run(Prompt::Embeddings(exe.tensor(embeds)), ms)
    }
}
