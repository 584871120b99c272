//! Florence-2's BART tokenizer and its task prompts (spec §5.4): a task token, with or without
//! text after it, becomes the encoder prompt as `Florence2Processor` builds it, and
//! [`BartTokenizer`] turns that into `<s> … </s>` ids; also Florence-VL's three encoder
//! prompts ([`FLORENCE_VL_TASKS`]). CPU only: no GPU, no model weights; the answers'
//! post-processing is `postprocess`'s.

use std::path::{Path, PathBuf};

use tokenizers::AddedToken;

use crate::error::{Error, Result};

/// Task token → encoder prompt; `{}` marks where a task's text input goes.
const TASKS: &[(&str, &str)] = &[
    ("<OCR>", "What is the text in the image?"),
    (
        "<OCR_WITH_REGION>",
        "What is the text in the image, with regions?",
    ),
    ("<CAPTION>", "What does the image describe?"),
    (
        "<DETAILED_CAPTION>",
        "Describe in detail what is shown in the image.",
    ),
    (
        "<MORE_DETAILED_CAPTION>",
        "Describe with a paragraph what is shown in the image.",
    ),
    (
        "<OD>",
        "Locate the objects with category name in the image.",
    ),
    (
        "<DENSE_REGION_CAPTION>",
        "Locate the objects in the image, with their descriptions.",
    ),
    (
        "<REGION_PROPOSAL>",
        "Locate the region proposals in the image.",
    ),
    (
        "<CAPTION_TO_PHRASE_GROUNDING>",
        "Locate the phrases in the caption: {}",
    ),
    (
        "<REFERRING_EXPRESSION_SEGMENTATION>",
        "Locate {} in the image with mask",
    ),
    (
        "<REGION_TO_SEGMENTATION>",
        "What is the polygon mask of region {}",
    ),
    ("<OPEN_VOCABULARY_DETECTION>", "Locate {} in the image."),
    ("<REGION_TO_CATEGORY>", "What is the region {}?"),
    (
        "<REGION_TO_DESCRIPTION>",
        "What does the region {} describe?",
    ),
    ("<REGION_TO_OCR>", "What text is in the region {}?"),
];

/// The task tokens, in the spec's order.
pub fn task_tokens() -> impl Iterator<Item = &'static str> {
    TASKS.iter().map(|t| t.0)
}

/// Whether task token `token` takes text after it (`Some(true)`), takes none (`Some(false)`),
/// or is unknown (`None`).
pub fn takes_text(token: &str) -> Option<bool> {
    TASKS
        .iter()
        .find(|t| t.0 == token)
        .map(|t| t.1.contains("{}"))
}

/// The encoder prompt for `text`: a task token alone (`<OD>`), or a task token that takes
/// text followed by it (`<CAPTION_TO_PHRASE_GROUNDING>a red car`). Text that does not start
/// with `<` is a free-form prompt and is used as it is.
pub fn prompt(text: &str) -> Result<String> {
    if !text.starts_with('<') {
        return Ok(text.to_string());
    }
    let token = text.find('>').map_or(text, |end| &text[..=end]);
    let input = &text[token.len()..];
    let Some(&(_, template)) = TASKS.iter().find(|t| t.0 == token) else {
        let known: Vec<_> = task_tokens().collect();
        return Err(Error::input(format!(
            "unknown task {token}; known tasks: {}",
            known.join(" ")
        )));
    };
    match (template.contains("{}"), input.is_empty()) {
        (true, false) => Ok(template.replace("{}", input)),
        (true, true) => Err(Error::input(format!(
            "task {token} needs text after it, e.g. {token}a red car"
        ))),
        (false, true) => Ok(template.to_string()),
        (false, false) => Err(Error::input(format!(
            "task {token} takes no text, got {input:?} after it"
        ))),
    }
}

