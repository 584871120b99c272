//! Florence-2 post-processing (spec §5.5): generated text (decoded with special tokens kept)
//! becomes a task's answer — plain text, boxes, OCR quads or polygons — with `<loc_k>` bins
//! mapped back to pixels of the *original* image.
//!
//! The answers equal HF's `Florence2Processor.post_process_generation` (transformers 5.x),
//! including its quirks: HF finds phrases with regular expressions over the text, so a label
//! can hold fragments of tokens (`loc_618> does`), a label that spans a newline is dropped, and
//! coordinates are truncated to integers. The expressions are small enough to run by hand here
//! (`<loc_N>` tokens, `<poly>`, `<sep>`, text runs), matching them position by position as
//! Python's `re` does, with no regex engine. Digits in `<loc_N>` are ASCII only (Python's `\d`
//! would also take other Unicode decimal digits).
//!
//! Owns: text → typed answer, and nothing upstream of the text. Must not touch: the GPU,
//! tokenizers (it gets decoded text), images (it gets the original size only).

use std::collections::HashSet;
use std::path::Path;

use serde_json::{json, Value};

use crate::error::{Error, Result};

/// How a task's answer is parsed (HF's `tasks_answer_post_processing_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerKind {
    /// `<s>`/`</s>` removed, whitespace trimmed: captions, `<OCR>`, region-to-text tasks and
    /// any task not in the table.
    PureText,
    /// A label then ≥4 `<loc_N>`; every 4 locs one box (`<OD>`, `<DENSE_REGION_CAPTION>`).
    DescriptionWithBboxes,
    /// As [`AnswerKind::DescriptionWithBboxes`] with empty labels allowed (`<REGION_PROPOSAL>`).
    Bboxes,
    /// Text then 8 locs: a quadrilateral (`<OCR_WITH_REGION>`).
    Ocr,
    /// As [`AnswerKind::DescriptionWithBboxes`], skipping blacklisted phrases
    /// (`<CAPTION_TO_PHRASE_GROUNDING>`).
    PhraseGrounding,
    /// `<poly>…</poly>` instances of `<sep>`-separated loc runs (`<REFERRING_EXPRESSION_SEGMENTATION>`,
    /// `<REGION_TO_SEGMENTATION>`).
    Polygons,
    /// Polygons when the text holds `<poly>`, else boxes (`<OPEN_VOCABULARY_DETECTION>`).
    BboxesOrPolygons,
}

impl AnswerKind {
    /// The parsing for a task token such as `<OD>` (text after the token is ignored).
    pub fn of_task(task: &str) -> AnswerKind {
        let token = task.find('>').map_or(task, |end| &task[..=end]);
        match token {
            "<OCR_WITH_REGION>" => AnswerKind::Ocr,
            "<OD>" | "<DENSE_REGION_CAPTION>" => AnswerKind::DescriptionWithBboxes,
            "<CAPTION_TO_PHRASE_GROUNDING>" => AnswerKind::PhraseGrounding,
            "<REFERRING_EXPRESSION_SEGMENTATION>" | "<REGION_TO_SEGMENTATION>" => {
                AnswerKind::Polygons
            }
            "<OPEN_VOCABULARY_DETECTION>" => AnswerKind::BboxesOrPolygons,
            "<REGION_PROPOSAL>" => AnswerKind::Bboxes,
            _ => AnswerKind::PureText,
        }
    }
}

/// A parsed answer. Coordinates are pixels of the original image, truncated to integers as
/// HF does: boxes `[x1, y1, x2, y2]`, quads `[x1, y1, …, x4, y4]`, polygons flat `[x, y, …]`.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// [`AnswerKind::PureText`].
    Text(String),
    /// Boxes with one label each (a label repeats for each of its boxes).
    Boxes {
        /// Boxes `[x1, y1, x2, y2]`.
        bboxes: Vec<[i32; 4]>,
        /// One label per box.
        labels: Vec<String>,
    },
    /// OCR quads with their text.
    Quads {
        /// Quads `[x1, y1, …, x4, y4]`.
        quad_boxes: Vec<[i32; 8]>,
        /// The text read in each quad.
        labels: Vec<String>,
    },
    /// One entry per instance: its polygons and its label.
    Polygons {
        /// Per instance, its polygons (each flat `[x, y, …]`).
        polygons: Vec<Vec<Vec<i32>>>,
        /// One label per instance.
        labels: Vec<String>,
    },
    /// `<OPEN_VOCABULARY_DETECTION>`: boxes and polygons, each with labels (one side empty).
    BoxesOrPolygons {
        /// Boxes `[x1, y1, x2, y2]`.
        bboxes: Vec<[i32; 4]>,
        /// One label per box.
        bboxes_labels: Vec<String>,
        /// Per instance, its polygons (each flat `[x, y, …]`).
        polygons: Vec<Vec<Vec<i32>>>,
        /// One label per polygon instance.
        polygons_labels: Vec<String>,
    },
}

