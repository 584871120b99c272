//! Never lose a user's data, never read outside the model folder, never answer garbage
//! silently: one regression test per defect of issue 14 (each failed before its fix).

mod common;

use common::{copy_fixture, edit_json, scratch};

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

fn fvl_in(dir: Option<&Path>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fvl-wgpu"));
    cmd.args(args);
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    let out = cmd.output().expect("run fvl-wgpu");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn fvl(args: &[&str]) -> (i32, String, String) {
    fvl_in(None, args)
}

/// Every file of a folder with its bytes, to show nothing changed.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    files.sort();
    files
}

fn one_line_error(code: i32, err: &str) {
    assert_ne!(code, 0, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// `stderr` without the lines every run may print before an error: the device line, the
/// phases said as they start (`loading weights…`) and the kernel-compile notes a cold shader
/// cache adds.
fn without_run_notes(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| !l.starts_with("device:") && !l.ends_with('…') && !l.contains("GPU kernels"))
        .collect()
}

/// Item 1: `quantize --out` naming the model folder in any spelling (relative, absolute,
/// through a symlink, `..`, a subfolder) is refused and every source file is left intact.
#[test]
fn quantize_never_writes_into_its_source() {
    let root = scratch("quantize-src");
    let model = root.join("M");
    copy_fixture("llama-b", &model);
    std::os::unix::fs::symlink(&model, root.join("link")).unwrap();
    let before = snapshot(&model);
    let abs = model.to_str().unwrap().to_string();
    for out in ["./M", "M", &abs, "link", "M/../M", "./link/", "M/sub", "link/sub/deeper"] {
        let (code, _, err) = fvl_in(
            Some(&root),
            &["quantize", "--model", "M", "--out", out, "--quant", "q8"],
        );
        one_line_error(code, &err);
        assert!(err.contains("--out"), "{out}: {err}");
        assert_eq!(snapshot(&model), before, "--out {out} changed the model folder");
        assert!(!model.join("sub").exists(), "--out {out} created a folder in the model");
    }
}

/// Item 2: an output path that is a device node, a FIFO or a symlink is refused and left as
/// it was; a file inside the model folder or the input image itself is refused too.
#[test]
fn outputs_never_replace_special_files_or_inputs() {
    let root = scratch("targets");
    let model = common::fixture_path("florence2-a");
    let image = common::fixture_path("images/photo.png");
    let fifo = root.join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let victim = root.join("victim.txt");
    std::fs::write(&victim, "keep me").unwrap();
    let link = root.join("link.safetensors");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let inside = model.join("new.safetensors");
    let (m, img) = (model.to_str().unwrap(), image.to_str().unwrap());
    for out in [
        Path::new("/dev/null"),
        &fifo,
        &link,
        &inside,
        &image,
        &root,
    ] {
        let (code, _, err) = fvl(&[
            "features",
            "--model",
            m,
            "--image",
            img,
            "--out",
            out.to_str().unwrap(),
        ]);
        one_line_error(code, &err);
    }
    // --annotate onto the input image.
    let (code, _, err) = fvl(&[
        "florence2", "--model", m, "--image", img, "--task", "<OD>", "--annotate", img,
    ]);
    one_line_error(code, &err);
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    assert!(!inside.exists());
}

/// Item 2: outputs get the usual permissions (0666 less the umask), replace an existing
/// regular file whole, and leave no temporary file behind.
#[test]
fn outputs_get_the_usual_permissions() {
    let root = scratch("perms");
    let out = root.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("model.safetensors"), "old").unwrap();
    let bin = env!("CARGO_BIN_EXE_fvl-wgpu");
    // llama-a: rows of whole q8 blocks (llama-b's would leave nothing to pack, refused).
    let src = common::fixture_path("llama-a");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 022 && exec '{bin}' quantize --model '{}' --out '{}' --quant q8",
            src.display(),
            out.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    for name in ["model.safetensors", "config.json", "tokenizer.json"] {
        let mode = std::fs::metadata(out.join(name)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644, "{name}: mode {mode:o}");
    }
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    assert!(bytes.len() > 1000);
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Rewrites the values of tensor `name` (F32 or BF16) in the safetensors file `path` with
/// `edit`, which sees them as f32.
fn edit_weight(path: &Path, name: &str, edit: impl FnOnce(&mut [f32])) {
    let mut bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let t = &header[name];
    let offset = |i: usize| 8 + n + t["data_offsets"][i].as_u64().unwrap() as usize;
    let data = &mut bytes[offset(0)..offset(1)];
    let bf16 = match t["dtype"].as_str() {
        Some("F32") => false,
        Some("BF16") => true,
        other => panic!("{name}: {other:?}"),
    };
    let mut values: Vec<f32> = if bf16 {
        data.chunks(2).map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)).collect()
    } else {
        data.chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    };
    edit(&mut values);
    for (i, v) in values.iter().enumerate() {
        if bf16 {
            data[2 * i..2 * i + 2].copy_from_slice(&((v.to_bits() >> 16) as u16).to_le_bytes());
        } else {
            data[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
    std::fs::write(path, bytes).unwrap();
}

/// Sets element 0 of tensor `name` in the single-file checkpoint `dir` to `value`.
fn poison_weight(dir: &Path, name: &str, value: f32) {
    edit_weight(&dir.join("model.safetensors"), name, |v| v[0] = value);
}

/// Item 5: `quantize` refuses a checkpoint with Inf or NaN weights instead of packing them,
/// and one whose q4 block scale would overflow f16 (it was packed as Inf). `llama-a`: its
/// down_proj rows are whole blocks, so there is something to pack (`llama-b` is refused for
/// having nothing to pack before any weight is read).
#[test]
fn quantize_refuses_non_finite_weights() {
    let name = "model.layers.0.mlp.down_proj.weight";
    for (tag, v, says) in [("inf", f32::INFINITY, "inf"), ("nan", f32::NAN, "NaN"), ("big", 1e6, "more than q4")] {
        let root = scratch(&format!("q-{tag}"));
        let model = root.join("M");
        copy_fixture("llama-a", &model);
        edit_weight(&model.join("model-00003-of-00005.safetensors"), name, |w| w[40] = v);
        let out = root.join("out");
        let (code, _, err) = fvl(&[
            "quantize",
            "--model",
            model.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--quant",
            "q4",
        ]);
        // The packing says itself before it reaches the bad weight.
        one_line_error(code, &without_run_notes(&err).join("\n"));
        assert!(
            err.contains(name) && err.contains(says),
            "{err}"
        );
        assert!(!out.join("model.safetensors").exists());
    }
}

/// The error of `open` with `name` (the offending string) replaced by `X`, so messages for
/// different names compare equal exactly when they reveal nothing more.
fn masked_error<T>(res: fvl_wgpu::Result<T>, name: &str) -> String {
    match res {
        Ok(_) => panic!("{name} was accepted"),
        Err(e) => e.to_string().replace(name, "X"),
    }
}

/// Item 3: shard names in an index with `..` or an absolute path are refused before any file
/// is opened, with the same message whether the outside file exists or not.
#[test]
fn index_shards_stay_inside_the_model_folder() {
    let root = scratch("index");
    let model = root.join("a/M");
    copy_fixture("llama-a", &model);
    let outside = root.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let stolen = outside.join("stolen.safetensors");
    std::fs::copy(model.join("model-00001-of-00005.safetensors"), &stolen).unwrap();
    let index = model.join("model.safetensors.index.json");
    let stolen_abs = stolen.to_str().unwrap().to_string();
    let mut messages = Vec::new();
    for shard in [
        "../../outside/stolen.safetensors",
        "../../outside/missing.safetensors",
        &stolen_abs,
        "/etc/passwd",
        "/nonexistent/x.safetensors",
        "sub/../../../outside/stolen.safetensors",
    ] {
        edit_json(&index, |v| {
            let map = v["weight_map"].as_object_mut().unwrap();
            for file in map.values_mut() {
                if file == "model-00001-of-00005.safetensors" {
                    *file = shard.into();
                }
            }
        });
        let msg = masked_error(fvl_wgpu::weights::Checkpoint::open(&model), shard);
        assert!(msg.contains("not inside the model folder"), "{shard}: {msg}");
        messages.push(msg);
        edit_json(&index, |v| {
            let map = v["weight_map"].as_object_mut().unwrap();
            for file in map.values_mut() {
                if file == shard {
                    *file = "model-00001-of-00005.safetensors".into();
                }
            }
        });
    }
    assert!(messages.windows(2).all(|w| w[0] == w[1]), "{messages:#?}");
}

/// Item 3: `mm_vision_tower` may name a hub id or a folder beside the model, nothing that
/// climbs out or starts at the root; the message is the same whether that place exists.
#[test]
fn vision_tower_stays_beside_the_model() {
    let root = scratch("tower");
    let model = root.join("a/b/M");
    copy_fixture("florence-vl-tiny", &model);
    copy_fixture("florence2-a-original", &root.join("escaped"));
    let config = model.join("config.json");
    let mut messages = Vec::new();
    for tower in [
        "../../../escaped",
        "../../../missing",
        "../../../../../../../../etc",
        "/etc",
        "/nonexistent",
        "./../../../escaped",
        "a/b/c",
    ] {
        edit_json(&config, |v| v["mm_vision_tower"] = tower.into());
        let res = fvl_wgpu::weights::florence2::Florence2Checkpoint::open(&model);
        let msg = masked_error(res, tower);
        assert!(msg.contains("mm_vision_tower"), "{tower}: {msg}");
        messages.push(msg);
    }
    assert!(messages.windows(2).all(|w| w[0] == w[1]), "{messages:#?}");
}

/// Item 4: a resize target of 60000×60000 (which ran 5 minutes into a 10 GB allocation
/// failure) is refused while the config is read.
#[test]
fn resize_targets_are_bounded() {
    let json = serde_json::json!({"size": {"height": 60000, "width": 60000}});
    let err = fvl_wgpu::image::PreprocessConfig::from_json(&json, "preprocessor_config.json")
        .expect_err("refused")
        .to_string();
    assert!(err.contains("size") && err.contains("60000"), "{err}");
    let ok = serde_json::json!({"size": {"height": 768, "width": 1024}});
    assert!(fvl_wgpu::image::PreprocessConfig::from_json(&ok, "p").is_ok());
}

/// Items 4 and 5: config values are checked as transformers checks them, and sizes are
/// bounded, before anything is allocated: no silent default for a non-number, no zero layers.
#[test]
fn llama_config_values_are_validated() {
    let base: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture_path("llama-b/config.json")).unwrap(),
    )
    .unwrap();
    let parse = |key: &str, v: serde_json::Value| {
        let mut cfg = base.clone();
        cfg[key] = v;
        cfg.as_object_mut().unwrap().remove("rope_parameters");
        fvl_wgpu::weights::llama::LlamaConfig::from_json(&cfg, 517)
    };
    assert!(parse("rope_theta", 500000.0.into()).is_ok());
    for (key, v) in [
        ("rope_theta", serde_json::json!(0.0)),
        ("rope_theta", serde_json::json!(-1.0)),
        ("rope_theta", serde_json::json!("abc")),
        ("rms_norm_eps", serde_json::json!(-1e-5)),
        ("rms_norm_eps", serde_json::json!("1e-5")),
        ("num_hidden_layers", serde_json::json!(0)),
        ("hidden_size", serde_json::json!(0)),
        ("hidden_size", serde_json::json!(1u64 << 40)),
        ("intermediate_size", serde_json::json!(1u64 << 40)),
        ("max_position_embeddings", serde_json::json!(0)),
    ] {
        let err = parse(key, v.clone()).err().unwrap_or_else(|| panic!("{key} = {v} accepted"));
        assert!(err.to_string().contains(key), "{key}: {err}");
    }
}

