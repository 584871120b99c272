//! Checkpoints as users download them (issue 10; tools/README.md, "hf-cache/ and published/"):
//! a Florence-2 repo as Microsoft publishes it (`pytorch_model.bin`, bare BART tokenizer,
//! remote-code config) and a Florence-VL repo naming its tower by hub id, both in a Hugging
//! Face cache. The commands run on them by folder (a snapshot folder) and by hub id, offline,
//! and must give transformers' ids and answers.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use fvl_wgpu::text::bart::BartTokenizer;
use fvl_wgpu::weights::florence2::TextConfig;
use fvl_wgpu::weights::florence_vl::FlorenceVlFolder;
use fvl_wgpu::weights::hub::Hub;

const CACHE: &str = "tests/fixtures/hf-cache";
const F2_REPO: &str = "fvl-test/Florence-2-tiny";
const FVL_REPO: &str = "fvl-test/florence-vl-tiny-sft";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The snapshot folder `refs/main` of `repo` points at in the fixture cache.
fn snapshot(repo: &str) -> PathBuf {
    let dir = root()
        .join(CACHE)
        .join(format!("models--{}", repo.replace('/', "--")));
    let sha = std::fs::read_to_string(dir.join("refs/main")).unwrap();
    dir.join("snapshots").join(sha.trim())
}

