//! The library's pipeline layer on its own (no CLI code): a Florence-2 `<OD>` and a
//! Florence-VL question, each from an image held in memory, against transformers' answers.

mod common;

use common::fixture_path;
use fvl_wgpu::gpu::DType;
use fvl_wgpu::model::generate::Stop;
use fvl_wgpu::pipeline::{
    Answer, AskOptions, Florence2, FlorenceVl, ImageInput, Task, TaskOptions,
};
use serde_json::Value;

fn json(rel: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture_path(rel)).unwrap()).unwrap()
}

/// `<OD>` on photo.png given as encoded bytes and as `image` crate pixels: transformers'
/// greedy ids and post-processed boxes; the streamed text is the answer's; a cancel stops
/// early with a prefix of the same ids.
#[test]
fn florence2_od_from_memory_matches_transformers() {
    let gen = json("florence2-a/generate.json");
    let run = gen["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["task"] == "<OD>" && r["image"] == "photo.png")
        .unwrap();
    let m = Florence2::load(common::gpu(), &fixture_path("florence2-a"), DType::F32).unwrap();
    let task = Task::new("<OD>", None).unwrap();
    let opts = TaskOptions {
        max_new_tokens: Some(20),
        num_beams: Some(1),
        no_repeat_ngram_size: Some(0),
    };
    let bytes = std::fs::read(fixture_path("images/photo.png")).unwrap();
    let pixels = image::load_from_memory(&bytes).unwrap().to_rgb8();
    for input in [ImageInput::Bytes(&bytes), ImageInput::Decoded(&pixels)] {
        let mut streamed = String::new();
        let out = m
            .run(input, &task, &opts, &mut |piece| {
                streamed += piece;
                true
            })
            .unwrap();
        assert_eq!(serde_json::json!(out.token_ids), run["greedy"]["ids"]);
        assert_eq!(out.text, run["greedy"]["text"].as_str().unwrap());
        assert_eq!(out.result, run["greedy"]["post_processed"]);
        assert!(matches!(&out.answer, Answer::Boxes { bboxes, .. } if bboxes.len() == 3));
        assert!(out.text.starts_with(&streamed) && !streamed.is_empty());
        assert!(!out.cancelled);
    }
    let mut steps = 0;
    let cut = m
        .run(ImageInput::Bytes(&bytes), &task, &opts, &mut |_| {
            steps += 1;
            steps < 3
        })
        .unwrap();
    assert!(cut.cancelled);
    let want: Vec<u32> = serde_json::from_value(run["greedy"]["ids"].clone()).unwrap();
    assert_eq!(cut.token_ids, want[..cut.token_ids.len()]);
    assert!(cut.token_ids.len() < want.len());

    // Not an image, and a task that needs text: one clear error each.
    let e = m.run(ImageInput::Bytes(b"GIF89a no"), &task, &opts, &mut |_| true);
    assert!(e.unwrap_err().to_string().contains("image"));
    let e = Task::new("<CAPTION_TO_PHRASE_GROUNDING>", None).unwrap_err();
    assert!(e.to_string().contains("needs text"), "{e}");
}

/// A Florence-VL question about photo.png given as encoded bytes: transformers' 16 greedy ids.
#[test]
fn florence_vl_question_from_memory_matches_transformers() {
    let j = json("florence-vl-tiny/expected.json");
    let bart = fixture_path("florence2-a");
    let vl = FlorenceVl::load(
        common::gpu(),
        &fixture_path("florence-vl-tiny"),
        DType::F32,
        Some(&bart),
    )
    .unwrap();
    let bytes = std::fs::read(fixture_path("images/photo.png")).unwrap();
    let opts = AskOptions {
        max_new_tokens: 16,
        ..Default::default()
    };
    let question = j["question"].as_str().unwrap();
    let reply = vl
        .ask(ImageInput::Bytes(&bytes), question, &opts, &mut |_| true)
        .unwrap();
    assert_eq!(
        serde_json::json!(reply.token_ids),
        j["answer_ids_16_no_eos"]
    );
    assert_eq!(reply.stopped, Stop::Length);
    assert_eq!(
        serde_json::json!(reply.prompt_positions),
        j["merged_length"]
    );
}