impl Answer {
    /// The answer as HF's processor returns it (without the task key).
    pub fn to_json(&self) -> Value {
        match self {
            Answer::Text(t) => json!(t),
            Answer::Boxes { bboxes, labels } => json!({"bboxes": bboxes, "labels": labels}),
            Answer::Quads { quad_boxes, labels } => {
                json!({"quad_boxes": quad_boxes, "labels": labels})
            }
            Answer::Polygons { polygons, labels } => {
                json!({"polygons": polygons, "labels": labels})
            }
            Answer::BoxesOrPolygons {
                bboxes,
                bboxes_labels,
                polygons,
                polygons_labels,
            } => json!({
                "bboxes": bboxes,
                "bboxes_labels": bboxes_labels,
                "polygons": polygons,
                "polygons_labels": polygons_labels,
            }),
        }
    }
}

/// Microsoft's phrase-grounding blacklist (pronouns and generic words), as Florence-2's
/// `processor_config.json` ships it.
pub const BANNED_GROUNDING_PHRASES: &[&str] = &[
    "it",
    "I",
    "me",
    "mine",
    "you",
    "your",
    "yours",
    "he",
    "him",
    "his",
    "she",
    "her",
    "hers",
    "they",
    "them",
    "their",
    "theirs",
    "one",
    "oneself",
    "we",
    "us",
    "our",
    "ours",
    "its",
    "myself",
    "yourself",
    "himself",
    "herself",
    "itself",
    "ourselves",
    "yourselves",
    "themselves",
    "this",
    "that",
    "these",
    "those",
    "who",
    "whom",
    "whose",
    "which",
    "what",
    "all",
    "another",
    "any",
    "anybody",
    "anyone",
    "anything",
    "each",
    "everybody",
    "everyone",
    "everything",
    "few",
    "many",
    "nobody",
    "none",
    "several",
    "some",
    "somebody",
    "someone",
    "something",
    "each other",
    "one another",
    "the image",
    "image",
    "images",
    "the",
    "a",
    "an",
    "a group",
    "other objects",
    "lots",
    "a set",
];

/// Florence-2's post-processor; holds the phrase-grounding blacklist.
#[derive(Clone, Debug)]
pub struct PostProcessor {
    banned: HashSet<String>,
}

impl Default for PostProcessor {
    /// With [`BANNED_GROUNDING_PHRASES`].
    fn default() -> Self {
        PostProcessor::new(BANNED_GROUNDING_PHRASES.iter().map(|s| s.to_string()))
    }
}

impl PostProcessor {
    /// A post-processor that skips grounded phrases in `banned`.
    pub fn new(banned: impl IntoIterator<Item = String>) -> PostProcessor {
        PostProcessor {
            banned: banned.into_iter().collect(),
        }
    }

