//! Beam search bookkeeping on the host, step for step as HF transformers' `_beam_search`
//! (batch 1, no sampling): the model supplies each running beam's last-position logits, this
//! module does the log-softmax, the logits processors, candidate selection and the finished
//! hypotheses, and says which beam each new running beam continues (for the KV cache).
//!
//! Scores are f32 as in HF, including its `-1e9` masks, so ties and roundings fall the same way.

use crate::weights::florence2::{GenerationDefaults, TextConfig};
use crate::{Error, Result};

/// HF's "very large negative" score for beams that must not be chosen.
const MASKED: f32 = -1.0e9;

/// Beam search settings, named as HF `generate`'s.
#[derive(Clone, Debug, PartialEq)]
pub struct BeamOptions {
    /// Beams kept per step (≥ 1).
    pub num_beams: usize,
    /// A token that would repeat an n-gram of this size already in the sequence is banned
    /// (0: off).
    pub no_repeat_ngram_size: usize,
    /// Tokens generated at most after the decoder start token; the last one is forced to
    /// `</s>`.
    pub max_new_tokens: usize,
    /// `true`: stop as soon as `num_beams` hypotheses are finished. `false`: HF's heuristic
    /// (stop once no running beam can beat the worst finished one at its current length).
    pub early_stopping: bool,
    /// A finished hypothesis scores `sum log p / generated_len ^ length_penalty`.
    pub length_penalty: f32,
}

impl BeamOptions {
    /// The checkpoint's decoding defaults (`generation_config.json`, else `text_config`) for
    /// `max_new_tokens` tokens.
    pub fn from_defaults(gen: &GenerationDefaults, max_new_tokens: usize) -> BeamOptions {
        BeamOptions {
            num_beams: gen.num_beams,
            no_repeat_ngram_size: gen.no_repeat_ngram_size,
            max_new_tokens,
            early_stopping: gen.early_stopping,
            length_penalty: 1.0,
        }
    }
}

/// The token ids decoding needs, from the checkpoint's configs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecoderIds {
    /// The first decoder input (`decoder_start_token_id`).
    pub start: u32,
    /// `</s>`: a sequence that emits it is finished.
    pub eos: u32,
    /// Forced right after the start token, if the configs ask for it.
    pub forced_bos: Option<u32>,
    /// Forced at the last allowed step, if the configs ask for it.
    pub forced_eos: Option<u32>,
}

impl DecoderIds {
    /// The ids of a BART config.
    pub fn of(cfg: &TextConfig) -> DecoderIds {
        DecoderIds {
            start: cfg.decoder_start_token_id,
            eos: cfg.eos_token_id,
            forced_bos: cfg.forced_bos_token_id,
            forced_eos: cfg.forced_eos_token_id,
        }
    }

    /// HF's forced-BOS then forced-EOS processors for the token after `len` decoder tokens
    /// (start included) out of at most `max_len`: forced-EOS runs last, so it wins.
    pub fn forced(&self, len: usize, max_len: usize) -> Option<u32> {
        match len {
            n if n + 1 == max_len && self.forced_eos.is_some() => self.forced_eos,
            1 => self.forced_bos,
            _ => None,
        }
    }
}

/// One hypothesis: its tokens (decoder start token first) and score.
#[derive(Clone, Debug)]
struct Hypothesis {
    seq: Vec<u32>,
    score: f32,
}

/// The state of one beam search.
pub struct BeamSearch {
    opts: BeamOptions,
    ids: DecoderIds,
    /// Decoder start token + `max_new_tokens`: HF's `max_length`.
    max_len: usize,
    /// The running beams (all of length `cur_len`) with their summed log-probs.
    running: Vec<Hypothesis>,
    /// For each running beam, the index of the beam it continues in the previous step.
    parents: Vec<usize>,
    /// The best `num_beams` finished hypotheses so far, best first, and whether each slot holds
    /// a finished one yet (HF's `sequences`, `beam_scores`, `is_sent_finished`).
    finished: Vec<(Hypothesis, bool)>,
    /// HF's `is_early_stop_heuristic_unsatisfied`.
    can_improve: bool,
    done: bool,
}

impl BeamSearch {
    /// Starts from the decoder start token in every beam; the forced ids of `ids` are forced
    /// at the first and the last step.
    pub fn new(opts: &BeamOptions, ids: &DecoderIds) -> Result<BeamSearch> {
        if opts.num_beams == 0 || opts.max_new_tokens == 0 {
            return Err(Error::input(format!(
                "beam search needs num_beams ≥ 1 and max_new_tokens ≥ 1, got {} and {}",
                opts.num_beams, opts.max_new_tokens
            )));
        }
        let b = opts.num_beams;
        let hyp = |score| Hypothesis {
            seq: vec![ids.start],
            score,
        };
        // Only beam 0 is live at first, so the identical beams don't yield the same candidates.
        let running = (0..b)
            .map(|i| hyp(if i == 0 { 0.0 } else { MASKED }))
            .collect();
        Ok(BeamSearch {
            opts: opts.clone(),
            ids: *ids,
            max_len: 1 + opts.max_new_tokens,
            running,
            parents: (0..b).collect(),
            finished: (0..b).map(|_| (hyp(MASKED), false)).collect(),
            can_improve: true,
            done: false,
        })
    }

    /// True once the search has stopped; [`BeamSearch::best`] is then the answer.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Tokens in every running beam (all have the same length): HF's `cur_len`.
    pub fn cur_len(&self) -> usize {
        self.running[0].seq.len()
    }

    /// The last token of each running beam: the next decoder input.
    pub fn last_tokens(&self) -> Vec<u32> {
        self.running
            .iter()
            .map(|h| *h.seq.last().unwrap())
            .collect()
    }

