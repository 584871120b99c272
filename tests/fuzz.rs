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
    "0", "-1", "1", "65505", "4294967296", "18446744073709551616", "1e309", "-0.0", "NaN",
    "\"abc\"", "null", "[]", "{}", "99999999999999999999999",
];

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus").join(target);
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
                v.splice(to..(to + n).min(v.len()), other[from..from + n].iter().copied());
            }
            6 => {
                // Replace the run of digits at or after `at` by an extreme value.
                if let Some(s) = (at..v.len()).find(|&i| v[i].is_ascii_digit()) {
                    let e = (s..v.len()).find(|&i| !v[i].is_ascii_digit()).unwrap_or(v.len());
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

/// Runs `run` on the seeds and then on mutated inputs; fails on any panic.
fn fuzz(target: &str, run: impl Fn(&[u8])) {
    let iters: usize = std::env::var("FVL_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let seeds = corpus(target);
    let mut rng = Rng::new(
        std::env::var("FVL_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1),
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
    assert!(crashes.is_empty(), "{target}: inputs that panicked: {crashes:?}");
}

/// A scratch model folder for the file-based targets.
fn scratch(target: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fvl-fuzz-{target}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const LLAMA_CONFIG: &str = r#"{"hidden_size": 48, "num_attention_heads": 4, "num_hidden_layers": 2, "intermediate_size": 80, "max_position_embeddings": 64}"#;

#[test]
fn fuzz_safetensors_header() {
    let dir = scratch("safetensors");
    std::fs::write(dir.join("config.json"), LLAMA_CONFIG).unwrap();
    fuzz("safetensors", |bytes| {
        std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
        if let Ok(ck) = fvl_wgpu::weights::Checkpoint::open(&dir) {
            let names: Vec<String> = ck.names().map(String::from).collect();
            for name in names {
                let shape = ck.info(&name).unwrap().0.to_vec();
                let _ = ck.load_f32(&name, &shape);
            }
        }
    });
}

#[test]
fn fuzz_safetensors_index() {
    let dir = scratch("index");
    for e in std::fs::read_dir(common::fixture_path("llama-a")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    fuzz("index", |bytes| {
        std::fs::write(dir.join("model.safetensors.index.json"), bytes).unwrap();
        let _ = fvl_wgpu::weights::Checkpoint::open(&dir);
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
