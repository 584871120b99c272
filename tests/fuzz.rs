//! In-process fuzzing on the stable toolchain: every parser that takes outside bytes gets
//! inputs mutated from the committed seeds in `tests/fuzz/corpus/TARGET/` (bit flips, byte
//! edits, block copies and deletions, splices between seeds, numbers swapped for extreme
//! ones). A target passes when no input panics; each input runs under `catch_unwind`, and
//! a panicking one is written to `tests/fuzz/crashes/` to be added to the seeds.
//!
//! `cargo test` runs a short pass (FVL_FUZZ_ITERS, default 300 inputs a target);
//! `tools/fuzz.sh` runs 10^6 and prints execs/s, the slowest input and peak memory.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Rng;

/// Extreme values swapped in for numbers found in text inputs.
const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "65505",
    "4294967296",
    "18446744073709551616",
    "1e309",
    "-0.0",
    "NaN",
    "\"abc\"",
    "null",
    "[]",
    "{}",
    "99999999999999999999999",
];

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let seeds: Vec<_> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

/// One mutation of `seed` (a few stacked edits), `other` a second seed for splicing.
fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    let edits = 1 + rng.next_u32() % 4;
    for _ in 0..edits {
        let len = v.len().max(1);
        let at = rng.next_u32() as usize % len;
        match rng.next_u32() % 8 {
            0 if !v.is_empty() => v[at] ^= 1 << (rng.next_u32() % 8),
            1 if !v.is_empty() => v[at] = rng.next_u32() as u8,
            2 => v.insert(at.min(v.len()), rng.next_u32() as u8),
            3 if !v.is_empty() => {
                let n = (rng.next_u32() as usize % 16).min(v.len() - at);
                v.drain(at..at + n);
            }
            4 if !v.is_empty() => {
                let n = (rng.next_u32() as usize % 64).min(v.len() - at);
                let block = v[at..at + n].to_vec();
                let to = rng.next_u32() as usize % (v.len() + 1);
                v.splice(to..to, block);
            }
            5 if !other.is_empty() => {
                let from = rng.next_u32() as usize % other.len();
                let n = (rng.next_u32() as usize % 256).min(other.len() - from);
                let to = at.min(v.len());
                v.splice(
                    to..(to + n).min(v.len()),
                    other[from..from + n].iter().copied(),
                );
            }
            6 => {
                // Replace the run of digits at or after `at` by an extreme value.
                if let Some(s) = (at..v.len()).find(|&i| v[i].is_ascii_digit()) {
                    let e = (s..v.len())
                        .find(|&i| !v[i].is_ascii_digit())
                        .unwrap_or(v.len());
                    let n = NUMBERS[rng.next_u32() as usize % NUMBERS.len()];
                    v.splice(s..e, n.bytes());
                }
            }
            _ if v.len() >= 8 => {
                // A little-endian length or offset field set to an edge value.
                let at = at.min(v.len() - 8);
                let x: u64 = match rng.next_u32() % 4 {
                    0 => 0,
                    1 => u64::MAX,
                    2 => rng.next_u32() as u64,
                    _ => (v.len() as u64).wrapping_add(rng.next_u32() as u64 % 16),
                };
                v[at..at + 8].copy_from_slice(&x.to_le_bytes());
            }
            _ => {}
        }
    }
    v
}

/// Peak resident memory of this process in KiB (Linux), 0 where unknown.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A refused request must be a 4xx with a message, as the server sends it.
fn check_refusal(e: &fvl_wgpu::server::api::ApiError) {
    assert!((400..500).contains(&e.status), "status {}", e.status);
    assert!(!e.message.is_empty());
    assert!(e.to_json()["error"]["message"].is_string());
}

/// Runs `run` on the seeds and then on mutated inputs; fails on any panic.
fn fuzz(target: &str, run: impl Fn(&[u8])) {
    let iters: usize = std::env::var("FVL_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let seeds = corpus(target);
    let mut rng = Rng::new(
        std::env::var("FVL_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1),
    );
    // Panics are caught and reported here, not printed once per input.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut crashes = Vec::new();
    let (mut worst, mut worst_len) = (Duration::ZERO, 0);
    let start = Instant::now();
    for i in 0..seeds.len() + iters {
        let input = match seeds.get(i) {
            Some(s) => s.clone(),
            None => {
                let a = &seeds[rng.next_u32() as usize % seeds.len()];
                let b = &seeds[rng.next_u32() as usize % seeds.len()];
                mutate(&mut rng, a, b)
            }
        };
        let t = Instant::now();
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&input))).is_ok();
        let dt = t.elapsed();
        if dt > worst {
            (worst, worst_len) = (dt, input.len());
        }
        if !ok {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/crashes");
            std::fs::create_dir_all(&dir).ok();
            let path = dir.join(format!("{target}-{i}"));
            std::fs::write(&path, &input).ok();
            crashes.push(path.display().to_string());
        }
    }
    std::panic::set_hook(hook);
    let secs = start.elapsed().as_secs_f64();
    let n = seeds.len() + iters;
    eprintln!(
        "fuzz {target}: {n} inputs in {secs:.1} s = {:.0} execs/s, crashes {}, slowest {:.2} ms ({worst_len} bytes), peak RSS {} MiB",
        n as f64 / secs,
        crashes.len(),
        worst.as_secs_f64() * 1e3,
        peak_rss_kib() / 1024
    );
    assert!(
        crashes.is_empty(),
        "{target}: inputs that panicked: {crashes:?}"
    );
}

