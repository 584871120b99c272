//! Bad input reaching the CLI and the chats (issue 14, items 6–8): ids outside a vocabulary,
//! a chat at the end of its context or fed a bad line, and the smaller defects. Each test ran
//! the release binary on the bundled fixtures and failed before its fix.

mod common;

use common::{copy_fixture, edit_json, scratch};

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// Runs the binary with `stdin` as its input: (exit code, stdout, stderr).
fn fvl_with(args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fvl-wgpu"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run fvl-wgpu");
    let mut input = child.stdin.take().unwrap();
    let bytes = stdin.to_vec();
    let writer = std::thread::spawn(move || input.write_all(&bytes));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().ok();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn fvl(args: &[&str]) -> (i32, String, String) {
    fvl_with(args, &[], b"")
}

fn fixture(rel: &str) -> String {
    common::fixture_path(rel).to_str().unwrap().to_string()
}

/// A non-zero exit with one `error:` line (the device line and progress may precede it).
fn one_line_error(code: i32, err: &str) {
    assert_ne!(code, 0, "{err}");
    let errors = err.lines().filter(|l| l.starts_with("error:")).count();
    assert_eq!(errors, 1, "{err}");
    assert!(err.trim_end().lines().last().unwrap().starts_with("error:"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Adds the token `content` with id `id` to a `tokenizer.json`.
fn add_token(path: &Path, id: u32, content: &str) {
    edit_json(path, |t| {
        t["added_tokens"].as_array_mut().unwrap().push(serde_json::json!({
            "id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        }));
    });
}

/// The tiny Florence-VL fixture (and its tower, which it names as a sibling) under `root`,
/// with `edit` applied to the copy's folder; returns the copy's path.
fn florence_vl_copy(root: &Path, edit: impl FnOnce(&Path)) -> String {
    let model = root.join("florence-vl-tiny");
    copy_fixture("florence-vl-tiny", &model);
    copy_fixture("florence2-a-original", &root.join("florence2-a-original"));
    edit(&model);
    model.to_str().unwrap().to_string()
}

/// An interactive `infer` chat on `model` fed `lines`.
fn chat(model: &str, lines: &[u8], max_new: &str) -> (i32, String, String) {
    fvl_with(
        &[
            "infer",
            "--model",
            model,
            "--image",
            &fixture("images/photo.png"),
            "--florence-tokenizer",
            &fixture("florence2-a"),
            "--max-new-tokens",
            max_new,
        ],
        &[],
        lines,
    )
}

/// Item 6: a follow-up question gets the vocabulary check the first one gets: a token the
/// tokenizer has but the embedding table lacks is refused in one line and the chat goes on.
#[test]
fn follow_up_questions_are_checked_against_the_vocabulary() {
    let root = scratch("follow-up-vocab");
    let model = florence_vl_copy(&root, |m| add_token(&m.join("tokenizer.json"), 600, "<zz>"));
    let (code, out, err) = chat(&model, b"hello\nwhat is <zz> here\nbye\n", "3");
    assert_eq!(code, 0, "{err}");
    // (tokenizers numbers the added token 513, right after the vocabulary)
    assert!(err.contains("outside the model's vocabulary of 513 tokens"), "{err}");
    assert_eq!(out.lines().count(), 2, "two answers: {out:?}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Item 6: the Florence-2 tokenizer must belong to the tower's vocabulary: one whose ids
/// run past the embedding table is refused in one line naming both numbers, for
/// `infer --florence-tokenizer` and for a Florence-2 folder's own tokenizer.
#[test]
fn a_tokenizer_of_another_vocabulary_is_refused() {
    let (code, _, err) = fvl(&[
        "infer",
        "--model",
        &fixture("florence-vl-tiny"),
        "--image",
        &fixture("images/photo.png"),
        "--prompt",
        "hi",
        "--florence-tokenizer",
        &fixture("florence2-b"),
    ]);
    one_line_error(code, &err);
    assert!(err.contains("1657") && err.contains("1525 rows"), "{err}");

    let root = scratch("florence2-vocab");
    let model = root.join("florence2-a");
    copy_fixture("florence2-a", &model);
    // tokenizers numbers added tokens after the last one: these get 1526 to 1556.
    for k in 0..31 {
        add_token(&model.join("tokenizer.json"), 1526 + k, &format!("<z{k}>"));
    }
    let (code, _, err) = fvl(&[
        "florence2",
        "--model",
        model.to_str().unwrap(),
        "--image",
        &fixture("images/photo.png"),
        "--task",
        "<CAPTION>",
    ]);
    one_line_error(code, &err);
    assert!(err.contains("1556") && err.contains("1536 rows"), "{err}");
}

/// Item 7: at the end of its context the chat drops its oldest turns (keeping the system
/// message and the image), says so on stderr and answers every question.
#[test]
fn a_full_chat_drops_its_oldest_turns_and_goes_on() {
    let root = scratch("full-context");
    let model = florence_vl_copy(&root, |m| {
        edit_json(&m.join("config.json"), |c| {
            c["tokenizer_model_max_length"] = 160.into()
        })
    });
    let questions: String = (0..10).map(|k| format!("what is in the picture {k}\n")).collect();
    let (code, out, err) = chat(&model, questions.as_bytes(), "8");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 10, "ten answers: {out:?}\n{err}");
    assert!(err.contains("dropped the oldest"), "{err}");
    assert!(!err.contains("error"), "{err}");
}

/// Item 7: a question too long for the context, and a line that is not UTF-8, each get one
/// line on stderr; the chat answers the questions around them and ends with exit 0.
#[test]
fn a_chat_survives_an_overlong_or_invalid_line() {
    let mut input = b"hello\n".to_vec();
    input.extend("word ".repeat(3000).as_bytes());
    input.extend(b"\nnot \xff\xfe text\nbye\n");
    let (code, out, err) = chat(&fixture("florence-vl-tiny"), &input, "3");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2, "two answers: {out:?}\n{err}");
    assert!(err.contains("shorten the question"), "{err}");
    assert!(err.contains("not UTF-8"), "{err}");
}

/// Item 8: `--max-new-tokens 0` is refused while parsing (it generated one token; transformers
/// refuses it too), and the largest number is bounded by the context instead of wrapping.
#[test]
fn max_new_tokens_zero_is_refused_and_a_huge_one_is_bounded() {
    let model = fixture("llama-a");
    let (code, _, err) = fvl(&["generate", "--model", &model, "--prompt", "hi", "--max-new-tokens", "0"]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("--max-new-tokens") && err.contains("≥ 1"), "{err}");
    let huge = usize::MAX.to_string();
    let (code, out, err) = fvl(&[
        "generate", "--model", &model, "--prompt-ids", "1,2,3", "--max-new-tokens", &huge,
        "--context", "12", "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let n = v["token_ids"].as_array().unwrap().len();
    // 9 positions after the prompt, and the last id chosen is never fed.
    assert!((1..=10).contains(&n), "{n} tokens in a 12-position context after 3: {out}");
}

/// Item 8: a context longer than the model's position table is refused, naming both.
#[test]
fn context_past_max_position_embeddings_is_refused() {
    let (code, _, err) = fvl(&[
        "generate", "--model", &fixture("llama-a"), "--prompt", "hi", "--context", "100000",
    ]);
    one_line_error(code, &err);
    assert!(err.contains("100000") && err.contains("max_position_embeddings = 512"), "{err}");
}

/// Item 8: a reader that closes stdout early (`| head -c 5`) ends the run quietly: no panic,
/// no backtrace, streamed or `--json`.
#[test]
fn a_closed_stdout_ends_quietly() {
    let model = fixture("llama-a");
    for json in [false, true] {
        let mut args = vec!["generate", "--model", &model, "--prompt", "hi", "--max-new-tokens", "20"];
        if json {
            args.push("--json");
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_fvl-wgpu"))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Closed before anything is written: the first write meets no reader.
        drop(child.stdout.take());
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        let status = child.wait().unwrap();
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{err}");
        let sigpipe = status.signal() == Some(13);
        assert!(status.success() || sigpipe, "{status:?}: {err}");
    }
}

/// Item 8: `--num-beams 1000000` is refused at once with the bound, instead of hanging.
#[test]
fn num_beams_is_bounded() {
    let t = std::time::Instant::now();
    let (code, _, err) = fvl(&[
        "florence2", "--model", &fixture("florence2-a"), "--image", &fixture("images/photo.png"),
        "--task", "<CAPTION>", "--num-beams", "1000000",
    ]);
    one_line_error(code, &err);
    assert!(err.contains("1000000") && err.contains("at most 64"), "{err}");
    assert!(t.elapsed().as_secs() < 60, "took {:?}", t.elapsed());
}

/// Rewrites the safetensors `file` with `edit` applied to its header.
fn edit_safetensors_header(file: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let bytes = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    let text = serde_json::to_vec(&header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(&bytes[8 + n..]);
    std::fs::write(file, out).unwrap();
}

/// Item 8: an unknown safetensors dtype is named as such (it read "not valid JSON"), and a
/// shape that disagrees with its data offsets names the tensor and both sizes (it read
/// `TensorInvalidInfo`).
#[test]
fn safetensors_header_entries_are_explained() {
    let root = scratch("st-dtype");
    let model = root.join("llama-b");
    copy_fixture("llama-b", &model);
    let file = model.join("model.safetensors");
    let pristine = std::fs::read(&file).unwrap();
    let name = "model.norm.weight";
    let m = model.to_str().unwrap();
    edit_safetensors_header(&file, |h| h[name]["dtype"] = "F12".into());
    let (code, _, err) = fvl(&["inspect", "--model", m]);
    one_line_error(code, &err);
    assert!(err.contains("unsupported dtype \"F12\"") && err.contains(name), "{err}");
    assert!(err.contains("model.safetensors"), "{err}");

    std::fs::write(&file, &pristine).unwrap();
    edit_safetensors_header(&file, |h| h[name]["shape"] = serde_json::json!([3]));
    let (code, _, err) = fvl(&["inspect", "--model", m]);
    one_line_error(code, &err);
    assert!(err.contains(name) && err.contains("data_offsets"), "{err}");
    assert!(!err.contains("TensorInvalidInfo"), "{err}");
}

/// Item 8: an `FVL_ADAPTER` that names no adapter is reported as `FVL_ADAPTER` (not
/// `--device`, which the user never passed) with the adapters there are.
#[test]
fn fvl_adapter_errors_name_the_variable() {
    let (code, _, err) = fvl_with(&["selfcheck"], &[("FVL_ADAPTER", "no-such-gpu")], b"");
    one_line_error(code, &err);
    assert!(err.contains("FVL_ADAPTER") && !err.contains("--device"), "{err}");
    assert!(err.contains("the adapters are 0: "), "{err}");
}

/// Item 8: `infer` reads the image before it loads the model: a missing or broken image is
/// reported even when the model folder is unusable, and no device is opened for it.
#[test]
fn infer_checks_the_image_before_the_model() {
    let root = scratch("infer-image");
    let broken = root.join("broken.png");
    std::fs::write(&broken, b"not a png").unwrap();
    let nothing = root.join("no-model");
    std::fs::create_dir_all(&nothing).unwrap();
    for image in [root.join("missing.png"), broken] {
        let img = image.to_str().unwrap();
        let (code, _, err) = fvl(&[
            "infer", "--model", nothing.to_str().unwrap(), "--image", img, "--prompt", "hi",
        ]);
        one_line_error(code, &err);
        assert!(err.contains(img), "{err}");
        assert!(!err.contains("device:"), "{err}");
    }
}

/// Item 8: a step that splits its tensors into more buffers than the adapter binds is
/// explained in user words (it read "bmm needs 39 storage buffers").
#[test]
fn too_many_buffers_is_explained() {
    let (code, _, err) = fvl_with(
        &[
            "florence2", "--model", &fixture("florence2-a"), "--image", &fixture("images/photo.png"),
            "--task", "<CAPTION>",
        ],
        &[("FVL_MAX_BINDING", "4096")],
        b"",
    );
    one_line_error(code, &err);
    assert!(err.contains("4096 bytes") && err.contains("larger storage bindings"), "{err}");
    assert!(!err.contains("bmm needs"), "{err}");
}

/// Items 6 and 7 for `generate --chat` without `--prompt` (the text chat): a full context
/// drops the oldest turns (keeping the system message) and says so; a too-long message, a
/// line that is not UTF-8 and a token outside the embedding table each get one line on
/// stderr; every other message is answered and the chat ends with exit 0.
#[test]
fn the_text_chat_survives_its_limits() {
    let root = scratch("text-chat");
    let model = root.join("llama-a");
    copy_fixture("llama-a", &model);
    let vocab = common_vocab(&model);
    add_token(&model.join("tokenizer.json"), vocab as u32, "<zz>");
    let mut input: Vec<u8> = (0..8).flat_map(|k| format!("tell me about {k}\n").into_bytes()).collect();
    input.extend("word ".repeat(200).as_bytes());
    input.extend(b"\nnot \xff text\nwhat is <zz>\nbye\n");
    let (code, out, err) = fvl_with(
        &[
            "generate", "--model", model.to_str().unwrap(), "--chat", "--context", "64",
            "--max-new-tokens", "6",
        ],
        &[],
        &input,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.matches('\n').count() >= 9, "nine answers: {out:?}\n{err}");
    assert!(err.contains("dropped the oldest"), "{err}");
    assert!(err.contains("shorten the question"), "{err}");
    assert!(err.contains("not UTF-8"), "{err}");
    assert!(err.contains(&format!("outside the model's vocabulary of {vocab} tokens")), "{err}");
    assert!(!err.contains("error") && !err.contains("panicked"), "{err}");
}

/// Rows of a Llama fixture's embedding table (`vocab_size` of its config).
fn common_vocab(model: &Path) -> usize {
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    cfg["vocab_size"].as_u64().unwrap() as usize
}
