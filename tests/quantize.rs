//! `fvl-wgpu quantize`: the packed checkpoint loads to exactly the weights load-time
//! quantization gives (same greedy ids, same logits), and mismatched `--quant` is refused.

mod common;

use std::process::Command;

fn fvl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fvl-wgpu"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn packed_checkpoint_generates_like_load_time_quantization() {
    let src = common::fixture_path("llama-a");
    let dir = std::env::temp_dir().join(format!("fvl-q4-{}", std::process::id()));
    let (code, out, err) = fvl(&[
        "quantize",
        "--model",
        src.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
        "--quant",
        "q4",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["quantized_tensors"].as_u64().unwrap() > 0);
    let gen = |model: &str, quant: Option<&str>| {
        let mut args = vec![
            "generate",
            "--model",
            model,
            "--prompt-ids",
            "1,5,9,13,17",
            "--max-new-tokens",
            "12",
            "--json",
        ];
        if let Some(q) = quant {
            args.extend(["--quant", q]);
        }
        let (code, out, err) = fvl(&args);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["token_ids"].clone()
    };
    // The packed folder loads as q4 by itself and matches quantizing at load time.
    assert_eq!(
        gen(dir.to_str().unwrap(), None),
        gen(src.to_str().unwrap(), Some("q4"))
    );
    let (code, _, err) = fvl(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt-ids",
        "1,2",
        "--quant",
        "q8",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("quantized as q4") && err.contains("q8"),
        "{err}"
    );
    let (code, _, err) = fvl(&[
        "quantize",
        "--model",
        dir.to_str().unwrap(),
        "--out",
        "/tmp/fvl-never",
        "--quant",
        "q8",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("already quantized as q4"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn nothing_to_pack_is_refused_saying_why() {
    let out = std::env::temp_dir().join(format!("fvl-q-none-{}", std::process::id()));
    for (model, why) in [
        ("llama-b", "rows of 48, 80 values"),
        ("florence2-a", "no language-model matrices"),
    ] {
        let src = common::fixture_path(model);
        let (code, stdout, err) = fvl(&[
            "quantize", "-m", src.to_str().unwrap(), "--out", out.to_str().unwrap(), "--precision", "q4",
        ]);
        assert_eq!(code, 1, "{model}: {err}");
        assert!(stdout.is_empty() && err.lines().count() == 1, "{model}: {err}");
        assert!(err.contains("nothing to pack as q4") && err.contains(why), "{model}: {err}");
        assert!(!out.exists(), "{model}: nothing is written");
    }
}
