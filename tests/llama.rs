//! Llama-3 decoder parity with HF transformers on the tiny fixture models: llama-a (bf16
//! shards, llama3 RoPE via `rope_parameters`, GQA 4/2, tied head) and llama-b (f32, legacy
//! `rope_theta`, MQA 3/1, untied head, odd vocab 517).

mod common;

use common::{fixture_path, fixture_tensor, max_rel_error};
use fvl_wgpu::gpu::{DType, Gpu};
use fvl_wgpu::model::llama::{Llama, Pick, Prompt, Session};
use fvl_wgpu::weights::Checkpoint;

const MODELS: &[&str] = &["llama-a", "llama-b"];
/// f32 weights: the parity budget for the prompt logits.
const F32_BUDGET: f64 = 1e-4;
/// Context for the tests: 24 prompt tokens + 32 generated.
const CONTEXT: usize = 64;

struct Expected {
    prompt: Vec<u32>,
    greedy: Vec<u32>,
    margins: Vec<f64>,
    logits: Vec<f32>,
}

fn expected(model: &str) -> Expected {
    let text = std::fs::read_to_string(fixture_path(&format!("{model}/expected.json"))).unwrap();
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = |k: &str| -> Vec<u32> {
        j[k].as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect()
    };
    let (shape, logits) = fixture_tensor(&format!("{model}/expected.safetensors"), "logits");
    assert_eq!(shape[1], ids("prompt_ids").len());
    Expected {
        prompt: ids("prompt_ids"),
        greedy: ids("greedy_32_no_eos"),
        margins: j["greedy_top1_top2_margins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect(),
        logits,
    }
}

fn load(gpu: &Gpu, model: &str, quant: DType) -> Llama {
    let ck = Checkpoint::open(fixture_path(model)).unwrap();
    Llama::load(gpu, &ck, quant, &|| ()).unwrap()
}

/// Prefill with all prompt logits, then greedy decode: (prompt logits, 32 ids).
fn greedy(gpu: &Gpu, llama: &Llama, prompt: &[u32]) -> (Vec<f32>, Vec<u32>) {
    let mut s = Session::new(gpu, llama, CONTEXT, Pick::Greedy, 0).unwrap();
    let mut ids = vec![s.prefill(Prompt::Ids(prompt), true).unwrap()];
    let logits = s.logits().unwrap();
    let submits = gpu.submits();
    while ids.len() < 32 {
        ids.push(s.decode(None).unwrap());
    }
    assert_eq!(gpu.submits() - submits, 31, "one submit per decoded token");
    (logits, ids)
}

#[test]
fn f32_logits_and_greedy_ids_match_transformers() {
    let gpu = common::gpu();
    for model in MODELS {
        let want = expected(model);
        let llama = load(&gpu, model, DType::F32);
        let (logits, ids) = greedy(&gpu, &llama, &want.prompt);
        let err = max_rel_error(&logits, &want.logits);
        eprintln!("{model} f32: prompt logits max rel error {err:.2e}");
        assert!(err <= F32_BUDGET, "{model}: {err:e}");
        assert_eq!(ids, want.greedy, "{model}: greedy ids");
    }
}

/// f16 weights: each weight carries ≤ 2^-11 relative rounding; through the 2–3 layers of
/// these random models the prompt logits move by ~1e-3 of their largest magnitude (measured
/// below), so 1e-2 leaves margin while any real defect shows up as O(1).
const F16_BUDGET: f64 = 1e-2;
/// Greedy ids are compared only up to the first step whose reference top-1/top-2 gap is
/// below this: the measured f16 logit error (≤ 1e-3 relative of logits of magnitude ≲ 5, so
/// ≲ 5e-3 absolute) may legitimately swap a closer pair.
const MARGIN_GUARD: f64 = 0.01;

#[test]
fn f16_logits_within_budget_and_greedy_ids_until_a_close_call() {
    let gpu = common::gpu();
    for model in MODELS {
        let want = expected(model);
        let llama = load(&gpu, model, DType::F16);
        let (logits, ids) = greedy(&gpu, &llama, &want.prompt);
        let err = max_rel_error(&logits, &want.logits);
        let safe = want
            .margins
            .iter()
            .position(|&m| m < MARGIN_GUARD)
            .unwrap_or(32);
        let same = ids
            .iter()
            .zip(&want.greedy)
            .take_while(|(a, b)| a == b)
            .count();
        let scale = want.logits.iter().fold(0f32, |m, v| m.max(v.abs()));
        eprintln!(
            "{model} f16: logits max rel error {err:.2e} (max |logit| {scale:.2}); greedy ids equal for {same} steps ({safe} checked)"
        );
        assert!(err <= F16_BUDGET, "{model}: {err:e}");
        assert_eq!(ids[..safe], want.greedy[..safe], "{model}: greedy ids");
    }
}