/// Florence-VL's three prompts (spec §6.1), in the order their encoder outputs are fused:
/// detailed caption, OCR, dense region caption.
pub const FLORENCE_VL_TASKS: [&str; 3] = ["<DETAILED_CAPTION>", "<OCR>", "<DENSE_REGION_CAPTION>"];

/// The tokens Florence-2's processor adds after BART's vocabulary, in its order.
fn florence2_added_tokens() -> Vec<String> {
    let head = ["<od>", "</od>", "<ocr>", "</ocr>"].map(String::from);
    let locs = (0..1000).map(|k| format!("<loc_{k}>"));
    let tail = [
        "<cap>",
        "</cap>",
        "<ncap>",
        "</ncap>",
        "<dcap>",
        "</dcap>",
        "<grounding>",
        "</grounding>",
        "<seg>",
        "</seg>",
        "<sep>",
        "<region_cap>",
        "</region_cap>",
        "<region_to_desciption>",
        "</region_to_desciption>",
        "<proposal>",
        "</proposal>",
        "<poly>",
        "</poly>",
        "<and>",
    ]
    .map(String::from);
    head.into_iter().chain(locs).chain(tail).collect()
}

/// The BART byte-level BPE tokenizer of a Florence-2 model folder (`tokenizer.json`).
pub struct BartTokenizer {
    inner: tokenizers::Tokenizer,
    /// The file it came from, for messages.
    path: PathBuf,
    /// Whether Florence-2's tokens were added here (the files are bare BART, as Microsoft's).
    added_florence: bool,
    /// Rows of the model's embedding table once [`BartTokenizer::check_vocab`] has seen it: every
    /// encoded id must be below.
    rows: Option<usize>,
}

impl BartTokenizer {
    /// Loads `dir/tokenizer.json`, or else the slow-tokenizer files `vocab.json` +
    /// `merges.txt` (+ `added_tokens.json`), as BART's byte-level BPE. When the files lack
    /// Florence-2's tokens (Microsoft's repos ship plain BART), they are added after the
    /// vocabulary in the order Florence-2's processor adds them (spec §5.1).
    pub fn open(dir: impl AsRef<Path>) -> Result<BartTokenizer> {
        let dir = dir.as_ref();
        let path = dir.join("tokenizer.json");
        let (mut inner, path) = if !path.exists() && dir.join("vocab.json").exists() {
            (
                BartTokenizer::from_vocab_and_merges(dir)?,
                dir.join("vocab.json"),
            )
        } else {
            let inner = tokenizers::Tokenizer::from_file(&path)
                .map_err(|e| Error::file(&path, e.to_string()))?;
            (inner, path)
        };
        let added_florence = inner.token_to_id("<loc_0>").is_none();
        if added_florence {
            let tokens: Vec<AddedToken> = florence2_added_tokens()
                .into_iter()
                .map(|t| AddedToken::from(t, true))
                .collect();
            inner
                .add_special_tokens(tokens)
                .map_err(|e| Error::file(&path, format!("adding Florence-2's tokens: {e}")))?;
        }
        Ok(BartTokenizer {
            inner,
            path,
            added_florence,
            rows: None,
        })
    }

    /// Checks the tokenizer against the model's vocabulary (`text_config.vocab_size`): when
    /// Florence-2's tokens were added here, the two must be equal, or the generated ids would
    /// decode to the wrong tokens.
    ///
    /// Any tokenizer whose ids reach past the embedding table's rows belongs to another
    /// vocabulary and is refused, except for the `<image>` token HF-native tokenizers add
    /// (no prompt or answer holds it; [`BartTokenizer::encode`] refuses it anyway).
    pub fn check_vocab(mut self, vocab_size: usize) -> Result<BartTokenizer> {
        let n = self.inner.get_vocab_size(true);
        if self.added_florence && n != vocab_size {
            return Err(Error::file(
                &self.path,
                format!(
                    "{n} tokens once Florence-2's 1024 are added, but the model's vocabulary (text_config.vocab_size) is {vocab_size}"
                ),
            ));
        }
        let top = self
            .inner
            .get_vocab(true)
            .into_iter()
            .filter(|(t, _)| t != "<image>")
            .map(|(_, id)| id as usize + 1)
            .max()
            .unwrap_or(0);
        if top > vocab_size {
            return Err(Error::file(
                &self.path,
                format!(
                    "token ids run to {}, but the model's embedding table has {vocab_size} rows: this tokenizer belongs to another vocabulary",
                    top - 1
                ),
            ));
        }
        self.rows = Some(vocab_size);
        Ok(self)
    }