    /// For each running beam, which beam of the previous step it extends (identity before the
    /// first step): its cached keys/values are that beam's.
    pub fn parents(&self) -> &[usize] {
        &self.parents
    }

    /// The best finished hypothesis, decoder start token first, `</s>` last: what HF returns.
    pub fn best(&self) -> &[u32] {
        &self.finished[0].0.seq
    }

    /// The best finished hypothesis, or while none has finished the leading running beam:
    /// what a search stopped early (cancelled) returns.
    pub fn leader(&self) -> &[u32] {
        match &self.finished[0] {
            (h, true) => &h.seq,
            _ => &self.running[0].seq,
        }
    }

    /// HF's processors in its order on one beam's log-probs: no-repeat n-gram, forced BOS at
    /// the first step, forced EOS at the last (each where the configs ask for it).
    fn process(&self, seq: &[u32], lp: &mut [f32]) {
        let n = self.opts.no_repeat_ngram_size;
        let cur = seq.len();
        if n > 0 && cur >= n {
            let prefix = &seq[cur + 1 - n..];
            for w in seq.windows(n) {
                if &w[..n - 1] == prefix {
                    if let Some(x) = lp.get_mut(w[n - 1] as usize) {
                        *x = f32::NEG_INFINITY;
                    }
                }
            }
        }
        if let Some(t) = self.ids.forced(cur, self.max_len) {
            lp.fill(f32::NEG_INFINITY);
            lp[t as usize] = 0.0;
        }
    }

    /// Advances by one token given `logits` (`[num_beams, V]`, the running beams' last
    /// positions, in [`BeamSearch::last_tokens`] order).
    pub fn step(&mut self, logits: &[f32]) -> Result<()> {
        let b = self.opts.num_beams;
        if self.done || !logits.len().is_multiple_of(b) || logits.is_empty() {
            return Err(Error::input(format!(
                "beam search step: {} logits for {b} beams{}",
                logits.len(),
                if self.done {
                    " after the search ended"
                } else {
                    ""
                }
            )));
        }
        let v = logits.len() / b;
        let cur = self.cur_len();
        if logits.iter().any(|x| !x.is_finite()) {
            return Err(Error::non_finite(cur));
        }

        // Accumulated log-probs of every (beam, token) continuation.
        let mut acc = Vec::with_capacity(b * v);
        for (h, row) in self.running.iter().zip(logits.chunks(v)) {
            let mut lp = log_softmax(row);
            self.process(&h.seq, &mut lp);
            acc.extend(lp.iter().map(|&x| x + h.score));
        }

        // The top 2·num_beams candidates (one EOS id): enough to keep num_beams running.
        let keep = 2 * b;
        let cands: Vec<(Hypothesis, usize, bool)> = top_k(&acc, keep)
            .into_iter()
            .map(|i| {
                let (parent, tok) = (i / v, (i % v) as u32);
                let mut seq = self.running[parent].seq.clone();
                seq.push(tok);
                let hits = tok == self.ids.eos || seq.len() >= self.max_len;
                let score = acc[i];
                (Hypothesis { seq, score }, parent, hits)
            })
            .collect();

        // Running beams for the next step: the best candidates that did not stop.
        let run_scores: Vec<f32> = cands
            .iter()
            .map(|(h, _, hits)| h.score + if *hits { MASKED } else { 0.0 })
            .collect();
        let next = top_k(&run_scores, b);
        self.running = next
            .iter()
            .map(|&i| Hypothesis {
                seq: cands[i].0.seq.clone(),
                score: run_scores[i],
            })
            .collect();
        self.parents = next.iter().map(|&i| cands[i].1).collect();

        // Finished hypotheses: only the top num_beams candidates may enter, length-penalised.
        let all_finished = self.finished.iter().all(|f| f.1);
        let penalty = (cur as f32).powf(self.opts.length_penalty);
        let mut merged: Vec<(Hypothesis, bool)> = self.finished.clone();
        for (i, (h, _, hits)) in cands.iter().enumerate() {
            let just_finished = *hits && i < b;
            let mut score = h.score / penalty;
            if all_finished && self.opts.early_stopping {
                score += MASKED;
            }
            if !self.can_improve {
                score += MASKED;
            }
            if !just_finished {
                score += MASKED;
            }
            merged.push((
                Hypothesis {
                    seq: h.seq.clone(),
                    score,
                },
                just_finished,
            ));
        }
        let scores: Vec<f32> = merged.iter().map(|m| m.0.score).collect();
        self.finished = top_k(&scores, b)
            .into_iter()
            .map(|i| merged[i].clone())
            .collect();

        // Stopping: HF's early-stop heuristic, all slots finished, or no valid continuation.
        let best_running = self.running[0].score / (cur as f32).powf(self.opts.length_penalty);
        let worst = self
            .finished
            .iter()
            .map(|f| f.0.score)
            .fold(f32::INFINITY, f32::min);
        self.can_improve &= self
            .finished
            .iter()
            .any(|f| best_running > if f.1 { worst } else { MASKED });
        let all_finished = self.finished.iter().all(|f| f.1) && self.opts.early_stopping;
        let all_hit = cands.iter().all(|c| c.2);
        self.done = !self.can_improve || all_finished || all_hit;
        Ok(())
    }
}

/// `x − logsumexp(x)`, summed in f64.
fn log_softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = x.iter().map(|&v| ((v - max) as f64).exp()).sum();
    let lse = max as f64 + sum.ln();
    x.iter().map(|&v| (v as f64 - lse) as f32).collect()
}

/// Indices of the `k` largest values, largest first; ties keep the lower index first.
fn top_k(x: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[b].total_cmp(&x[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}