const LLAMA_CONFIG: &str = r#"{"hidden_size": 48, "num_attention_heads": 4, "num_hidden_layers": 2, "intermediate_size": 80, "max_position_embeddings": 64}"#;

/// `model.safetensors` through `Checkpoint::from_memory` (the same header parser and
/// validation as a folder, without writing files), then every tensor loaded.
#[test]
fn fuzz_safetensors_header() {
    fuzz("safetensors", |bytes| {
        let files = [
            ("config.json".to_string(), LLAMA_CONFIG.as_bytes().to_vec()),
            ("model.safetensors".to_string(), bytes.to_vec()),
        ];
        if let Ok(ck) = fvl_wgpu::weights::Checkpoint::from_memory(files) {
            let names: Vec<String> = ck.names().map(String::from).collect();
            for name in names {
                let shape = ck.info(&name).unwrap().0.to_vec();
                let _ = ck.load_f32(&name, &shape);
            }
        }
    });
}

/// `model.safetensors.index.json` over the shards its seed names, in memory: each shard holds
/// the tensors the seed maps to it, as one f32 each (small, so an input costs the parse).
#[test]
fn fuzz_safetensors_index() {
    let seed = &corpus("index")[0];
    let index: serde_json::Value = serde_json::from_slice(seed).unwrap();
    let mut by_file: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (name, file) in index["weight_map"].as_object().unwrap() {
        let file = file.as_str().unwrap().to_string();
        by_file.entry(file).or_default().push(name.clone());
    }
    let one = 1f32.to_le_bytes();
    let mut files = vec![("config.json".to_string(), LLAMA_CONFIG.as_bytes().to_vec())];
    for (file, names) in by_file {
        let views = names.iter().map(|n| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &one);
            (n.clone(), view.unwrap())
        });
        files.push((file, safetensors::serialize(views, None).unwrap()));
    }
    fuzz("index", |bytes| {
        let mut files = files.clone();
        files.push(("model.safetensors.index.json".to_string(), bytes.to_vec()));
        let _ = fvl_wgpu::weights::Checkpoint::from_memory(files);
    });
}

#[test]
fn fuzz_configs() {
    use fvl_wgpu::weights::florence2::{TextConfig, VisionConfig};
    fuzz("config", |bytes| {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
            return;
        };
        let _ = fvl_wgpu::weights::llama::LlamaConfig::from_json(&v, 517);
        // The same bytes also stand in for generation_config.json, whose settings win over
        // text_config's.
        for section in [&v, &v["vision_config"], &v["text_config"]] {
            let _ = VisionConfig::from_json(section, &v);
            let _ = TextConfig::from_json(section, &v, &v);
        }
    });
}

#[test]
fn fuzz_preprocessor_config() {
    fuzz("preprocessor", |bytes| {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) {
            let _ = fvl_wgpu::image::PreprocessConfig::from_json(&v, "preprocessor_config.json");
        }
    });
}

#[test]
fn fuzz_image_decoding() {
    fuzz("image", |bytes| {
        if let Ok(img) = fvl_wgpu::image::decode_image(bytes, "fuzz") {
            assert_eq!(img.data.len(), img.width * img.height * 3);
        }
    });
}

#[test]
fn fuzz_torch_pickle() {
    fuzz("torch", |bytes| {
        let _ = fvl_wgpu::weights::torch::parse(bytes);
    });
}

#[test]
fn fuzz_chat_request() {
    use fvl_wgpu::server::api::{parse_chat_request, MAX_MESSAGES, MAX_STOP};
    fuzz("chat", |bytes| match parse_chat_request(bytes) {
        Ok(r) => {
            assert!((1..=MAX_MESSAGES).contains(&r.messages.len()));
            assert!(r.stop.len() <= MAX_STOP && r.stop.iter().all(|s| !s.is_empty()));
        }
        Err(e) => check_refusal(&e),
    });
}

#[test]
fn fuzz_florence2_request() {
    use fvl_wgpu::server::api::{parse_florence2_request, ImageRef};
    fuzz("florence2", |bytes| match parse_florence2_request(bytes) {
        Ok(r) => assert!(!matches!(&r.image, ImageRef::Data(d) if d.is_empty())),
        Err(e) => check_refusal(&e),
    });
}

/// Image URLs (`data:` base64, `file://`, paths) and the base64 decoder on its own.
#[test]
fn fuzz_data_uri() {
    use fvl_wgpu::server::api::{decode_base64, parse_image_url};
    fuzz("data_uri", |bytes| {
        let text = String::from_utf8_lossy(bytes);
        if let Some(data) = decode_base64(&text) {
            // Four digits carry three bytes.
            assert!(data.len() <= text.len() / 4 * 3 + 2);
        }
        if let Err(e) = parse_image_url(&text, "image") {
            check_refusal(&e);
        }
    });
}

/// One line of `fvl-wgpu mcp` input, for both kinds of model, with a stand-in for the GPU
/// work: every answer is a JSON-RPC 2.0 response.
#[test]
fn fuzz_mcp_message() {
    use fvl_wgpu::server::mcp::{answer_line, Kind};
    fuzz("mcp", |bytes| {
        let line = String::from_utf8_lossy(bytes);
        for kind in [Kind::Florence2, Kind::FlorenceVl] {
            let mut run = |_call| Ok(serde_json::json!({"content": []}));
            let Some(answer) = answer_line(kind, &line, &mut run) else {
                continue;
            };
            let all = match answer {
                serde_json::Value::Array(all) => all,
                one => vec![one],
            };
            for a in all {
                assert_eq!(a["jsonrpc"], "2.0");
                assert!(a["result"].is_object() != a["error"].is_object(), "{a}");
            }
        }
    });
}