/// Item 4: Florence-2 config sizes are bounded before any allocation.
#[test]
fn florence2_config_sizes_are_bounded() {
    let root = scratch("f2-config");
    let model = root.join("M");
    copy_fixture("florence2-a", &model);
    edit_json(&model.join("config.json"), |v| {
        v["text_config"]["vocab_size"] = (1u64 << 40).into();
    });
    let err = fvl_wgpu::weights::florence2::Florence2Checkpoint::open(&model)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("vocab_size"), "{err}");
}

/// Item 5: a NaN or Inf weight is found at load, naming the tensor, instead of every token
/// id becoming 0 with exit status 0.
#[test]
fn non_finite_weights_are_refused_at_load() {
    let root = scratch("gen-inf");
    let model = root.join("M");
    copy_fixture("llama-b", &model);
    poison_weight(&model, "model.layers.0.self_attn.q_proj.weight", f32::INFINITY);
    let (code, _, err) = fvl(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt-ids",
        "1,2,3",
        "--max-new-tokens",
        "2",
        "--quant",
        "f32",
    ]);
    one_line_error(code, &without_run_notes(&err).join("\n"));
    assert!(err.contains("model.layers.0.self_attn.q_proj.weight"), "{err}");
}

/// Issue 14: `tools/gpu-check.sh --quick` runs end to end (small shapes, lavapipe in CI) and
/// writes one JSON object with every bench's numbers, each a positive finite measurement next
/// to the ceiling measured in the same run. About 2 minutes on lavapipe (2 cores), most of it
/// making and packing Llama-1B's random weights twice.
#[test]
fn gpu_check_quick_runs_end_to_end() {
    let root = scratch("gpu-check");
    let out = root.join("check.json");
    let status = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/gpu-check.sh"))
        .args(["--quick", out.to_str().unwrap()])
        .env("FVL_BIN", env!("CARGO_BIN_EXE_fvl-wgpu"))
        .status()
        .unwrap();
    assert!(status.success());
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for key in ["devices", "kernels", "decode_llama-1b_q4", "vision_base_64", "e2e_base_llama-1b_q4"] {
        assert!(v[key].is_object(), "{key} missing: {v}");
    }
    let positive = |x: &serde_json::Value| x.as_f64().is_some_and(|x| x.is_finite() && x > 0.0);
    for (key, field) in [
        ("kernels", "/ceilings/copy_gb_per_s"),
        ("kernels", "/kernels/0/gb_per_s"),
        ("decode_llama-1b_q4", "/decode_tokens_per_s"),
        ("decode_llama-1b_q4", "/fraction_of_copy_bandwidth"),
        ("vision_base_64", "/ms_per_image"),
        ("vision_base_64", "/fraction_of_best_matmul"),
        ("e2e_base_llama-1b_q4", "/ttft_ms"),
        ("e2e_base_llama-1b_q4", "/decode_tokens_per_s"),
    ] {
        let x = v[key].pointer(field).unwrap_or(&serde_json::Value::Null);
        assert!(positive(x), "{key}{field} = {x}");
    }
}