    /// The number of tokens, added ones included.
    pub fn len(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// True for a tokenizer without tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// BART's tokenizer from `vocab.json` and `merges.txt`: byte-level pre-tokenizer and
    /// decoder, `<s> … </s>` around each text, the tokens of `added_tokens.json` (if any)
    /// after the vocabulary.
    fn from_vocab_and_merges(dir: &Path) -> Result<tokenizers::Tokenizer> {
        use tokenizers::models::bpe::BPE;
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        use tokenizers::processors::roberta::RobertaProcessing;
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
            .build()
            .map_err(|e| Error::file(&merges, format!("with vocab.json: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
        inner.with_decoder(Some(ByteLevel::default()));
        let roberta = RobertaProcessing::new(("</s>".into(), 2), ("<s>".into(), 0));
        inner.with_post_processor(Some(roberta.add_prefix_space(false)));
        let added_path = dir.join("added_tokens.json");
        if added_path.exists() {
            let text = std::fs::read_to_string(&added_path)
                .map_err(|e| Error::file(&added_path, e.to_string()))?;
            let map: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&text).map_err(|e| Error::file(&added_path, e.to_string()))?;
            let mut by_id: Vec<(u64, String)> = map
                .into_iter()
                .map(|(t, id)| (id.as_u64().unwrap_or(u64::MAX), t))
                .collect();
            by_id.sort();
            let tokens: Vec<AddedToken> = by_id
                .into_iter()
                .map(|(_, t)| AddedToken::from(t, true))
                .collect();
            inner
                .add_special_tokens(tokens)
                .map_err(|e| Error::file(&added_path, e.to_string()))?;
        }
        Ok(inner)
    }

    /// Token ids of `text` with `<s>` … `</s>` added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| Error::input(format!("tokenizing {text:?}: {e}")))?;
        let ids = enc.get_ids();
        if let Some(rows) = self.rows {
            if let Some(&bad) = ids.iter().find(|&&id| id as usize >= rows) {
                let token = self.inner.id_to_token(bad).unwrap_or_default();
                return Err(Error::input(format!(
                    "{text:?} holds the token {token:?} (id {bad}), outside the model's embedding table of {rows} rows"
                )));
            }
        }
        Ok(ids.to_vec())
    }

    /// The encoder prompt ids for a task (see [`prompt`]).
    pub fn encode_task(&self, text: &str) -> Result<Vec<u32>> {
        self.encode(&prompt(text)?)
    }

    /// [`FLORENCE_VL_TASKS`] tokenized (with `<s>`/`</s>`) and right-padded with `pad` to the
    /// longest, as Florence-VL feeds them (no attention mask): `([3·L] row-major, L)`. With the
    /// real BART tokenizer these are the 14-long ids Florence-VL hard-codes.
    pub fn florence_vl_prompts(&self, pad: u32) -> Result<(Vec<u32>, usize)> {
        let prompts = FLORENCE_VL_TASKS
            .iter()
            .map(|t| self.encode_task(t))
            .collect::<Result<Vec<_>>>()?;
        let len = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let ids = prompts.into_iter().flat_map(|mut p| {
            p.resize(len, pad);
            p
        });
        Ok((ids.collect(), len))
    }

    /// Text of `ids`, special tokens (`<s>`, `<loc_k>`, …) kept, as Florence-2's
    /// post-processing expects.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::input(format!("decoding {} ids: {e}", ids.len())))
    }
}
