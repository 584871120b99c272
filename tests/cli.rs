//! The command line: help on every command, JSON on stdout, one-line errors with a non-zero
//! exit status.

use std::process::Command;

mod common;

fn fvl(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fvl-wgpu"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run fvl-wgpu");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["devices", "--help"],
        &["selfcheck", "--help"],
        &["bench", "kernels", "--help"],
    ] {
        let (code, out, _) = fvl(args, &[]);
        assert_eq!(code, 0, "{args:?}");
        assert!(out.contains("Usage"), "{args:?}: {out}");
    }
    let (_, out, _) = fvl(&["bench", "kernels", "--help"], &[]);
    for flag in ["--device", "--json", "--quick", "--only"] {
        assert!(out.contains(flag), "bench kernels --help lacks {flag}");
    }
}

#[test]
fn usage_errors_are_one_line_naming_the_commands_help() {
    for (args, says) in [
        (&["infer", "-i", "x.png"][..], "not provided: --model"),
        (&["bench", "decode", "--quant", "q9"], "'q9' for '--precision"),
        (&["florence2", "--modle", "x"], "similar argument exists: '--model'"),
    ] {
        let (code, out, err) = fvl(args, &[]);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        let sub: Vec<&str> = args.iter().take_while(|a| !a.starts_with('-')).copied().collect();
        let help = format!("(see 'fvl-wgpu {} --help')", sub.join(" "));
        assert!(err.starts_with("error: ") && err.contains(says) && err.trim_end().ends_with(&help), "{err}");
    }
    // Help is not an error: stdout, status 0, clap's layout.
    let (code, out, _) = fvl(&["infer", "-h"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("-m, --model") && out.contains("--quant"), "{out}");
}

#[test]
fn devices_json_lists_adapters_with_limits() {
    let (code, out, _) = fvl(&["devices", "--json"], &[]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON object on stdout");
    let adapters = v["adapters"].as_array().unwrap();
    assert!(!adapters.is_empty());
    for a in adapters {
        assert!(a["max_storage_buffer_binding_size"].as_u64().unwrap() > 0);
        assert!(a["name"].is_string() && a["backend"].is_string());
    }
}

#[test]
fn no_adapter_is_one_clear_line() {
    // A backend this platform cannot offer leaves no adapter at all.
    let (code, out, err) = fvl(&["devices"], &[("WGPU_BACKEND", "metal")]);
    assert_ne!(code, 0);
    assert!(out.is_empty());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("no GPU adapter") && err.contains("mesa-vulkan-drivers"),
        "{err}"
    );
}

#[test]
fn unknown_device_names_the_choices() {
    let (code, _, err) = fvl(&["selfcheck", "--device", "no-such-gpu"], &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains("no-such-gpu") && err.contains("matches no adapter"),
        "{err}"
    );
    let (code, _, err) = fvl(&["selfcheck", "--device", "99"], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("--device 99"), "{err}");
}

#[test]
fn bad_binding_limit_variable_is_named() {
    let (code, _, err) = fvl(&["selfcheck"], &[("FVL_MAX_BINDING", "lots")]);
    assert_ne!(code, 0);
    assert!(err.contains("FVL_MAX_BINDING"), "{err}");
}

#[test]
fn selfcheck_passes_and_reports_json() {
    let (code, out, err) = fvl(&["selfcheck", "--json"], &[]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["failed"], 0);
    assert_eq!(v["checks"].as_array().unwrap().len(), 8);
}

#[test]
fn bench_json_carries_ceilings_and_fractions() {
    let (code, out, err) = fvl(
        &["bench", "kernels", "--quick", "--only", "gelu", "--json"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["ceilings"]["copy_gb_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["ceilings"]["best_matmul_gflops"].as_f64().unwrap() > 0.0);
    let kernels = v["kernels"].as_array().unwrap();
    let names: Vec<&str> = kernels
        .iter()
        .map(|k| k["kernel"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["matmul f32", "gelu"],
        "the f32 matmul ceiling is always measured"
    );
    assert!(kernels[1]["fraction_of_copy_bandwidth"].as_f64().unwrap() > 0.0);
}

fn fixture(rel: &str) -> String {
    format!("{}/tests/fixtures/{rel}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn features_writes_pixels_and_image_features() {
    let out = std::env::temp_dir().join(format!("fvl-features-{}.safetensors", std::process::id()));
    let args = [
        "features",
        "--model",
        &fixture("florence2-a"),
        "--image",
        &fixture("images/photo.png"),
    ];
    let (code, stdout, err) = fvl(
        &[
            &args[..],
            &[
                "--out",
                out.to_str().unwrap(),
                "--precision",
                "f32",
                "--json",
            ],
        ]
        .concat(),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["image_features"], serde_json::json!([1, 5, 32]));
    assert_eq!(v["original_size"], serde_json::json!([72, 52]));
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("pixel_values").unwrap().shape(), [1, 3, 64, 64]);
    assert_eq!(st.tensor("image_features").unwrap().shape(), [1, 5, 32]);
    // The three Florence-VL prompts' image rows, against HF's batched encoder on this image.
    let (_, want) = common::fixture_tensor(
        "florence2-a/expected_encoder.safetensors",
        "encoder_image_rows",
    );
    for (p, name) in [
        "encoder_caption",
        "encoder_ocr",
        "encoder_dense_region_caption",
    ]
    .iter()
    .enumerate()
    {
        let t = st.tensor(name).unwrap();
        assert_eq!(t.shape(), [1, 5, 32], "{name}");
        let got: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let e = common::max_rel_error(&got, &want[p * 160..(p + 1) * 160]);
        assert!(e < 1e-4, "{name}: {e:e}");
    }
    let _ = std::fs::remove_file(out);
}

#[test]
fn features_bad_input_is_one_line_naming_the_culprit() {
    let out = std::env::temp_dir().join("fvl-never-written.safetensors");
    let out = out.to_str().unwrap();
    let not_image = fixture("florence2-a/config.json");
    let cases: [(&[&str], &str); 3] = [
        (
            &["--model", &fixture("florence2-a"), "--image", &not_image],
            "config.json",
        ),
        (
            &[
                "--model",
                &fixture("florence2-a"),
                "--image",
                "/no/such/image.png",
            ],
            "/no/such/image.png",
        ),
        (
            &[
                "--model",
                "/no/such/model",
                "--image",
                &fixture("images/photo.png"),
            ],
            "/no/such/model",
        ),
    ];
    for (args, culprit) in cases {
        let (code, _, err) = fvl(&[&["features"][..], args, &["--out", out]].concat(), &[]);
        assert_ne!(code, 0, "{args:?}");
        assert_eq!(
            err.trim()
                .lines()
                .filter(|l| l.starts_with("error"))
                .count(),
            1,
            "{err}"
        );
        assert!(err.contains(culprit), "{args:?}: {err}");
    }
}

#[test]
fn inspect_names_the_layout_and_memory_per_format() {
    for (dir, layout) in [
        ("florence-vl-tiny", "Florence-VL"),
        ("florence2-a", "transformers' native names"),
        ("florence2-b-original", "Microsoft's original"),
        ("llama-b", "Llama (separate q/k/v and gate/up"),
        ("phi3-a", "Phi-3 (fused q/k/v and gate/up, LongRoPE): 2 layers, hidden 64"),
        ("florence-vl-phi-tiny", "Florence-VL (LLaVA layout: projector + Florence-2 tower + Phi-3 (fused"),
    ] {
        let (code, out, err) = fvl(&["inspect", "--model", &fixture(dir), "--json"], &[]);
        assert_eq!(code, 0, "{dir}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(
            v["layout"].as_str().unwrap().contains(layout),
            "{dir}: {}",
            v["layout"]
        );
        assert!(!v["layout"].as_str().unwrap().contains("HfNative"), "{}", v["layout"]);
        let mem = &v["weight_bytes_by_format"];
        let f32 = mem["f32"].as_u64().unwrap();
        assert!(f32 >= 4 * v["parameters"].as_u64().unwrap(), "{dir}: {mem}");
        // Florence-2 cannot load as q8/q4, so no sizes for them.
        let quantizable = !layout.starts_with("transformers") && !layout.starts_with("Microsoft");
        assert_eq!(mem.get("q4").is_some(), quantizable, "{dir}: {mem}");
        if quantizable {
            assert!(mem["q4"].as_u64().unwrap() < f32, "{dir}: {mem}");
        }
    }
    // A packed folder counts parameters, not packed words, and offers only its own format.
    let (_, plain, _) = fvl(&["inspect", "-m", &fixture("llama-a"), "--json"], &[]);
    let plain: serde_json::Value = serde_json::from_str(&plain).unwrap();
    let packed = std::env::temp_dir().join(format!("fvl-inspect-q4-{}", std::process::id()));
    let (code, _, err) = fvl(
        &["quantize", "-m", &fixture("llama-a"), "--out", packed.to_str().unwrap(), "--precision", "q4"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = fvl(&["inspect", "-m", packed.to_str().unwrap(), "--json"], &[]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["parameters"], plain["parameters"], "{out}");
    assert!(v["dtypes"]["q4"]["tensors"].as_u64().unwrap() > 0, "{out}");
    let formats: Vec<&String> = v["weight_bytes_by_format"].as_object().unwrap().keys().collect();
    assert_eq!(formats, ["q4"], "{out}");
    std::fs::remove_dir_all(&packed).ok();
    let (code, _, err) = fvl(&["inspect", "--model", "/no/such/model"], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("/no/such/model"), "{err}");
}

/// The stderr lines `fvl-wgpu ARGS` prints up to the first that starts with `until`; the
/// process is then stopped (a bench says its sizes before the long work starts).
fn stderr_until(args: &[&str], until: &str) -> Vec<String> {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_fvl-wgpu"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = vec![];
    for line in std::io::BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        let done = line.starts_with(until);
        lines.push(line);
        if done {
            break;
        }
    }
    child.kill().ok();
    child.wait().ok();
    lines
}

/// Issue 15: on a CPU adapter (lavapipe) the benches' size flags that are not given take light
/// values, said on stderr with the flags for the full sizes and recorded in --json; the flags
/// given are kept. On a GPU the full sizes stay the defaults.
#[test]
fn benches_pick_light_sizes_on_a_cpu_adapter_unless_told() {
    let software = fvl_wgpu::gpu::Gpu::new(&Default::default()).unwrap().is_software();
    let run = |args: &[&str]| {
        let (code, out, err) = fvl(args, &[]);
        assert_eq!(code, 0, "{args:?}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect(&out);
        (v, err)
    };
    let (v, err) = run(&["bench", "kernels", "--only", "gelu", "--json"]);
    assert_eq!((v["quick"].as_bool(), v["light_defaults"].as_bool()), (Some(software), Some(software)));
    assert_eq!(err.contains("CPU adapter: light sizes --quick"), software, "{err}");
    let (v, err) = run(&["bench", "kernels", "--full", "--only", "gelu", "--json"]);
    assert_eq!(v["quick"], false, "--full is kept");
    assert!(!err.contains("light sizes"), "{err}");

    // The whole vision bench at a small given size: the config not given is the light one.
    let (v, err) = run(&["bench", "vision", "--size", "64", "--json"]);
    let config = if software { "base" } else { "large" };
    assert_eq!((v["config"].as_str(), v["image_size"].as_u64()), (Some(config), Some(64)), "{err}");
    assert_eq!(v["light_defaults"], software);

    // No size flags: light sizes on a CPU adapter, said before any work (then stopped).
    let said = stderr_until(&["bench", "vision", "--json"], "DaViT-");
    let (note, sizes) = if software {
        (
            Some("CPU adapter: light sizes --config base --size 384 ("),
            "DaViT-base + image head at 384²",
        )
    } else {
        (None, "DaViT-large + image head at 768²")
    };
    assert!(said.last().unwrap().starts_with(sizes), "{said:?}");
    let noted = said.iter().find(|l| l.starts_with("CPU adapter"));
    match note {
        Some(n) => assert!(
            noted.is_some_and(|l| l.starts_with(n) && l.contains("--config large --size 768")),
            "{said:?}"
        ),
        None => assert!(noted.is_none(), "{said:?}"),
    }
    // An explicit --config large is kept; only the size not given is light.
    let said = stderr_until(&["bench", "vision", "--config", "large", "--json"], "DaViT-");
    let size = if software { 384 } else { 768 };
    assert!(said.last().unwrap().starts_with(&format!("DaViT-large + image head at {size}²")), "{said:?}");
    assert!(said.iter().all(|l| !l.contains("--config base")), "{said:?}");
}
