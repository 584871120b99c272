//! `florence2 --images`: one JSON line per image in input order (folders, globs, files),
//! each equal to transformers' answer, a bad file recorded as an error line, `--out` written.

use std::process::Command;

use serde_json::Value;

const MODEL: &str = "tests/fixtures/florence2-a";

#[test]
fn florence2_images_writes_one_line_per_image_in_order() {
    let gen: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{MODEL}/generate.json")).unwrap())
            .unwrap();
    let run = gen["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["task"] == "<CAPTION>")
        .unwrap();
    let out = std::env::temp_dir().join(format!("fvl-batch-{}.jsonl", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_fvl-wgpu"))
        .args([
            "florence2",
            "--model",
            MODEL,
            "--task",
            "<CAPTION>",
            "--precision",
            "f32",
        ])
        .args([
            "--num-beams",
            "1",
            "--no-repeat-ngram-size",
            "0",
            "--max-new-tokens",
            "20",
        ])
        .args([
            "--images",
            "tests/fixtures/images/photo.png",
            "tests/fixtures/florence2-a/config.json",
        ])
        .args(["tests/fixtures/images/p*.png", "tests/fixtures/images"])
        .args(["--out", out.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&out).unwrap();
    std::fs::remove_file(&out).ok();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = lines.iter().map(|l| l["image"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "tests/fixtures/images/photo.png",
            "tests/fixtures/florence2-a/config.json",
            "tests/fixtures/images/photo.png",
            "tests/fixtures/images/gray.png",
            "tests/fixtures/images/photo.png",
            "tests/fixtures/images/text.jpg",
        ]
    );
    for k in [0, 2, 4] {
        assert_eq!(lines[k]["text"], run["greedy"]["text"], "line {k}");
        assert_eq!(
            lines[k]["result"], run["greedy"]["post_processed"],
            "line {k}"
        );
    }
    assert!(
        lines[1]["error"].as_str().unwrap().contains("config.json"),
        "{}",
        lines[1]
    );
    assert!(lines[3]["result"].is_object() && lines[5]["result"].is_object());
}