/// Item 8: `--temperature` negative or NaN and `--top-p` outside (0, 1] are refused while the
/// command line is parsed, in one line, before any model is loaded.
#[test]
fn sampling_flags_are_checked_at_parse_time() {
    let model = common::fixture_path("llama-b");
    for (flag, v) in [
        ("--temperature", "-1"),
        ("--temperature", "NaN"),
        ("--top-p", "2"),
        ("--top-p", "0"),
        ("--top-p", "NaN"),
    ] {
        let arg = format!("{flag}={v}");
        let (code, _, err) = fvl(&[
            "generate", "--model", model.to_str().unwrap(), "--prompt-ids", "1,2", &arg,
        ]);
        assert_eq!(code, 2, "{flag} {v}: {err}");
        assert!(err.contains(flag) && !err.contains("device:"), "{flag} {v}: {err}");
    }
}

/// Item 5: under f16 (or q8/q4) storage, a finite weight too large for f16 is kept in f32 with
/// one warning naming it, and the answer is the f32 run's (it was Inf, and every id 0).
#[test]
fn weights_beyond_f16_stay_f32() {
    let root = scratch("f16-range");
    let model = root.join("M");
    copy_fixture("llama-b", &model);
    let name = "model.layers.0.mlp.down_proj";
    edit_weight(&model.join("model.safetensors"), &format!("{name}.weight"), |v| {
        v[5] = 1.0e5
    });
    let run = |quant: &str| {
        let (code, out, err) = fvl(&[
            "generate", "--model", model.to_str().unwrap(), "--prompt-ids", "1,2,3",
            "--max-new-tokens", "6", "--quant", quant, "--json",
        ]);
        assert_eq!(code, 0, "{quant}: {err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect(&out);
        (v["token_ids"].clone(), err)
    };
    let (want, quiet) = run("f32");
    assert!(!quiet.contains("warning"), "{quiet}");
    let (got, err) = run("f16");
    assert_eq!(got, want, "{err}");
    let warnings: Vec<_> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(warnings[0].contains(name) && warnings[0].contains("f32"), "{err}");
}

/// The library side of the same rule: a tensor whose values exceed its dtype's range is
/// stored as f32 (for q8/q4, a block scale past f16's range), and the warning is kept for
/// the caller.
#[test]
fn tensors_beyond_their_dtype_range_upload_as_f32() {
    use fvl_wgpu::gpu::{DType, Tensor};
    let gpu = common::gpu();
    let mut data: Vec<f32> = (0..64).map(|i| i as f32 * 0.37 - 11.0).collect();
    let fits = Tensor::from_f32(&gpu, &[2, 32], DType::F16, &data, "fits").unwrap();
    assert_eq!(fits.layout.dtype, DType::F16);
    assert!(gpu.take_warnings().is_empty());
    for (dtype, big) in [(DType::F16, 7.0e4), (DType::Q8, 9.0e6), (DType::Q4, 6.0e5)] {
        data[37] = big;
        let t = Tensor::from_f32(&gpu, &[2, 32], dtype, &data, "big weight").unwrap();
        assert_eq!(t.layout.dtype, DType::F32, "{dtype:?}");
        assert_eq!(t.read_f32(&gpu).unwrap(), data, "{dtype:?}");
        let w = gpu.take_warnings();
        assert!(w.len() == 1 && w[0].contains("big weight"), "{w:?}");
    }
}

/// Runs `fvl-wgpu ARGS` and checks it fails in one line saying which step met non-finite
/// logits.
fn fails_with_non_finite_logits(args: &[&str]) {
    let (code, out, err) = fvl(args);
    let err = without_run_notes(&err);
    one_line_error(code, &err.join("\n"));
    let line = err[0];
    assert!(
        line.contains("step 1:") && line.contains("non-finite logits"),
        "{args:?}: {line}\n{out}"
    );
}

/// Item 5: finite weights whose activations overflow at run time (a norm weight of 1e30)
/// stop generation with an error naming the step, for every generating command and for the
/// GPU's argmax and sampling as for the host's beam search (they answered id 0, exit 0).
#[test]
fn non_finite_logits_stop_generation() {
    let root = scratch("overflow");
    let llama = root.join("llama");
    copy_fixture("llama-b", &llama);
    edit_weight(
        &llama.join("model.safetensors"),
        "model.layers.0.input_layernorm.weight",
        |v| v.fill(1e30),
    );
    for extra in [&[][..], &["--temperature", "0.8", "--top-k", "5", "--seed", "5"][..]] {
        let mut args = vec![
            "generate", "--model", llama.to_str().unwrap(), "--prompt-ids", "1,2,3",
            "--max-new-tokens", "4", "--quant", "f32",
        ];
        args.extend_from_slice(extra);
        fails_with_non_finite_logits(&args);
    }

    let fvl_model = root.join("florence-vl-tiny");
    copy_fixture("florence-vl-tiny", &fvl_model);
    std::os::unix::fs::symlink(
        common::fixture_path("florence2-a-original"),
        root.join("florence2-a-original"),
    )
    .unwrap();
    edit_weight(
        &fvl_model.join("model-00001-of-00006.safetensors"),
        "model.layers.0.input_layernorm.weight",
        |v| v.fill(1e30),
    );
    let image = common::fixture_path("images/photo.png");
    let tokenizer = common::fixture_path("florence2-a");
    fails_with_non_finite_logits(&[
        "infer", "--model", fvl_model.to_str().unwrap(), "--image", image.to_str().unwrap(),
        "--florence-tokenizer", tokenizer.to_str().unwrap(), "--prompt", "What is this?",
        "--max-new-tokens", "4", "--quant", "f32",
    ]);

    let f2 = root.join("florence2");
    copy_fixture("florence2-a", &f2);
    edit_weight(
        &f2.join("model.safetensors"),
        "model.language_model.decoder.layernorm_embedding.weight",
        |v| v.fill(1e30),
    );
    for beams in ["3", "1"] {
        fails_with_non_finite_logits(&[
            "florence2", "--model", f2.to_str().unwrap(), "--image", image.to_str().unwrap(),
            "--task", "<CAPTION>", "--precision", "f32", "--max-new-tokens", "4",
            "--num-beams", beams, "--no-repeat-ngram-size", "0",
        ]);
    }
}
