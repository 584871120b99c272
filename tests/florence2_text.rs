//! Florence-2 language model parity with HF transformers: the batched encoder over the three
//! Florence-VL prompts, teacher-forced decoder logits, greedy generation and beam search, for
//! every fixture model in both naming schemes (f32, 1e-4 max relative error; generated ids
//! exact), and the beam search's rules on made-up logits.

mod common;

use common::{fixture_path, fixture_tensor, max_rel_error};
use fvl_wgpu::gpu::{DType, Gpu, Graph, Tensor};
use fvl_wgpu::model::bart::Bart;
use fvl_wgpu::model::beam::{BeamOptions, BeamSearch, DecoderIds};
use fvl_wgpu::text::bart::{prompt, BartTokenizer};
use fvl_wgpu::weights::florence2::Florence2Checkpoint;
use fvl_wgpu::weights::florence2::GenerationDefaults;
use serde_json::Value;

const MODELS: &[&str] = &["florence2-a", "florence2-b"];
const F32_BUDGET: f64 = 1e-4;

fn json(rel: &str) -> Value {
    let text = std::fs::read_to_string(fixture_path(rel)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn bart(gpu: &Gpu, dir: &str) -> Bart {
    bart_as(gpu, dir, DType::F32)
}

fn bart_as(gpu: &Gpu, dir: &str, dtype: DType) -> Bart {
    let ck = Florence2Checkpoint::open(fixture_path(dir)).unwrap();
    Bart::from_checkpoint(gpu, &ck, dtype).unwrap()
}

/// f16 weights: each carries ≤ 2^-11 relative rounding; through florence2-a's encoder the
/// states move by 5.5e-3 of their largest magnitude and the logits by 1.4e-3 (florence2-b
/// is stored in f16, so there only accumulation order shows, ~5e-6). 1e-2 leaves margin
/// while a real defect (a wrong accessor, a dropped scale) shows up as O(1).
const F16_BUDGET: f64 = 1e-2;

/// Runs the encoder on the fixture's V and padded prompts; returns `[B, N + L, D]` values.
fn encode(gpu: &Gpu, bart: &Bart, model: &str) -> Vec<f32> {
    let (shape, v) = fixture_tensor(
        &format!("{model}/expected_encoder.safetensors"),
        "image_features",
    );
    let prompts: Vec<Vec<u32>> = json(&format!("{model}/encoder.json"))["encoder_prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(ids)
        .collect();
    let (b, l) = (prompts.len(), prompts[0].len());
    let v = Tensor::from_f32(gpu, &shape[1..], DType::F32, &v, "V").unwrap();
    let p = Tensor::from_u32(gpu, &[b, l], &prompts.concat(), "prompts").unwrap();
    let mut g = Graph::new(gpu);
    let (vi, pi) = (g.external(&v), g.external(&p));
    let out = bart.encode(&mut g, vi, pi).unwrap();
    g.keep(out);
    let exe = g.build().unwrap();
    exe.run(gpu, &[]).unwrap();
    exe.tensor(out).read_f32(gpu).unwrap()
}

/// HF's encoder states for the fixture's V and prompts.
fn expected_encoder_states(model: &str) -> Vec<f32> {
    let rel = format!("{model}/expected_encoder.safetensors");
    fixture_tensor(&rel, "encoder_hidden_states").1
}

#[test]
fn batched_encoder_matches_transformers() {
    let gpu = common::gpu();
    for model in MODELS {
        let want = expected_encoder_states(model);
        let got = encode(&gpu, &bart(&gpu, model), model);
        let e = max_rel_error(&got, &want);
        eprintln!("{model}: encoder hidden states {e:.2e}");
        assert!(e <= F32_BUDGET, "{model}: encoder {e:e}");
        let original = encode(&gpu, &bart(&gpu, &format!("{model}-original")), model);
        assert_eq!(original, got, "{model}: both layouts must agree exactly");
    }
}

/// V of a fixture image (`[N, D]` on the GPU) — the vision path has its own parity test.
fn features(gpu: &Gpu, model: &str, image: &str) -> Tensor {
    let stem = image.split('.').next().unwrap();
    let rel = format!("{model}/expected_{stem}.safetensors");
    let (shape, v) = fixture_tensor(&rel, "image_features");
    Tensor::from_f32(gpu, &shape[1..], DType::F32, &v, "V").unwrap()
}

#[test]
fn teacher_forced_decoder_logits_match_transformers() {
    let gpu = common::gpu();
    for model in MODELS {
        let e = teacher_forced_error(&gpu, model, DType::F32);
        eprintln!("{model}: teacher-forced decoder logits {e:.2e}");
        assert!(e <= F32_BUDGET, "{model}: logits {e:e}");
    }
}

/// The language model with f16 weights: encoder states and teacher-forced logits within the
/// f16 budget of HF's f32 outputs.
#[test]
fn f16_weights_stay_within_budget() {
    let gpu = common::gpu();
    for model in MODELS {
        let got = encode(&gpu, &bart_as(&gpu, model, DType::F16), model);
        let enc = max_rel_error(&got, &expected_encoder_states(model));
        let logits = teacher_forced_error(&gpu, model, DType::F16);
        eprintln!("{model} f16: encoder states {enc:.2e}, teacher-forced logits {logits:.2e}");
        assert!(enc <= F16_BUDGET, "{model}: f16 encoder {enc:e}");
        assert!(logits <= F16_BUDGET, "{model}: f16 logits {logits:e}");
    }
}

/// Max relative error of the decoder's teacher-forced caption logits against HF's.
fn teacher_forced_error(gpu: &Gpu, model: &str, dtype: DType) -> f64 {
    let bart = bart_as(gpu, model, dtype);
    let run = &json(&format!("{model}/generate.json"))["runs"][0];
    let input = ids(&run["decoder_logits_input_ids"]);
    let t = input.len();
    let v = features(gpu, model, run["image"].as_str().unwrap());
    let cache = bart.prefill(gpu, &v, &ids(&run["prompt_ids"]), t).unwrap();
    let positions: Vec<u32> = (0..t as u32).collect();
    let input = Tensor::from_u32(gpu, &[1, t], &input, "ids").unwrap();
    let positions = Tensor::from_u32(gpu, &[1, t], &positions, "positions").unwrap();
    let mut g = Graph::new(gpu);
    let (i, p) = (g.external(&input), g.external(&positions));
    let logits = bart.decode(&mut g, i, p, &cache).unwrap();
    g.keep(logits);
    let exe = g.build().unwrap();
    exe.run(gpu, &[0, t as u32]).unwrap();
    let got = exe.tensor(logits).read_f32(gpu).unwrap();
    let rel = format!("{model}/expected_decoder_caption.safetensors");
    let (_, want) = fixture_tensor(&rel, "logits");
    max_rel_error(&got, &want)
}

#[test]
fn greedy_generation_matches_transformers() {
    let gpu = common::gpu();
    for model in MODELS {
        for dir in [model.to_string(), format!("{model}-original")] {
            let bart = bart(&gpu, &dir);
            let expected = json(&format!("{dir}/generate.json"));
            let max_new = expected["modes"]["greedy"]["max_new_tokens"]
                .as_u64()
                .unwrap();
            for run in expected["runs"].as_array().unwrap() {
                let v = features(&gpu, model, run["image"].as_str().unwrap());
                let want = ids(&run["greedy"]["ids"]);
                let got = bart
                    .greedy(&gpu, &v, &ids(&run["prompt_ids"]), max_new as usize)
                    .unwrap();
                assert_eq!(got, want, "{dir} {}", run["task"]);
            }
        }
    }
}

#[test]
fn beam_search_matches_transformers() {
    let gpu = common::gpu();
    for model in MODELS {
        for dir in [model.to_string(), format!("{model}-original")] {
            let bart = bart(&gpu, &dir);
            let expected = json(&format!("{dir}/generate.json"));
            let mode = &expected["modes"]["beam3"];
            let opts = BeamOptions {
                num_beams: mode["num_beams"].as_u64().unwrap() as usize,
                no_repeat_ngram_size: mode["no_repeat_ngram_size"].as_u64().unwrap() as usize,
                max_new_tokens: mode["max_new_tokens"].as_u64().unwrap() as usize,
                early_stopping: mode["early_stopping"].as_bool().unwrap(),
                length_penalty: 1.0,
            };
            for run in expected["runs"].as_array().unwrap() {
                let v = features(&gpu, model, run["image"].as_str().unwrap());
                let prompt = ids(&run["prompt_ids"]);
                let got = bart.beam_search(&gpu, &v, &prompt, &opts).unwrap();
                assert_eq!(got, ids(&run["beam3"]["ids"]), "{dir} {}", run["task"]);
                // One beam with early stopping is greedy search.
                let one = BeamOptions {
                    num_beams: 1,
                    no_repeat_ngram_size: 0,
                    ..opts.clone()
                };
                let got = bart.beam_search(&gpu, &v, &prompt, &one).unwrap();
                let greedy = ids(&run["greedy"]["ids"]);
                assert_eq!(got, greedy, "{dir} {}: one beam", run["task"]);
            }
        }
    }
}

#[test]
fn task_prompts_tokenize_as_the_processor_does() {
    for model in MODELS {
        let tok = BartTokenizer::open(fixture_path(model)).unwrap();
        for run in json(&format!("{model}/generate.json"))["runs"]
            .as_array()
            .unwrap()
        {
            let task = run["task"].as_str().unwrap();
            assert_eq!(prompt(task).unwrap(), run["prompt_text"].as_str().unwrap());
            assert_eq!(
                tok.encode_task(task).unwrap(),
                ids(&run["prompt_ids"]),
                "{task}"
            );
            let greedy = &run["greedy"];
            assert_eq!(
                tok.decode(&ids(&greedy["ids"])).unwrap(),
                greedy["text"].as_str().unwrap(),
                "{model} {task}"
            );
        }
        let florence_vl = json(&format!("{model}/encoder.json"));
        let want: Vec<u32> = florence_vl["encoder_prompt_ids"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(ids)
            .collect();
        let (got, len) = tok.florence_vl_prompts(1).unwrap();
        assert_eq!(got, want, "{model}: Florence-VL prompts, padded to {len}");
    }
}

#[test]
fn task_errors_name_the_problem() {
    let err = |t: &str| prompt(t).unwrap_err().to_string();
    assert!(err("<CAPTON>").contains("unknown task <CAPTON>"));
    assert!(err("<CAPTION_TO_PHRASE_GROUNDING>").contains("needs text"));
    assert!(err("<OD>cars").contains("takes no text"));
    assert_eq!(prompt("free text").unwrap(), "free text");
}

/// Florence-2's settings: 3 beams, no repeated trigrams, early stopping, for `max_new` tokens.
fn florence2_beams(max_new: usize) -> BeamOptions {
    let gen = GenerationDefaults {
        num_beams: 3,
        no_repeat_ngram_size: 3,
        early_stopping: true,
        max_length: None,
    };
    BeamOptions::from_defaults(&gen, max_new)
}

/// Start 2, `</s>` 2, `<s>` forced first and `</s>` last, as Florence-2's HF-native configs ask.
const FORCED: DecoderIds = DecoderIds {
    start: 2,
    eos: 2,
    forced_bos: Some(0),
    forced_eos: Some(2),
};

/// Logits over a vocabulary of 6 that favour `tok` in each of `beams` beams.
fn favour(beams: usize, tok: usize) -> Vec<f32> {
    (0..beams)
        .flat_map(|_| (0..6).map(move |t| if t == tok { 3.0 } else { 0.0 }))
        .collect()
}

#[test]
fn beam_search_forces_bos_and_eos_and_bans_repeated_trigrams() {
    let mut s = BeamSearch::new(&florence2_beams(6), &FORCED).unwrap();
    while !s.done() {
        s.step(&favour(3, 4)).unwrap();
    }
    let best = s.best();
    assert_eq!(best[..2], [2, 0], "start, then the forced <s>");
    assert_eq!(best.len(), 7, "runs to max_new_tokens");
    assert_eq!(*best.last().unwrap(), 2, "forced </s>");
    for w in best.windows(3) {
        let n = best.windows(3).filter(|x| *x == w).count();
        assert_eq!(n, 1, "{best:?} repeats the trigram {w:?}");
    }
}

#[test]
fn beam_search_stops_early_once_every_beam_finished() {
    let mut s = BeamSearch::new(&florence2_beams(20), &FORCED).unwrap();
    s.step(&favour(3, 4)).unwrap();
    while !s.done() {
        s.step(&favour(3, 2)).unwrap();
    }
    assert_eq!(s.best(), [2, 0, 2]);
    assert!(s.cur_len() < 10, "stopped at length {}", s.cur_len());
}

/// Writes the fixture's BPE as the slow-tokenizer files `vocab.json` + `merges.txt`
/// (`<mask>` in the vocabulary as BART's is), with or without `added_tokens.json`.
fn slow_tokenizer_dir(model: &str, with_added: bool) -> std::path::PathBuf {
    let t = json(&format!("{model}/tokenizer.json"));
    let dir = std::env::temp_dir().join(format!(
        "fvl-slowtok-{model}-{with_added}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut vocab = t["model"]["vocab"].as_object().unwrap().clone();
    let added = t["added_tokens"].as_array().unwrap();
    let mask = added.iter().find(|a| a["content"] == "<mask>").unwrap();
    vocab.insert("<mask>".into(), mask["id"].clone());
    std::fs::write(
        dir.join("vocab.json"),
        serde_json::to_string(&vocab).unwrap(),
    )
    .unwrap();
    let merges: Vec<String> = t["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| format!("{} {}", m[0].as_str().unwrap(), m[1].as_str().unwrap()))
        .collect();
    std::fs::write(
        dir.join("merges.txt"),
        format!("#version: 0.2\n{}\n", merges.join("\n")),
    )
    .unwrap();
    if with_added {
        let map: serde_json::Map<String, Value> = added
            .iter()
            .filter(|a| a["id"].as_u64().unwrap() > mask["id"].as_u64().unwrap())
            .map(|a| (a["content"].as_str().unwrap().to_string(), a["id"].clone()))
            .collect();
        std::fs::write(
            dir.join("added_tokens.json"),
            serde_json::to_string(&map).unwrap(),
        )
        .unwrap();
    }
    dir
}

#[test]
fn vocab_and_merges_give_the_same_ids() {
    for model in ["florence2-a", "florence2-b"] {
        let gen = json(&format!("{model}/generate.json"));
        for with_added in [true, false] {
            let dir = slow_tokenizer_dir(model, with_added);
            let tok = BartTokenizer::open(&dir).unwrap();
            for run in gen["runs"].as_array().unwrap() {
                let task = run["task"].as_str().unwrap();
                let want = ids(&run["prompt_ids"]);
                assert_eq!(
                    tok.encode_task(task).unwrap(),
                    want,
                    "{model} {task}, added_tokens.json: {with_added}"
                );
                // Generated ids hold the added tokens (<loc_k>, …): their ids must line up too.
                for mode in ["greedy", "beam3"] {
                    let text = tok.decode(&ids(&run[mode]["ids"])).unwrap();
                    assert_eq!(
                        text,
                        run[mode]["text"].as_str().unwrap(),
                        "{model} {task} {mode}"
                    );
                }
            }
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
