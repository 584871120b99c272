//! Florence-VL end to end on `florence-vl-tiny` (tools/README.md): the fused and projected
//! features, the prompt ids and embeddings, and the greedy answer against transformers.

mod common;

use common::{fixture_path, fixture_tensor, max_rel_error};
use fvl_wgpu::gpu::{DType, Gpu, Graph, Tensor};
use fvl_wgpu::model::florence_vl::{prompt_text, FlorenceVl};
use fvl_wgpu::model::generate::{Pick, Prompt, Session, Stop};
use fvl_wgpu::pipeline::{self, AskOptions, ImageInput};
use fvl_wgpu::text::chat::Template;

const DIR: &str = "florence-vl-tiny";
const EXPECTED: &str = "florence-vl-tiny/expected.safetensors";
/// f32 budget: max abs difference over the largest reference magnitude.
const F32_BUDGET: f64 = 1e-4;

fn expected_json() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture_path(&format!("{DIR}/expected.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The prompt embeddings (text rows with the projected image rows spliced in) for `ids`
/// over `pixels`, computed in one graph.
fn prompt_embeddings(gpu: &Gpu, m: &FlorenceVl, pixels: &Tensor, ids: &[i64]) -> Tensor {
    let mut g = Graph::new(gpu);
    let p = g.external(pixels);
    let f = m.fuse_image(&mut g, p).unwrap();
    let embeds = m.embed_prompt(&mut g, ids, f.projected).unwrap();
    g.keep(embeds);
    let exe = g.build().unwrap();
    exe.run(gpu, &[]).unwrap();
    exe.tensor(embeds).clone()
}

/// The model in f32, with the BART tokenizer of `florence2-a` (the one the fixture used).
fn load(gpu: &Gpu) -> FlorenceVl {
    let bart = fixture_path("florence2-a");
    FlorenceVl::from_folder(gpu, &fixture_path(DIR), DType::F32, Some(&bart)).unwrap()
}

/// [`load`] behind the library's pipeline layer (which owns its GPU).
fn load_pipeline() -> pipeline::FlorenceVl {
    let bart = fixture_path("florence2-a");
    pipeline::FlorenceVl::load(common::gpu(), &fixture_path(DIR), DType::F32, Some(&bart)).unwrap()
}

#[test]
fn fused_and_projected_features_match_transformers() {
    let gpu = common::gpu();
    let m = load(&gpu);
    let (shape, pixels) = fixture_tensor(EXPECTED, "pixel_values");
    let pixels = Tensor::from_f32(&gpu, &shape[1..], DType::F32, &pixels, "pixels").unwrap();
    let mut g = Graph::new(&gpu);
    let p = g.external(&pixels);
    let f = m.fuse_image(&mut g, p).unwrap();
    for id in [f.v, f.fused, f.projected] {
        g.keep(id);
    }
    let exe = g.build().unwrap();
    exe.run(&gpu, &[]).unwrap();
    for (name, id) in [
        ("image_features", f.v),
        ("fused", f.fused),
        ("projected", f.projected),
    ] {
        let (shape, want) = fixture_tensor(EXPECTED, name);
        assert_eq!(exe.tensor(id).shape(), &shape[1..], "{name}");
        let err = max_rel_error(&exe.tensor(id).read_f32(&gpu).unwrap(), &want);
        eprintln!("{name}: max rel error {err:.2e}");
        assert!(err <= F32_BUDGET, "{name}: {err:e}");
    }
}

/// The llama3 template, its ids with the double BOS and the −200 marker, the embeddings with
/// the projected rows spliced in, and 16 greedy ids from a prefill on those embeddings (one
/// submit per token).
#[test]
fn prompt_embeddings_and_greedy_answer_match_transformers() {
    let gpu = common::gpu();
    let m = load(&gpu);
    let j = expected_json();
    let question = j["question"].as_str().unwrap();
    assert_eq!(
        prompt_text(Template::Llama3, question),
        j["prompt_text"].as_str().unwrap()
    );
    let ids = m.prompt_ids(question).unwrap();
    let want: Vec<i64> = j["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(ids, want);

    let (shape, pixels) = fixture_tensor(EXPECTED, "pixel_values");
    let pixels = Tensor::from_f32(&gpu, &shape[1..], DType::F32, &pixels, "pixels").unwrap();
    let x = &prompt_embeddings(&gpu, &m, &pixels, &ids);
    let (shape, want) = fixture_tensor(EXPECTED, "inputs_embeds");
    assert_eq!(x.shape(), &shape[1..]);
    assert_eq!(shape[1] as u64, j["merged_length"].as_u64().unwrap());
    let err = max_rel_error(&x.read_f32(&gpu).unwrap(), &want);
    eprintln!("inputs_embeds: max rel error {err:.2e}");
    assert!(err <= F32_BUDGET, "{err:e}");

    let answer: Vec<u32> = j["answer_ids_16_no_eos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let mut s = Session::new(&gpu, &m.llama, shape[1] + answer.len(), Pick::Greedy, 0).unwrap();
    let mut got = vec![s.prefill(Prompt::Embeddings(x), false).unwrap()];
    let (_, last) = fixture_tensor(EXPECTED, "last_logits");
    let err = max_rel_error(&s.logits().unwrap(), &last);
    eprintln!("last logits: max rel error {err:.2e}");
    assert!(err <= F32_BUDGET, "{err:e}");
    let submits = gpu.submits();
    while got.len() < answer.len() {
        got.push(s.decode(None).unwrap());
    }
    assert_eq!(gpu.submits() - submits, answer.len() as u64 - 1);
    assert_eq!(got, answer);
}

/// Without the mean token the image is 4 rows (of the fixture's 5) and the prompt one shorter.
#[test]
fn dropping_the_mean_token_keeps_the_grid_rows() {
    let gpu = common::gpu();
    let mut m = load(&gpu);
    m.keep_mean_token = false;
    let (shape, pixels) = fixture_tensor(EXPECTED, "pixel_values");
    let pixels = Tensor::from_f32(&gpu, &shape[1..], DType::F32, &pixels, "pixels").unwrap();
    let mut g = Graph::new(&gpu);
    let p = g.external(&pixels);
    let f = m.fuse_image(&mut g, p).unwrap();
    g.keep(f.fused);
    let exe = g.build().unwrap();
    exe.run(&gpu, &[]).unwrap();
    let (_, want) = fixture_tensor(EXPECTED, "fused");
    let got = exe.tensor(f.fused).read_f32(&gpu).unwrap();
    assert_eq!(exe.tensor(f.fused).shape(), &[4, 128]);
    assert!(max_rel_error(&got, &want[128..]) <= F32_BUDGET);
    let ids = m.prompt_ids("What is shown in the image?").unwrap();
    assert_eq!(m.merged_len(&ids, 4).unwrap(), 89);
}

/// A question longer than tokenizer_model_max_length allows is refused with one clear line.
#[test]
fn a_prompt_over_tokenizer_model_max_length_is_refused() {
    let gpu = common::gpu();
    let m = load(&gpu);
    let ids = m.prompt_ids(&"word ".repeat(3000)).unwrap();
    let err = m.merged_len(&ids, 5).unwrap_err().to_string();
    assert!(err.contains("tokenizer_model_max_length = 2048"), "{err}");
    assert!(!err.contains('\n'), "{err}");
    let err = m.prompt_ids("<image> twice").unwrap_err().to_string();
    assert!(err.contains("<image>"), "{err}");
}

fn infer(args: &[&str]) -> (i32, String, String) {
    infer_with_env(args, &[])
}

fn infer_with_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fvl-wgpu"))
        .arg("infer")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run fvl-wgpu");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `--model`, `--image`, `--florence-tokenizer` for the fixture, then `extra`.
fn fixture_args(model: &str, extra: &[&str]) -> Vec<String> {
    let path = |rel: &str| fixture_path(rel).display().to_string();
    let mut args = vec![
        "--model".into(),
        model.to_string(),
        "--image".into(),
        path("images/photo.png"),
        "--florence-tokenizer".into(),
        path("florence2-a"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// A temporary copy of the fixture folder without the files in `skip`, with the tower folder
/// beside it when `with_tower`; returns (the temporary root, the model folder).
fn fixture_copy(
    tag: &str,
    skip: &[&str],
    with_tower: bool,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let tmp = std::env::temp_dir().join(format!("fvl-{tag}-{}", std::process::id()));
    let model = tmp.join(DIR);
    std::fs::create_dir_all(&model).unwrap();
    for e in std::fs::read_dir(fixture_path(DIR)).unwrap() {
        let e = e.unwrap();
        if !skip.iter().any(|s| e.file_name() == *s) {
            std::fs::copy(e.path(), model.join(e.file_name())).unwrap();
        }
    }
    if with_tower {
        std::os::unix::fs::symlink(
            fixture_path("florence2-a-original"),
            tmp.join("florence2-a-original"),
        )
        .unwrap();
    }
    (tmp, model)
}

/// The CLI decodes the image itself (pad to square, bicubic resize) and still gives the 16
/// greedy ids of transformers — also on a device opened with the portable limits
/// (`FVL_PORTABLE_LIMITS`: 256 invocations, 16 KiB workgroup memory, 8 storage buffers per
/// stage, 128 MiB bindings), the whole model's kernels within what every desktop GPU offers.
#[test]
fn cli_infer_json_gives_the_greedy_answer() {
    for portable in ["0", "1"] {
        cli_infer_gives_the_greedy_answer(&[("FVL_PORTABLE_LIMITS", portable)]);
    }
}

fn cli_infer_gives_the_greedy_answer(env: &[(&str, &str)]) {
    let j = expected_json();
    let model = fixture_path(DIR).display().to_string();
    let args = fixture_args(
        &model,
        &[
            "--prompt",
            j["question"].as_str().unwrap(),
            "--max-new-tokens",
            "16",
            "--quant",
            "f32",
            "--json",
        ],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = infer_with_env(&args, env);
    assert_eq!(code, 0, "{env:?}: {err}");
    let got: serde_json::Value = serde_json::from_str(out.trim()).expect(&out);
    assert_eq!(got["token_ids"], j["answer_ids_16_no_eos"], "{env:?}");
    let portable = env.iter().any(|&(k, v)| k == "FVL_PORTABLE_LIMITS" && v == "1");
    assert_eq!(err.contains("portable limits"), portable, "{err}");
    assert_eq!(got["prompt_positions"], j["merged_length"]);
    for k in ["vision_ms", "prefill_ms", "decode_tokens_per_s"] {
        assert!(got["timings"][k].as_f64().is_some(), "{k}: {out}");
    }
    assert!(got["answer"].is_string());
}

/// A folder whose index lacks the first projector weight, and a question that overflows
/// tokenizer_model_max_length: one line each, non-zero exit.
#[test]
fn cli_infer_bad_inputs_are_one_clear_line() {
    let (tmp, model) = fixture_copy("infer", &["model.safetensors.index.json"], true);
    let src = fixture_path(DIR);
    let index = std::fs::read_to_string(src.join("model.safetensors.index.json")).unwrap();
    let mut index: serde_json::Value = serde_json::from_str(&index).unwrap();
    let missing = "model.mm_projector.encoder_mlp.0.weight";
    index["weight_map"].as_object_mut().unwrap().remove(missing);
    std::fs::write(
        model.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let args = fixture_args(
        &model.display().to_string(),
        &["--prompt", "Hi", "--quant", "f32"],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = infer(&args);
    std::fs::remove_dir_all(&tmp).ok();
    assert_ne!(code, 0);
    let line = err.lines().last().unwrap();
    assert!(
        line.starts_with("error: ") && line.contains(missing),
        "{err}"
    );

    let long = "word ".repeat(3000);
    let model = fixture_path(DIR).display().to_string();
    let args = fixture_args(&model, &["--prompt", &long, "--quant", "f32"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = infer(&args);
    assert_ne!(code, 0);
    let line = err.lines().last().unwrap();
    assert!(
        line.starts_with("error: ") && line.contains("tokenizer_model_max_length = 2048"),
        "{err}"
    );
}

/// The library API: load once, ask several times; a cancelled answer stops early and the
/// next question still gets the full reference answer.
#[test]
fn ask_streams_cancels_and_stays_usable() {
    let m = load_pipeline();
    let j = expected_json();
    let question = j["question"].as_str().unwrap();
    let path = fixture_path("images/photo.png");
    let image = ImageInput::Path(&path);
    let opts = AskOptions {
        max_new_tokens: 16,
        ..Default::default()
    };
    let mut pieces = 0;
    let cancelled = m
        .ask(image, question, &opts, &mut |_| {
            pieces += 1;
            pieces < 2
        })
        .unwrap();
    assert_eq!(cancelled.stopped, Stop::Cancelled);
    assert!(cancelled.token_ids.len() < 16);
    let mut streamed = String::new();
    let full = m
        .ask(image, question, &opts, &mut |piece| {
            streamed += piece;
            true
        })
        .unwrap();
    assert_eq!(serde_json::json!(full.token_ids), j["answer_ids_16_no_eos"]);
    assert_eq!(streamed, full.text);
    assert_eq!(
        &full.token_ids[..cancelled.token_ids.len()],
        &cancelled.token_ids[..]
    );
}

/// A model folder whose tower folder or Llama tokenizer is missing: one line naming it.
#[test]
fn missing_tower_or_tokenizer_is_one_clear_line() {
    for missing in ["tower", "tokenizer.json"] {
        let (tmp, model) = fixture_copy(
            &format!("missing-{missing}"),
            &[missing],
            missing != "tower",
        );
        let args = fixture_args(
            &model.display().to_string(),
            &["--prompt", "Hi", "--quant", "f32"],
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, err) = infer(&args);
        std::fs::remove_dir_all(&tmp).ok();
        assert_ne!(code, 0, "{missing}");
        let line = err.lines().last().unwrap();
        let named = if missing == "tower" {
            "florence2-a-original"
        } else {
            "tokenizer.json"
        };
        assert!(
            line.starts_with("error: ") && line.contains(named),
            "{missing}: {err}"
        );
    }
}

/// A follow-up question reuses the cache (image rows and the first turn): its answer equals
/// recomputing the whole conversation in one prefill from the same ids and image rows.
#[test]
fn follow_up_reuses_the_cache_like_a_full_recompute() {
    use fvl_wgpu::model::florence2::VisionTower;
    use fvl_wgpu::model::generate::{Pick, Prompt, Session};
    let vl = load_pipeline();
    let (gpu, m) = (&vl.gpu, &vl.model);
    let image = fixture_path("images/photo.png");
    let opts = AskOptions {
        max_new_tokens: 6,
        ..Default::default()
    };
    let (mut chat, first) = vl
        .chat(
            ImageInput::Path(&image),
            "What is this?",
            &opts,
            &mut |_| true,
        )
        .unwrap();
    let second = chat.ask("And the colours?", &opts, &mut |_| true).unwrap();
    assert!(!second.token_ids.is_empty());

    // The same conversation as ids: turn 1 (with the image marker), its answer, the token that
    // closed it, the follow-up's headers; then one prefill of all of it.
    let mut ids = m.prompt_ids("What is this?").unwrap();
    ids.extend(first.token_ids.iter().map(|&i| i as i64));
    let close = if first.stopped == Stop::Eos {
        ""
    } else {
        "<|eot_id|>"
    };
    let follow = format!(
        "{close}<|start_header_id|>user<|end_header_id|>\n\nAnd the colours?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    let tok = fvl_wgpu::text::llama::LlamaTokenizer::open(&fixture_path(DIR)).unwrap();
    if first.stopped == Stop::Eos {
        ids.push(tok.encode("<|eot_id|>", false).unwrap()[0] as i64);
    }
    ids.extend(
        tok.encode(&follow, false)
            .unwrap()
            .into_iter()
            .map(i64::from),
    );
    let pre = fvl_wgpu::image::preprocess(&image, &m.preprocess, m.config.pad_to_square).unwrap();
    let pixels = VisionTower::pixels(gpu, &pre).unwrap();
    let x = &prompt_embeddings(gpu, m, &pixels, &ids);
    let mut s = Session::new(gpu, &m.llama, x.shape()[0] + 8, Pick::Greedy, 0).unwrap();
    let mut want = vec![s.prefill(Prompt::Embeddings(x), false).unwrap()];
    while want.len() < second.token_ids.len() {
        want.push(s.decode(None).unwrap());
    }
    assert_eq!(second.token_ids, want);
}

/// Without --prompt, `infer` chats: one question a line on stdin, an answer line each.
#[test]
fn cli_infer_interactive_answers_each_line() {
    use std::io::Write;
    let model = fixture_path(DIR).display().to_string();
    let args = fixture_args(&model, &["--max-new-tokens", "4", "--quant", "f32"]);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fvl-wgpu"))
        .arg("infer")
        .args(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"What is this?\nAnd the colours?\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        2,
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("> ").count(),
        3,
        "a prompt before each question and at the end"
    );
    let (code, _, err) = infer(
        &fixture_args(&model, &["--json"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_ne!(code, 0);
    assert!(err.contains("--json needs --prompt"), "{err}");
}

/// A projector whose input width does not match the fused image features (config
/// `mm_hidden_size` against the tower's width): one line naming the field and both sizes.
#[test]
fn projector_width_mismatch_is_one_clear_line() {
    let (tmp, model) = fixture_copy("width", &[], true);
    let cfg_path = model.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["mm_hidden_size"] = serde_json::json!(48);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let args = fixture_args(
        &model.display().to_string(),
        &["--prompt", "Hi", "--quant", "f32"],
    );
    let (code, _, err) = infer(&args.iter().map(String::as_str).collect::<Vec<_>>());
    std::fs::remove_dir_all(&tmp).ok();
    assert_ne!(code, 0);
    let line = err.lines().last().unwrap();
    assert!(
        line.starts_with("error: ") && line.contains("mm_hidden_size = 48") && line.contains("32"),
        "{err}"
    );
}