    /// The post-processor a model folder configures: the blacklist of
    /// `processor_config.json`'s `post_processor_config.phrase_grounding
    /// .banned_grounding_tokens` where the file has it, else [`PostProcessor::default`].
    pub fn for_model(dir: &Path) -> Result<PostProcessor> {
        let path = dir.join("processor_config.json");
        if !path.exists() {
            return Ok(PostProcessor::default());
        }
        let file_err = |msg: String| Error::File {
            path: path.display().to_string(),
            msg,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| file_err(e.to_string()))?;
        let cfg: Value = serde_json::from_str(&text).map_err(|e| file_err(e.to_string()))?;
        let list = &cfg["post_processor_config"]["phrase_grounding"]["banned_grounding_tokens"];
        match list.as_array() {
            None => Ok(PostProcessor::default()),
            Some(items) => items
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_string).ok_or_else(|| {
                        file_err(format!("banned_grounding_tokens holds a non-string {v}"))
                    })
                })
                .collect::<Result<Vec<_>>>()
                .map(PostProcessor::new),
        }
    }

    /// Parses `text` (generated ids decoded with special tokens kept) for `task`, with boxes
    /// scaled to the original image size `(width, height)`.
    pub fn parse(&self, task: &str, text: &str, size: (u32, u32)) -> Answer {
        let bins = Bins::new(size);
        match AnswerKind::of_task(task) {
            AnswerKind::PureText => {
                Answer::Text(py_strip(&text.replace("<s>", "").replace("</s>", "")).to_string())
            }
            AnswerKind::DescriptionWithBboxes => boxes_answer(parse_bboxes(text, false, &bins)),
            AnswerKind::Bboxes => boxes_answer(parse_bboxes(text, true, &bins)),
            AnswerKind::PhraseGrounding => {
                let mut found = parse_bboxes(text, false, &bins);
                found.retain(|(phrase, _)| !self.banned.contains(phrase));
                boxes_answer(found)
            }
            AnswerKind::Ocr => {
                let (quad_boxes, labels) = parse_ocr(text, &bins).into_iter().unzip();
                Answer::Quads { quad_boxes, labels }
            }
            AnswerKind::Polygons => {
                let (labels, polygons) = parse_polygons(text, true, &bins).into_iter().unzip();
                Answer::Polygons { polygons, labels }
            }
            AnswerKind::BboxesOrPolygons if text.contains("<poly>") => {
                let (polygons_labels, polygons) =
                    parse_polygons(text, false, &bins).into_iter().unzip();
                Answer::BoxesOrPolygons {
                    bboxes: vec![],
                    bboxes_labels: vec![],
                    polygons,
                    polygons_labels,
                }
            }
            AnswerKind::BboxesOrPolygons => {
                let (bboxes, bboxes_labels) = flatten_boxes(parse_bboxes(text, false, &bins));
                Answer::BoxesOrPolygons {
                    bboxes,
                    bboxes_labels,
                    polygons: vec![],
                    polygons_labels: vec![],
                }
            }
        }
    }

    /// [`PostProcessor::parse`] as HF returns it: `{task_token: answer}`.
    pub fn parse_json(&self, task: &str, text: &str, size: (u32, u32)) -> Value {
        let token = task.find('>').map_or(task, |end| &task[..=end]);
        json!({ token: self.parse(task, text, size).to_json() })
    }
}

/// Dequantisation (spec §5.5): bin `k` → `(k + 0.5) · size / 1000`, in f32 as torch computes
/// it, truncated to an integer.
struct Bins {
    per_bin: [f32; 2],
}

impl Bins {
    fn new((w, h): (u32, u32)) -> Bins {
        Bins {
            per_bin: [(w as f64 / 1000.0) as f32, (h as f64 / 1000.0) as f32],
        }
    }

    /// Coordinate of `bin` on `axis` (0 = x, 1 = y).
    fn at(&self, bin: u64, axis: usize) -> i32 {
        ((bin as f32 + 0.5) * self.per_bin[axis]) as i32
    }

    /// Alternating x, y bins → pixels.
    fn points(&self, bins: &[u64]) -> Vec<i32> {
        bins.iter()
            .enumerate()
            .map(|(i, &b)| self.at(b, i % 2))
            .collect()
    }
}

/// One (box, label) pair per box, in order.
fn flatten_boxes(found: Vec<(String, Vec<[i32; 4]>)>) -> (Vec<[i32; 4]>, Vec<String>) {
    found
        .into_iter()
        .flat_map(|(phrase, boxes)| boxes.into_iter().map(move |b| (b, phrase.clone())))
        .unzip()
}

fn boxes_answer(found: Vec<(String, Vec<[i32; 4]>)>) -> Answer {
    let (bboxes, labels) = flatten_boxes(found);
    Answer::Boxes { bboxes, labels }
}

