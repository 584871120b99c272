//! What a newcomer meets on a first run (issue 15): a quiet stderr on a headless machine,
//! one-line usage errors, messages that name the right flag.

use std::process::Command;

fn fvl(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fvl-wgpu"));
    cmd.args(args);
    cmd
}

fn stderr_of(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run fvl-wgpu");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn headless_vulkan_prints_no_runtime_dir_error() {
    // Without XDG_RUNTIME_DIR the Vulkan stack's Wayland probe used to print
    // "error: XDG_RUNTIME_DIR is invalid or not set" twice per command.
    let (code, out, err) = stderr_of(fvl(&["devices"]).env_remove("XDG_RUNTIME_DIR"));
    assert_eq!(code, 0, "{err}");
    assert!(!out.is_empty());
    assert!(!err.contains("error"), "stderr: {err}");
}

#[test]
fn grounding_without_text_points_at_the_text_flag() {
    let (code, _, err) = stderr_of(&mut fvl(&[
        "florence2",
        "--model",
        "tests/fixtures/florence2-a",
        "--image",
        "tests/fixtures/images/photo.png",
        "--task",
        "<CAPTION_TO_PHRASE_GROUNDING>",
    ]));
    assert_eq!(code, 1);
    assert!(err.contains("needs --text"), "{err}");
}

#[test]
fn quantize_offers_only_the_formats_it_writes() {
    let (_, help, _) = stderr_of(&mut fvl(&["quantize", "--help"]));
    assert!(help.contains("q8") && help.contains("q4"), "{help}");
    // Listed as "- q8: …" values; f32/f16 are not offered (only named in "f16 scale").
    assert!(!help.contains("f32") && !help.contains("f16:"), "{help}");
    let (code, _, err) = stderr_of(&mut fvl(&[
        "quantize", "--model", "x", "--out", "y", "--quant", "f16",
    ]));
    assert_ne!(code, 0);
    assert!(err.contains("q8") && err.contains("q4"), "{err}");
}

#[test]
fn one_prompt_token_is_singular() {
    let (code, _, err) = stderr_of(&mut fvl(&[
        "generate",
        "--model",
        "tests/fixtures/llama-a",
        "--prompt-ids",
        "5",
        "--max-new-tokens",
        "1",
        "--quant",
        "f32",
    ]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("prefill 1 token at"), "{err}");
}

#[test]
fn help_texts_say_what_the_commands_do() {
    let (_, help, _) = stderr_of(&mut fvl(&["--help"]));
    assert!(!help.contains("(or, later, whole models)"), "{help}");
    assert!(!help.contains("every kernel family"), "{help}");
}

/// Issue 15: every phase of a run says itself on stderr, one line `phase…` each when stderr is
/// not a terminal (as here), in order: what a log of a minutes-long run on a CPU adapter shows.
#[test]
fn florence2_and_infer_say_each_phase_on_stderr() {
    let phases = |args: &[&str], want: &[&str]| {
        let (code, _, err) = stderr_of(&mut fvl(args));
        assert_eq!(code, 0, "{err}");
        // Kernel compilation says itself too, on a cold cache only.
        let said: Vec<&str> = err
            .lines()
            .filter(|l| l.ends_with('…') && !l.contains("GPU kernels"))
            .collect();
        assert_eq!(said, want, "{err}");
    };
    let image = "tests/fixtures/images/photo.png";
    phases(
        &["florence2", "-m", "tests/fixtures/florence2-a", "-i", image, "--task", "<OD>", "-n", "6", "--json"],
        &["loading the model…", "vision and encoder…", "decoding…"],
    );
    phases(
        &[
            "infer", "-m", "tests/fixtures/florence-vl-tiny", "-i", image,
            "--florence-tokenizer", "tests/fixtures/florence2-a", "-p", "What is shown?", "-n", "4", "--json",
        ],
        &["loading the model…", "vision (tower, encoder, projector)…", "prefill…", "decoding…"],
    );
}
