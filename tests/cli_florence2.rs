//! `fvl-wgpu florence2` on the tiny florence2-a model: one-line errors for bad input before
//! any GPU work, and greedy ids equal to transformers' for `<OD>` and `<CAPTION>`.

use std::process::Command;

use serde_json::Value;

const MODEL: &str = "tests/fixtures/florence2-a";
const IMAGE: &str = "tests/fixtures/images/photo.png";

fn fvl(extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["florence2", "--model", MODEL, "--image", IMAGE];
    args.extend_from_slice(extra);
    let out = Command::new(env!("CARGO_BIN_EXE_fvl-wgpu"))
        .args(&args)
        .output()
        .expect("run fvl-wgpu");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a command that must fail; returns its single stderr line.
fn error(extra: &[&str]) -> String {
    let (code, out, err) = fvl(extra);
    assert_eq!(code, 1, "{extra:?}: {out}{err}");
    assert!(out.is_empty(), "{extra:?}: stdout {out}");
    let lines: Vec<_> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{extra:?}: {err}");
    assert!(lines[0].starts_with("error: "), "{extra:?}: {err}");
    lines[0].to_string()
}

#[test]
fn bad_input_gives_one_line_errors() {
    let e = error(&["--task", "<DETECT>"]);
    assert!(e.contains("unknown task") && e.contains("<OD>"), "{e}");
    let e = error(&["--task", "OD"]);
    assert!(e.contains("unknown task"), "{e}");
    let e = error(&["--task", "<CAPTION>", "--text", "a car"]);
    assert!(e.contains("takes no text"), "{e}");
    let e = error(&["--task", "<CAPTION_TO_PHRASE_GROUNDING>"]);
    assert!(e.contains("needs --text"), "{e}");
    let long = "a red car next to a tree ".repeat(20);
    let e = error(&["--task", "<CAPTION_TO_PHRASE_GROUNDING>", "--text", &long]);
    assert!(e.contains("128 positions"), "{e}");
    let e = error(&["--task", "<OD>", "--max-new-tokens", "129"]);
    assert!(e.contains("--max-new-tokens 129"), "{e}");
}

#[test]
fn annotate_is_checked_before_the_run_and_written_as_its_extension_says() {
    let dir = std::env::temp_dir().join(format!("fvl-annotate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let at = |name: &str| dir.join(name).display().to_string();
    // One line each, before the model loads (no "device:" line, no run).
    let e = error(&["--task", "<OD>", "--annotate", &at("boxes.gif")]);
    assert!(e.contains("boxes.gif") && e.contains(".png, .jpg"), "{e}");
    let e = error(&["--task", "<OD>", "--annotate", &at("no-such-folder/boxes.png")]);
    assert!(e.contains("no-such-folder") && e.contains("cannot create a file"), "{e}");
    let e = error(&["--task", "<OD>", "--annotate", IMAGE]);
    assert!(e.contains("is an input"), "{e}");
    // The extension picks the encoder.
    for (name, magic) in [
        ("boxes.jpg", &b"\xFF\xD8\xFF"[..]),
        ("boxes.WEBP", b"RIFF"),
        ("boxes.bmp", b"BM"),
    ] {
        let (code, _, err) = fvl(&[
            "--task", "<OD>", "-n", "8", "--num-beams", "1", "--no-repeat-ngram-size", "0",
            "--annotate", &at(name),
        ]);
        assert_eq!(code, 0, "{name}: {err}");
        let bytes = std::fs::read(dir.join(name)).unwrap();
        assert!(bytes.starts_with(magic), "{name}: {:?}", &bytes[..4]);
        let img = fvl_wgpu::image::decode_image(&bytes, name).unwrap();
        assert_eq!((img.width, img.height), (72, 52), "{name}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn greedy_ids_match_transformers() {
    let gen: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{MODEL}/generate.json")).unwrap())
            .unwrap();
    let dir = std::env::temp_dir().join(format!("fvl-cli-florence2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for task in ["<OD>", "<CAPTION>"] {
        let run = gen["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["task"] == task && r["image"] == "photo.png")
            .unwrap();
        let png = dir.join("annotated.png");
        let png_arg = png.to_str().unwrap();
        let (code, out, err) = fvl(&[
            "--task",
            task,
            "--max-new-tokens",
            "20",
            "--precision",
            "f32",
            "--num-beams",
            "1",
            "--no-repeat-ngram-size",
            "0",
            "--json",
            "--annotate",
            png_arg,
        ]);
        assert_eq!(code, 0, "{task}: {err}");
        let got: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(got["task"], task);
        assert_eq!(got["token_ids"], run["greedy"]["ids"], "{task}");
        assert_eq!(got["text"], run["greedy"]["text"], "{task}");
        assert_eq!(got["result"], run["greedy"]["post_processed"], "{task}");
        let img = image::open(&png).unwrap();
        assert_eq!((img.width(), img.height()), (72, 52));

        // The default decoding is Florence-2's: 3 beams, no repeated trigram.
        let (code, out, err) = fvl(&[
            "--task",
            task,
            "--max-new-tokens",
            "20",
            "--precision",
            "f32",
            "--json",
        ]);
        assert_eq!(code, 0, "{task}: {err}");
        let got: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(got["token_ids"], run["beam3"]["ids"], "{task} beam3");
        assert_eq!(
            got["result"], run["beam3"]["post_processed"],
            "{task} beam3"
        );

        let (code, out, err) = fvl(&[
            "--task",
            task,
            "--max-new-tokens",
            "20",
            "--precision",
            "f32",
            "--num-beams",
            "1",
            "--no-repeat-ngram-size",
            "0",
        ]);
        assert_eq!(code, 0, "{task}: {err}");
        let mut lines = out.lines();
        assert_eq!(lines.next(), run["greedy"]["text"].as_str());
        let summary = lines.next().unwrap();
        if task == "<OD>" {
            assert!(summary.starts_with("3 boxes"), "{out}");
        } else {
            assert!(summary.starts_with("answer: <loc_156>"), "{out}");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `<OCR>` on the JPEG fixture: our libjpeg-turbo decode equals PIL's, so the ids equal
/// transformers' (greedy and Florence-2's default 3 beams). With a decoder that differed by
/// ±1 they did not (`[2,0,824,1146,…]` against HF's `[2,0,824,824,…]`).
#[test]
fn ocr_on_the_jpeg_fixture_equals_hf() {
    let gen: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{MODEL}/generate.json")).unwrap())
            .unwrap();
    let run = gen["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["task"] == "<OCR>" && r["image"] == "text.jpg")
        .unwrap();
    for (mode, extra) in [
        ("greedy", &["--num-beams", "1", "--no-repeat-ngram-size", "0"][..]),
        ("beam3", &[][..]),
    ] {
        let mut args = vec![
            "florence2",
            "--model",
            MODEL,
            "--image",
            "tests/fixtures/images/text.jpg",
            "--task",
            "<OCR>",
            "--max-new-tokens",
            "20",
            "--precision",
            "f32",
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = Command::new(env!("CARGO_BIN_EXE_fvl-wgpu"))
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{mode}: {err}");
        let got: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(got["token_ids"], run[mode]["ids"], "<OCR> {mode}");
        assert_eq!(got["text"], run[mode]["text"], "<OCR> {mode}");
    }
}