/// Python's `str.isspace` (also `\s` in `re`): Unicode White_Space plus U+001C..U+001F.
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()`.
fn py_strip(s: &str) -> &str {
    s.trim_matches(py_space)
}

/// `text` without `<s>`, `</s>`, `<pad>` (removed in that order, as HF does).
fn strip_specials(text: &str) -> Vec<char> {
    text.replace("<s>", "")
        .replace("</s>", "")
        .replace("<pad>", "")
        .chars()
        .collect()
}

/// Whether `pat` occurs in `t` at `i`.
fn starts(t: &[char], i: usize, pat: &str) -> bool {
    (i..).zip(pat.chars()).all(|(j, p)| t.get(j) == Some(&p))
}

/// `<loc_(\d+)>` at `i`: (bin, end).
fn loc_at(t: &[char], i: usize) -> Option<(u64, usize)> {
    if !starts(t, i, "<loc_") {
        return None;
    }
    let digits = t[i + 5..].iter().take_while(|c| c.is_ascii_digit()).count();
    let end = i + 5 + digits;
    if digits == 0 || t.get(end) != Some(&'>') {
        return None;
    }
    let bin = t[i + 5..end].iter().fold(0u64, |acc, c| {
        acc.saturating_mul(10)
            .saturating_add(c.to_digit(10).unwrap_or(0) as u64)
    });
    Some((bin, end + 1))
}

/// One token of the phrase-finding patterns at `i`: `<loc_\d+>`, or with `poly` also
/// `<sep>`, `<poly>`, `</poly>`. Returns its end.
fn token_at(t: &[char], i: usize, poly: bool) -> Option<usize> {
    if let Some((_, end)) = loc_at(t, i) {
        return Some(end);
    }
    if poly {
        for tok in ["<sep>", "<poly>", "</poly>"] {
            if starts(t, i, tok) {
                return Some(i + tok.chars().count());
            }
        }
    }
    None
}

/// `re.findall` of `([^<]+(?:TOKEN){4,})` (`with_text`) or `(?:TOKEN){4,}`: the chunks of a
/// text run followed by at least four tokens, or of at least four tokens.
fn find_phrases(t: &[char], with_text: bool, poly: bool) -> Vec<Vec<char>> {
    let mut out = vec![];
    let mut s = 0;
    while s < t.len() {
        let mut e = s;
        if with_text {
            if t[s] == '<' {
                s += 1;
                continue;
            }
            e = t[s..]
                .iter()
                .position(|&c| c == '<')
                .map_or(t.len(), |p| s + p);
        }
        let (mut count, mut end) = (0, e);
        while let Some(next) = token_at(t, end, poly) {
            count += 1;
            end = next;
        }
        if count >= 4 {
            out.push(t[s..end].to_vec());
            s = end;
        } else if with_text {
            // Every start inside this text run ends at the same '<' and fails the same way.
            s = e;
        } else {
            s += 1;
        }
    }
    out
}

/// `re.search(r"^\s*(.*?)(?=MARKER|…)", t).group().strip()`: the text before the first marker,
/// or `None` when a newline comes first or no marker follows.
fn phrase_before(t: &[char], markers: &[&str]) -> Option<String> {
    let w = t.iter().take_while(|&&c| py_space(c)).count();
    for q in w..t.len() {
        if markers.iter().any(|m| starts(t, q, m)) {
            let s: String = t[..q].iter().collect();
            return Some(py_strip(&s).to_string());
        }
        if t[q] == '\n' {
            return None;
        }
    }
    None
}

const BOX_MARKERS: &[&str] = &[
    "<od>", "</od>", "<box>", "</box>", "<bbox>", "</bbox>", "<loc_",
];
const POLY_MARKERS: &[&str] = &[
    "<od>", "</od>", "<box>", "</box>", "<bbox>", "</bbox>", "<loc_", "<poly>",
];

/// `str.replace(pat, "", 1)`.
fn remove_first(t: &[char], pat: &str) -> Vec<char> {
    let n = pat.chars().count();
    match (0..t.len()).find(|&i| starts(t, i, pat)) {
        Some(i) => [&t[..i], &t[i + n..]].concat(),
        None => t.to_vec(),
    }
}

/// HF's `parse_description_with_bboxes_from_text_and_spans`: (phrase, its boxes) per chunk.
fn parse_bboxes(text: &str, allow_empty: bool, bins: &Bins) -> Vec<(String, Vec<[i32; 4]>)> {
    let t = strip_specials(text);
    let mut out = vec![];
    for chunk in find_phrases(&t, !allow_empty, false) {
        let chunk = remove_first(&remove_first(&chunk, "<ground>"), "<obj>");
        if chunk.is_empty() && !allow_empty {
            continue;
        }
        let Some(phrase) = phrase_before(&chunk, BOX_MARKERS) else {
            continue;
        };
        // re.finditer of four consecutive locs.
        let mut boxes = vec![];
        let mut s = 0;
        while s < chunk.len() {
            let mut quad = [0u64; 4];
            let mut end = s;
            let found = (0..4).all(|k| match loc_at(&chunk, end) {
                Some((bin, next)) => {
                    quad[k] = bin;
                    end = next;
                    true
                }
                None => false,
            });
            if found {
                let p = bins.points(&quad);
                boxes.push([p[0], p[1], p[2], p[3]]);
                s = end;
            } else {
                s += 1;
            }
        }
        if boxes.is_empty() {
            continue;
        }
        out.push((phrase.chars().filter(char::is_ascii).collect(), boxes));
    }
    out
}

/// HF's `parse_ocr_from_text_and_spans` with its default pattern
/// `(.+?)<loc_(\d+)>×8`: (quad, text) per match.
fn parse_ocr(text: &str, bins: &Bins) -> Vec<([i32; 8], String)> {
    let t = strip_specials(text);
    let eight_locs = |mut i: usize| {
        let mut quad = [0u64; 8];
        for q in quad.iter_mut() {
            let (bin, next) = loc_at(&t, i)?;
            *q = bin;
            i = next;
        }
        Some((quad, i))
    };
    let mut out = vec![];
    let mut s = 0;
    while s < t.len() {
        // `.+?`: at least one character, never a newline, as few as possible.
        let mut found = None;
        for q in s + 1..=t.len() {
            if t[q - 1] == '\n' {
                break;
            }
            if let Some(m) = eight_locs(q) {
                found = Some((q, m));
                break;
            }
        }
        match found {
            Some((q, (quad, end))) => {
                let content: String = t[s..q].iter().collect();
                let p = bins.points(&quad);
                let mut quad_box = [0; 8];
                quad_box.copy_from_slice(&p);
                out.push((quad_box, py_strip(&content).to_string()));
                s = end;
            }
            None => s += 1,
        }
    }
    out
}

/// HF's `parse_description_with_polygons_from_text_and_spans`: (phrase, polygons) per
/// instance.
fn parse_polygons(text: &str, allow_empty: bool, bins: &Bins) -> Vec<(String, Vec<Vec<i32>>)> {
    let t = strip_specials(text);
    let mut out = vec![];
    for chunk in find_phrases(&t, !allow_empty, true) {
        let stripped = match loc_at(&chunk, 0) {
            Some((_, end)) => &chunk[end..],
            None => &chunk[..],
        };
        if stripped.is_empty() && !allow_empty {
            continue;
        }
        let Some(phrase) = phrase_before(stripped, POLY_MARKERS) else {
            continue;
        };
        let has = |pat: &str| (0..chunk.len()).any(|i| starts(&chunk, i, pat));
        let instances = if has("<poly>") && has("</poly>") {
            poly_instances(&chunk)
        } else {
            vec![&chunk[..]]
        };
        for inst in instances {
            let polygons = loc_groups(inst)
                .into_iter()
                .map(|mut g| {
                    g.truncate(g.len() / 2 * 2);
                    bins.points(&g)
                })
                .collect::<Vec<_>>();
            if !polygons.is_empty() {
                out.push((phrase.clone(), polygons));
            }
        }
    }
    out
}

/// `re.finditer(r"<poly>(.*?)</poly>")`: the insides.
fn poly_instances(t: &[char]) -> Vec<&[char]> {
    let mut out = vec![];
    let mut s = 0;
    'outer: while s < t.len() {
        if starts(t, s, "<poly>") {
            let mut q = s + 6;
            while q < t.len() {
                if starts(t, q, "</poly>") {
                    out.push(&t[s + 6..q]);
                    s = q + 7;
                    continue 'outer;
                }
                if t[q] == '\n' {
                    break;
                }
                q += 1;
            }
        }
        s += 1;
    }
    out
}

/// `re.finditer(r"((?:<loc_\d+>)+)(?:<sep>|$)")`: the bins of each loc run that ends at a
/// `<sep>` or at the end.
fn loc_groups(t: &[char]) -> Vec<Vec<u64>> {
    let mut out = vec![];
    let mut s = 0;
    while s < t.len() {
        let (mut group, mut end) = (vec![], s);
        while let Some((bin, next)) = loc_at(t, end) {
            group.push(bin);
            end = next;
        }
        // `$` also matches before a final newline.
        let at_end = end == t.len() || (end + 1 == t.len() && t[end] == '\n');
        if !group.is_empty() && (starts(t, end, "<sep>") || at_end) {
            out.push(group);
            s = if at_end { end } else { end + 5 };
        } else {
            s += 1;
        }
    }
    out
}
