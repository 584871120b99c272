//! Phi-3 (LongRoPE, fused qkv/gate_up, padded vocabulary) parity with HF transformers on
//! `phi3-a` and the `llava_phi` Florence-VL `florence-vl-phi-tiny` (tools/README.md), and the
//! config errors a Phi-3 folder can raise.

mod common;

use common::{fixture_path, fixture_tensor, max_rel_error};
use fvl_wgpu::gpu::{DType, Gpu, Graph, Tensor};
use fvl_wgpu::model::florence_vl::{prompt_text, FlorenceVl};
use fvl_wgpu::model::generate::{Limits, Pick, Prompt, Session, Stop};
use fvl_wgpu::model::llama::{Arch, Llama, LlamaConfig};
use fvl_wgpu::text::chat::{Message, Template};
use fvl_wgpu::text::llama::LlamaTokenizer;
use fvl_wgpu::weights::Checkpoint;
use serde_json::Value;

const DIR: &str = "phi3-a";
/// f32 weights: the parity budget for the prompt logits.
const F32_BUDGET: f64 = 1e-4;
const CONTEXT: usize = 96;

fn json(rel: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture_path(rel)).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

/// A run of the fixture: (prompt ids, greedy ids, margins, all-position logits).
fn run(name: &str) -> (Vec<u32>, Vec<u32>, Vec<f64>, Vec<f32>) {
    let j = json(&format!("{DIR}/expected.json"));
    let r = &j["runs"][name];
    let margins = r["greedy_top1_top2_margins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let (_, logits) = fixture_tensor(&format!("{DIR}/expected.safetensors"), &format!("logits_{name}"));
    (ids(&r["prompt_ids"]), ids(&r["greedy_32_no_eos"]), margins, logits)
}

fn load(gpu: &Gpu, quant: DType) -> Llama {
    load_from(gpu, &fixture_path(DIR), quant)
}

fn load_from(gpu: &Gpu, dir: &std::path::Path, quant: DType) -> Llama {
    let ck = Checkpoint::open(dir).unwrap();
    let mut m = Llama::from_checkpoint(gpu, &ck, quant, &|| ()).unwrap();
    m.sampled_vocab = LlamaTokenizer::open(&fixture_path(DIR)).unwrap().len();
    m
}

/// Prefill with every prompt position's logits, then 31 decode steps.
fn greedy(gpu: &Gpu, m: &Llama, prompt: &[u32]) -> (Vec<f32>, Vec<u32>) {
    let mut s = Session::new(gpu, m, CONTEXT, Pick::Greedy, 0).unwrap();
    let mut out = vec![s.prefill(Prompt::Ids(prompt), true).unwrap()];
    let logits = s.logits().unwrap();
    while out.len() < 32 {
        out.push(s.decode(None).unwrap());
    }
    (logits, out)
}

/// Both prompts: the long one (58 tokens > original_max_position_embeddings 32: long factors
/// from the start) and the short one (10 tokens: short factors, and at step 22 the sequence
/// crosses 32, where transformers recomputes everything with the long factors). The fixture's
/// padding rows would win every step unmasked, so equal ids also show they are never chosen.
#[test]
fn f32_logits_and_greedy_ids_match_transformers_across_the_longrope_boundary() {
    let gpu = common::gpu();
    let m = load(&gpu, DType::F32);
    assert_eq!(m.cfg.arch, Arch::Phi3);
    for name in ["long", "short"] {
        let (prompt, want, _, want_logits) = run(name);
        let (logits, got) = greedy(&gpu, &m, &prompt);
        let err = max_rel_error(&logits, &want_logits);
        eprintln!("phi3-a {name}: prompt logits max rel error {err:.2e}");
        assert!(err <= F32_BUDGET, "{name}: {err:e}");
        assert_eq!(got, want, "{name}: greedy ids");
    }
}

/// `Session::generate` (queued ahead or not) crosses the boundary the same way, never queuing
/// the crossing step, and the refill costs one submit more than plain decoding.
#[test]
fn generate_recomputes_at_the_crossing_like_transformers() {
    let gpu = common::gpu();
    let m = load(&gpu, DType::F32);
    let (prompt, want, _, _) = run("short");
    for queue_ahead in [true, false] {
        let mut s = Session::new(&gpu, &m, CONTEXT, Pick::Greedy, 0).unwrap();
        s.queue_ahead = queue_ahead;
        let first = s.prefill(Prompt::Ids(&prompt), false).unwrap();
        let limits = Limits {
            max_new: 32,
            reserve: 0,
            keep_stop: true,
        };
        let gen = s
            .generate(first, &limits, &|_| false, &mut |_| Ok(true))
            .unwrap();
        assert_eq!(gen.stopped, Stop::Length);
        assert_eq!(gen.ids, want, "queue_ahead {queue_ahead}");
        assert_eq!(s.position(), prompt.len() + 31);
    }
}

/// f16 budget as for Llama (tests/llama.rs): ≤ 1e-2 relative on the prompt logits; greedy ids
/// equal up to the first reference step whose top-1/top-2 gap is below 0.01.
#[test]
fn f16_logits_within_budget_and_greedy_ids_until_a_close_call() {
    let gpu = common::gpu();
    let m = load(&gpu, DType::F16);
    for name in ["long", "short"] {
        let (prompt, want, margins, want_logits) = run(name);
        let (logits, got) = greedy(&gpu, &m, &prompt);
        let err = max_rel_error(&logits, &want_logits);
        let safe = margins.iter().position(|&g| g < 0.01).unwrap_or(32);
        eprintln!("phi3-a {name} f16: logits max rel error {err:.2e}, ids checked for {safe} steps");
        assert!(err <= 1e-2, "{name}: {err:e}");
        assert_eq!(got[..safe], want[..safe], "{name}");
    }
}

fn log_softmax(x: &[f32]) -> Vec<f64> {
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let lse = x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln() + m;
    x.iter().map(|&v| v as f64 - lse).collect()
}

/// Mean KL(p_f32 ‖ p_q) over the next-token distributions (candidates only) of a prefill and
/// 31 steps teacher-forced on the f32 greedy ids, and the fraction with the same top-1.
fn kl_vs_f32(gpu: &Gpu, quant: &Llama, prompt: &[u32], forced: &[u32]) -> (f64, f64) {
    let n = LlamaTokenizer::open(&fixture_path(DIR)).unwrap().len();
    let steps = |m: &Llama| -> Vec<Vec<f32>> {
        let mut s = Session::new(gpu, m, CONTEXT, Pick::Greedy, 0).unwrap();
        s.prefill(Prompt::Ids(prompt), false).unwrap();
        let mut out = vec![s.logits().unwrap()[..n].to_vec()];
        for &id in &forced[..31] {
            s.decode(Some(id)).unwrap();
            out.push(s.logits().unwrap()[..n].to_vec());
        }
        out
    };
    let (p, q) = (steps(&load(gpu, DType::F32)), steps(quant));
    let top = |x: &[f32]| (0..x.len()).fold(0, |b, i| if x[i] > x[b] { i } else { b });
    let (mut kl, mut same) = (0.0, 0);
    for (a, b) in p.iter().zip(&q) {
        let (la, lb) = (log_softmax(a), log_softmax(b));
        kl += la.iter().zip(&lb).map(|(x, y)| x.exp() * (x - y)).sum::<f64>();
        same += usize::from(top(a) == top(b));
    }
    (kl / p.len() as f64, same as f64 / p.len() as f64)
}

/// q8/q4 of the fused matrices (rows of 64 and 96: whole 32-blocks, so really quantized):
/// the same budgets and reasoning as Llama's (tests/llama.rs `QUANT_BUDGETS`: block-32
/// round-to-nearest gives ≈0.5 % (q8) and ≈9 % (q4) RMS weight error on these random
/// weights): mean KL ≤ 2e-3 / 0.15 nats, top-1 agreement ≥ 0.85 / 0.35.
#[test]
fn q8_q4_kl_and_top1_agreement_vs_f32() {
    let gpu = common::gpu();
    let (prompt, want, _, _) = run("long");
    for (quant, kl_max, top1_min) in [(DType::Q8, 2e-3, 0.85), (DType::Q4, 0.15, 0.35)] {
        let (kl, top1) = kl_vs_f32(&gpu, &load(&gpu, quant), &prompt, &want);
        eprintln!("phi3-a {}: mean KL {kl:.2e}, top-1 {top1:.2}", quant.name());
        assert!(kl <= kl_max && top1 >= top1_min, "{}: {kl:e} {top1}", quant.name());
    }
}

/// Runs the built `fvl-wgpu` with `args`: (exit code, stdout, stderr).
fn fvl(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fvl-wgpu"))
        .args(args)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// `generate --json` on `model` (with `--quant` when given): the token ids.
fn cli_generate(model: &str, quant: Option<&str>, prompt: &str) -> Value {
    let mut args = vec!["generate", "--model", model, "--prompt-ids", prompt];
    args.extend(["--max-new-tokens", "8", "--json"]);
    if let Some(q) = quant {
        args.extend(["--quant", q]);
    }
    let (code, out, err) = fvl(&args);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str::<Value>(&out).unwrap()["token_ids"].clone()
}

/// `quantize --quant q8/q4` of the fused matrices: the folder holds them packed, `generate`
/// on it gives the ids of quantizing at load time, and it stays within the budgets of
/// `q8_q4_kl_and_top1_agreement_vs_f32`.
#[test]
fn quantized_folder_generates_like_load_time_quantization_within_budgets() {
    let gpu = common::gpu();
    let src = fixture_path(DIR);
    let (prompt, want, _, _) = run("long");
    let prompt_arg: Vec<String> = prompt.iter().map(u32::to_string).collect();
    let prompt_arg = prompt_arg.join(",");
    for (quant, kl_max, top1_min) in [(DType::Q8, 2e-3, 0.85), (DType::Q4, 0.15, 0.35)] {
        let out = std::env::temp_dir().join(format!("fvl-phi3-{}-{}", quant.name(), std::process::id()));
        let q = quant.name();
        let (code, _, err) = fvl(&["quantize", "--model", src.to_str().unwrap(), "--out", out.to_str().unwrap(), "--quant", q]);
        assert_eq!(code, 0, "{err}");
        let ck = Checkpoint::open(&out).unwrap();
        assert_eq!(ck.stored_quant(), Some(quant));
        assert!(ck.contains(&format!("model.layers.1.self_attn.qkv_proj.weight.{q}")));
        assert!(ck.contains(&format!("model.layers.1.mlp.gate_up_proj.weight.{q}")));
        let packed = cli_generate(out.to_str().unwrap(), None, &prompt_arg);
        assert_eq!(packed, cli_generate(src.to_str().unwrap(), Some(q), &prompt_arg), "{q}");
        let (kl, top1) = kl_vs_f32(&gpu, &load_from(&gpu, &out, quant), &prompt, &want);
        eprintln!("phi3-a quantized {q}: mean KL {kl:.2e}, top-1 {top1:.2}");
        assert!(kl <= kl_max && top1 >= top1_min, "{q}: {kl:e} {top1}");
        std::fs::remove_dir_all(&out).ok();
    }
}

#[test]
fn tokenizer_chat_template_and_stop_ids_match_transformers() {
    let j = json(&format!("{DIR}/expected.json"));
    let tok = LlamaTokenizer::open(&fixture_path(DIR)).unwrap();
    assert_eq!(tok.template, Template::Phi3);
    assert_eq!(tok.stop_ids, ids(&j["eos_token_ids"]));
    assert_eq!(tok.len() as u64, j["tokenizer_size"].as_u64().unwrap());
    assert_eq!(tok.bos_id().unwrap(), Some(1));
    for name in ["long", "short"] {
        let r = &j["runs"][name];
        assert_eq!(tok.encode(r["prompt"].as_str().unwrap(), true).unwrap(), ids(&r["prompt_ids"]));
    }
    let messages: Vec<Message> = j["chat_messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    assert_eq!(messages[0].content, Template::Phi3.default_system().unwrap());
    assert_eq!(Template::Phi3.prompt(&messages), j["chat_text"].as_str().unwrap());
    assert_eq!(tok.encode_chat(&messages).unwrap(), ids(&j["chat_ids"]));
}

fn config() -> Value {
    json(&format!("{DIR}/config.json"))
}

fn err_of(cfg: &Value) -> String {
    let e = LlamaConfig::from_json(cfg, 448).unwrap_err().to_string();
    assert!(!e.contains('\n'), "one line: {e}");
    e
}

/// The transformers-4 keys (`rope_scaling.type`, "su" as an alias) and the transformers-5
/// `rope_parameters` read alike; the attention factor is √(1 + ln(max/orig)/ln(orig)) unless
/// given.
#[test]
fn longrope_config_keys_of_both_transformers_generations() {
    let tf4 = LlamaConfig::from_json(&config(), 448).unwrap();
    let mut su = config();
    su["rope_scaling"]["type"] = "su".into();
    assert_eq!(LlamaConfig::from_json(&su, 448).unwrap(), tf4);
    let vl = json("florence-vl-phi-tiny/config.json");
    assert!(vl.get("rope_parameters").is_some() && vl.get("rope_scaling").is_none());
    let tf5 = LlamaConfig::from_json(&vl, 448).unwrap();
    assert_eq!(tf5.arch, Arch::Phi3);
    let j = json(&format!("{DIR}/expected.json"));
    let want = j["attention_factor"].as_f64().unwrap();
    for c in [&tf4, &tf5] {
        match &c.rope_scaling {
            Some(fvl_wgpu::ops::rope::RopeScaling::LongRope(l)) => {
                assert_eq!(l.original_max_position_embeddings, 32);
                assert!((l.attention_factor - want).abs() < 1e-12);
            }
            other => panic!("{other:?}"),
        }
    }
    let mut given = config();
    given["rope_scaling"]["attention_factor"] = 1.0.into();
    match LlamaConfig::from_json(&given, 448).unwrap().rope_scaling {
        Some(fvl_wgpu::ops::rope::RopeScaling::LongRope(l)) => assert_eq!(l.attention_factor, 1.0),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unsupported_rope_and_wrong_factor_lists_are_one_clear_line() {
    let mut c = config();
    c["rope_scaling"]["type"] = "yarn-ish".into();
    let e = err_of(&c);
    assert!(e.contains("rope type \"yarn-ish\" is not supported"), "{e}");
    let mut c = config();
    c["rope_scaling"]["long_factor"] = serde_json::json!([1.0, 2.0, 3.0]);
    let e = err_of(&c);
    assert!(e.contains("\"long_factor\" has 3 entries, expected head_dim/2 = 8"), "{e}");
    let mut c = config();
    c["rope_scaling"]["short_factor"] = "big".into();
    let e = err_of(&c);
    assert!(e.contains("\"short_factor\" is not a list of numbers"), "{e}");
}

/// A folder whose fused matrices disagree with its config (here intermediate_size says 40,
/// so gate_up_proj should have 80 rows, not 192) fails before loading with one line that
/// names the tensor, its shape and what the config implies.
#[test]
fn fused_shapes_that_disagree_with_the_config_are_one_clear_line() {
    let src = fixture_path(DIR);
    let dir = std::env::temp_dir().join(format!("fvl-phi3-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    let mut c = config();
    c["intermediate_size"] = 40.into();
    std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
    let ck = Checkpoint::open(&dir).unwrap();
    let e = LlamaConfig::from_checkpoint(&ck).unwrap_err().to_string();
    std::fs::remove_dir_all(&dir).ok();
    assert!(!e.contains('\n'), "{e}");
    assert!(
        e.contains("model.layers.0.mlp.gate_up_proj.weight: shape [192, 64] disagrees with config.json, which implies [80, 64]"),
        "{e}"
    );
}

/// `llava_phi`: the phi3 template, one `<s>` (the second chunk's dropped), the spliced
/// embeddings (51 positions: long factors) and 32 greedy ids with the padding masked.
#[test]
fn llava_phi_prompt_embeddings_and_answer_match_transformers() {
    const VL: &str = "florence-vl-phi-tiny";
    let expected = format!("{VL}/expected.safetensors");
    let gpu = common::gpu();
    let bart = fixture_path("florence2-a");
    let m = FlorenceVl::from_folder(&gpu, &fixture_path(VL), DType::F32, Some(&bart)).unwrap();
    let j = json(&format!("{VL}/expected.json"));
    assert_eq!(m.tokenizer.template, Template::Phi3);
    assert_eq!(m.llama.sampled_vocab as u64, j["tokenizer_size"].as_u64().unwrap());
    let question = j["question"].as_str().unwrap();
    assert_eq!(prompt_text(Template::Phi3, question), j["prompt_text"].as_str().unwrap());
    let prompt = m.prompt_ids(question).unwrap();
    let want: Vec<i64> = j["input_ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(prompt, want);

    let (shape, pixels) = fixture_tensor(&expected, "pixel_values");
    let pixels = Tensor::from_f32(&gpu, &shape[1..], DType::F32, &pixels, "pixels").unwrap();
    let mut g = Graph::new(&gpu);
    let p = g.external(&pixels);
    let f = m.fuse_image(&mut g, p).unwrap();
    let embeds = m.embed_prompt(&mut g, &prompt, f.projected).unwrap();
    g.keep(embeds);
    let exe = g.build().unwrap();
    exe.run(&gpu, &[]).unwrap();
    let x = exe.tensor(embeds);
    let (_, want_x) = fixture_tensor(&expected, "inputs_embeds");
    let err = max_rel_error(&x.read_f32(&gpu).unwrap(), &want_x);
    assert!(err <= F32_BUDGET, "inputs_embeds {err:e}");

    let answer = ids(&j["answer_ids_32_no_eos"]);
    let mut s = Session::new(&gpu, &m.llama, x.shape()[0] + 32, Pick::Greedy, 0).unwrap();
    let mut got = vec![s.prefill(Prompt::Embeddings(x), false).unwrap()];
    let (_, last) = fixture_tensor(&expected, "last_logits");
    let err = max_rel_error(&s.logits().unwrap(), &last);
    eprintln!("llava_phi last logits: max rel error {err:.2e}");
    assert!(err <= F32_BUDGET, "{err:e}");
    while got.len() < 32 {
        got.push(s.decode(None).unwrap());
    }
    assert_eq!(got, answer);
}

/// `infer --json` on the `llava_phi` fixture (the CLI decodes and pads the image itself)
/// answers with transformers' 32 greedy ids.
#[test]
fn cli_infer_on_llava_phi_gives_the_transformers_answer() {
    const VL: &str = "florence-vl-phi-tiny";
    let j = json(&format!("{VL}/expected.json"));
    let path = |rel: &str| fixture_path(rel).display().to_string();
    let (model, image, bart) = (path(VL), path("images/photo.png"), path("florence2-a"));
    let question = j["question"].as_str().unwrap();
    let (code, out, err) = fvl(&[
        "infer", "--model", &model, "--image", &image, "--florence-tokenizer", &bart,
        "--prompt", question, "--max-new-tokens", "32", "--quant", "f32", "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let got: Value = serde_json::from_str(out.trim()).expect(&out);
    assert_eq!(got["token_ids"], j["answer_ids_32_no_eos"], "{out}");
    assert_eq!(got["prompt_positions"], j["merged_length"]);
}

/// `sliding_window` 12 on phi3-a's weights (tools/make_fixtures.py `phi3sw`): past 12 tokens
/// each query sees only the last 12 keys, as transformers' sliding-window causal mask has it;
/// the prompt logits at every position and 32 cached greedy steps match.
#[test]
fn sliding_window_masks_like_transformers() {
    let gpu = common::gpu();
    let j = json(&format!("{DIR}/sliding_window.json"));
    let window = j["sliding_window"].as_u64().unwrap();
    let dir = std::env::temp_dir().join(format!("fvl-phi3-window-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(fixture_path(DIR)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let mut cfg = config();
    cfg["sliding_window"] = window.into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let m = load_from(&gpu, &dir, DType::F32);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(m.cfg.sliding_window, Some(window as usize));
    let (logits, got) = greedy(&gpu, &m, &ids(&j["prompt_ids"]));
    let (_, want) = fixture_tensor(&format!("{DIR}/sliding_window.safetensors"), "logits_long");
    let err = max_rel_error(&logits, &want);
    eprintln!("phi3-a sliding window {window}: prompt logits max rel error {err:.2e}");
    assert!(err <= F32_BUDGET, "{err:e}");
    assert_eq!(got, ids(&j["greedy_32_no_eos"]));
}