/// The fixture cache, offline.
fn hub() -> Hub {
    Hub::new(root().join(CACHE)).with_offline(true)
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn expected(name: &str) -> Value {
    json(&root().join("tests/fixtures/published").join(name))
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Runs the CLI with the fixture cache as the Hugging Face cache, offline.
fn fvl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fvl-wgpu"))
        .args(args)
        .env("HF_HUB_CACHE", root().join(CACHE))
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_ENDPOINT")
        .output()
        .expect("run fvl-wgpu");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a command that must succeed with `--json`; returns its JSON.
fn fvl_json(args: &[&str]) -> Value {
    let (code, out, err) = fvl(args);
    assert_eq!(code, 0, "{args:?}: {err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

/// `florence2` arguments for one run of florence2_generate.json in `mode`.
fn florence2_args(model: &str, run: &Value, mode: &str) -> Vec<String> {
    let image = root()
        .join("tests/fixtures/images")
        .join(run["image"].as_str().unwrap());
    let task = run["task"].as_str().unwrap();
    let (token, text) = task.split_at(task.find('>').unwrap() + 1);
    let mut args: Vec<String> = [
        "florence2",
        "--model",
        model,
        "--image",
        image.to_str().unwrap(),
        "--task",
        token,
        "--max-new-tokens",
        "20",
        "--precision",
        "f32",
        "--json",
    ]
    .map(String::from)
    .to_vec();
    if !text.is_empty() {
        args.extend(["--text".into(), text.into()]);
    }
    if mode == "greedy" {
        args.extend(["--num-beams", "1", "--no-repeat-ngram-size", "0"].map(String::from));
    }
    args
}

/// Every task in both modes: `greedy`, and `config` (the repo's own settings: 3 beams and no
/// repeated trigram from text_config, and no forced `<s>`).
fn check_florence2(model: &str, modes: &[&str]) {
    let gen = expected("florence2_generate.json");
    for run in gen["runs"].as_array().unwrap() {
        for &mode in modes {
            let args = florence2_args(model, run, mode);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let got = fvl_json(&args);
            let want = &run[mode];
            let what = format!("{model} {} {mode}", run["task"]);
            assert_eq!(got["token_ids"], want["ids"], "{what}");
            assert_eq!(got["text"], want["text"], "{what}");
            assert_eq!(got["result"], want["post_processed"], "{what}");
        }
    }
}

#[test]
fn bare_bart_tokenizer_gets_the_florence_tokens_in_the_processors_order() {
    let gen = expected("florence2_generate.json");
    let vocab = gen["vocab_size"].as_u64().unwrap() as usize;
    let tok = BartTokenizer::open(snapshot(F2_REPO))
        .unwrap()
        .check_vocab(vocab)
        .unwrap();
    assert_eq!(tok.len(), vocab);
    for run in gen["runs"].as_array().unwrap() {
        let task = run["task"].as_str().unwrap();
        assert_eq!(
            tok.encode_task(task).unwrap(),
            ids(&run["prompt_ids"]),
            "{task}"
        );
        for mode in ["greedy", "config"] {
            let text = tok.decode(&ids(&run[mode]["ids"])).unwrap();
            assert_eq!(text, run[mode]["text"].as_str().unwrap(), "{task} {mode}");
        }
    }
    let err = BartTokenizer::open(snapshot(F2_REPO))
        .unwrap()
        .check_vocab(vocab + 1)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains(&vocab.to_string()) && err.contains(&(vocab + 1).to_string()),
        "{err}"
    );
    assert!(err.contains("tokenizer.json"), "{err}");
}

#[test]
fn generation_settings_are_read_as_transformers_reads_them() {
    let dir = snapshot(F2_REPO);
    let cfg = json(&dir.join("config.json"));
    let gen_cfg = json(&dir.join("generation_config.json"));
    // The top level holds the wrong ids of early Microsoft configs; they must not be used.
    assert_eq!(cfg["bos_token_id"], 2);
    let t = TextConfig::from_json(&cfg["text_config"], &cfg, &gen_cfg).unwrap();
    let want = &expected("florence2_generate.json")["settings_from_configs"];
    let id = |k: &str| want[k].as_u64().map(|v| v as u32);
    assert_eq!(
        (
            Some(t.bos_token_id),
            Some(t.eos_token_id),
            Some(t.pad_token_id),
            Some(t.decoder_start_token_id)
        ),
        (
            id("bos_token_id"),
            id("eos_token_id"),
            id("pad_token_id"),
            id("decoder_start_token_id")
        )
    );
    assert_eq!(t.forced_bos_token_id, None, "neither file asks for <s>");
    assert_eq!(t.forced_eos_token_id, id("forced_eos_token_id"));
    assert_eq!(
        t.generation.num_beams as u64,
        want["num_beams"].as_u64().unwrap()
    );
    assert_eq!(
        t.generation.no_repeat_ngram_size as u64,
        want["no_repeat_ngram_size"].as_u64().unwrap()
    );
    assert_eq!(t.generation.early_stopping, want["early_stopping"] == true);
    assert_eq!(t.generation.max_length, None);

    // generation_config.json wins over text_config, key by key.
    let over = serde_json::json!({"num_beams": 5, "forced_bos_token_id": 0, "max_length": 30});
    let t = TextConfig::from_json(&cfg["text_config"], &cfg, &over).unwrap();
    assert_eq!(
        (
            t.generation.num_beams,
            t.forced_bos_token_id,
            t.generation.max_length
        ),
        (5, Some(0), Some(30))
    );
    assert_eq!(t.generation.no_repeat_ngram_size, 3, "text_config's");
}

#[test]
fn microsoft_style_repo_by_folder_answers_like_transformers() {
    check_florence2(snapshot(F2_REPO).to_str().unwrap(), &["greedy", "config"]);
}

#[test]
fn florence_vl_by_folder_takes_its_tower_from_the_hub_id() {
    let j = expected("florence_vl_expected.json");
    let model = snapshot(FVL_REPO);
    let folder = FlorenceVlFolder::open_with(&model, Some(&hub())).unwrap();
    assert_eq!(folder.tower_dir, snapshot(F2_REPO));
    assert_eq!(
        folder.florence2_tokenizer.as_deref(),
        Some(&*snapshot(F2_REPO))
    );
    assert_eq!(
        (folder.preprocess.height, folder.preprocess.width),
        (64, 64),
        "the tower's preprocessor config"
    );
    let (prompt_ids, len) = folder.encoder_prompt_ids(None).unwrap();
    let want: Vec<u32> = j["encoder_prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(ids)
        .collect();
    assert_eq!(
        (prompt_ids, len),
        (want, j["encoder_prompt_ids"][0].as_array().unwrap().len())
    );

    check_infer(model.to_str().unwrap());
}

/// `infer` gives the reference's 16 greedy ids.
fn check_infer(model: &str) {
    let j = expected("florence_vl_expected.json");
    let image = root().join("tests/fixtures/images/photo.png");
    let got = fvl_json(&[
        "infer",
        "--model",
        model,
        "--image",
        image.to_str().unwrap(),
        "--prompt",
        j["question"].as_str().unwrap(),
        "--max-new-tokens",
        "16",
        "--quant",
        "f32",
        "--json",
    ]);
    assert_eq!(got["token_ids"], j["answer_ids_16_no_eos"], "{model}");
    assert_eq!(got["prompt_positions"], j["merged_length"], "{model}");
}

/// The same commands by hub id, from the cache, with HF_HUB_OFFLINE=1: nothing is fetched
/// and nothing in the cache changes.
#[test]
fn by_hub_id_offline_the_answers_are_the_same() {
    let listing = || {
        let mut files: Vec<_> = walk(&root().join(CACHE));
        files.sort();
        files
    };
    let before = listing();
    check_florence2(F2_REPO, &["config"]);
    check_infer(FVL_REPO);
    assert_eq!(listing(), before, "the cache was written to");
}

/// Every path under `dir`, symlinks not followed.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() && !path.is_symlink() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

/// Issue 15 item 8: `florence2` and `features` take a Florence-VL folder and use its tower,
/// with the tower's tokenizer and preprocessor config (64 px here, not 768).
#[test]
fn florence2_and_features_accept_a_florence_vl_folder() {
    let model = snapshot(FVL_REPO);
    let model = model.to_str().unwrap();
    // The tower is the Florence-2 repo, so its answers are that repo's.
    let gen = expected("florence2_generate.json");
    let run = &gen["runs"][1];
    assert_eq!(run["task"], "<OD>");
    let args = florence2_args(model, run, "greedy");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let got = fvl_json(&args);
    assert_eq!(got["token_ids"], run["greedy"]["ids"]);
    assert_eq!(got["result"], run["greedy"]["post_processed"]);

    let out = std::env::temp_dir().join(format!(
        "fvl-published-features-{}.safetensors",
        std::process::id()
    ));
    let image = root().join("tests/fixtures/images/photo.png");
    let got = fvl_json(&[
        "features",
        "--model",
        model,
        "--image",
        image.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(got["pixel_values"], serde_json::json!([1, 3, 64, 64]));
    assert_eq!(got["image_features"], serde_json::json!([1, 5, 32]));
    assert!(got["tensors"].as_array().unwrap().len() == 5, "{got}");
    std::fs::remove_file(out).ok();
}

/// A config may name its tower only inside or beside the model folder, or by hub id.
#[test]
fn tower_references_leaving_the_folder_are_refused() {
    let tmp = std::env::temp_dir().join(format!("fvl-published-tower-{}", std::process::id()));
    let model = tmp.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for e in std::fs::read_dir(snapshot(FVL_REPO)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), model.join(e.file_name())).unwrap();
    }
    let cfg = json(&model.join("config.json"));
    let says =
        "is neither a hub id (owner/name) nor the name of a Florence-2 folder beside the model";
    for tower in [
        "../../etc",
        "/etc",
        "",
        "no such tower!",
        "owner/name/extra",
    ] {
        let mut c = cfg.clone();
        c["mm_vision_tower"] = tower.into();
        std::fs::write(model.join("config.json"), c.to_string()).unwrap();
        let err = FlorenceVlFolder::open_with(&model, Some(&hub()))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains(says) && err.contains("mm_vision_tower"),
            "{tower:?}: {err}"
        );
        assert!(err.contains("config.json"), "{tower:?}: {err}");
    }
    std::fs::remove_dir_all(tmp).ok();
}

/// Issue 15 item 6: a quantized copy of a Florence-VL folder whose tower sits beside it loads
/// from anywhere, and `infer` finds out by itself that it is quantized.
#[test]
fn quantized_florence_vl_folder_loads_anywhere() {
    let tmp = std::env::temp_dir().join(format!("fvl-published-q-{}", std::process::id()));
    let out = tmp.join("elsewhere/q4");
    std::fs::create_dir_all(tmp.join("elsewhere")).unwrap();
    let src = root().join("tests/fixtures/florence-vl-tiny");
    let (code, _, err) = fvl(&[
        "quantize",
        "--model",
        src.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quant",
        "q4",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.join("florence2-a-original/config.json").is_file());
    let image = root().join("tests/fixtures/images/photo.png");
    let bart = root().join("tests/fixtures/florence2-a");
    let got = fvl_json(&[
        "infer",
        "--model",
        out.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--florence-tokenizer",
        bart.to_str().unwrap(),
        "--prompt",
        "What is shown in the image?",
        "--max-new-tokens",
        "4",
        "--json",
    ]);
    assert_eq!(got["quant"], "q4", "{got}");
    assert_eq!(got["token_ids"].as_array().unwrap().len(), 4, "{got}");
    std::fs::remove_dir_all(tmp).ok();
}
