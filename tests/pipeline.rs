//! The library's pipeline layer on its own (no CLI code): a Florence-2 `<OD>` and a
//! Florence-VL question, each from an image held in memory, against transformers' answers;
//! errors in the library's own words; the `ask` example's question and follow-up.

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

/// Errors from the library name its own settings in plain words, never a CLI flag: an
/// application embedding it has no `--num-beams` to pass. Each [`Setting`] error also tells
/// which setting it is, so a front end can name it its own way (as the CLI names its flags).
#[test]
fn library_errors_name_settings_not_cli_flags() {
    use fvl_wgpu::gpu::{Gpu, GpuOptions};
    use fvl_wgpu::pipeline::florence2::Florence2Folder;
    use fvl_wgpu::{Error, Setting};

    let folder = Florence2Folder::open(&fixture_path("florence2-a")).unwrap();
    let task = Task::new("<CAPTION>", None).unwrap();
    let plan = |num_beams, max_new_tokens| {
        let opts = TaskOptions {
            num_beams,
            max_new_tokens,
            no_repeat_ngram_size: None,
        };
        folder.plan(&task, &opts).unwrap_err()
    };
    let out = common::scratch("setting-errors");
    let ck = fvl_wgpu::weights::Checkpoint::open(fixture_path("llama-a")).unwrap();
    let adapter = GpuOptions {
        adapter: Some("99".into()),
        ..Default::default()
    };
    let cases = [
        (plan(Some(0), None), Setting::NumBeams, "num_beams 0"),
        (plan(Some(1_000_000), None), Setting::NumBeams, "num_beams 1000000"),
        (plan(Some(1), Some(100_000)), Setting::MaxNewTokens, "max_new_tokens 100000"),
        (Gpu::new(&adapter).err().unwrap(), Setting::Adapter, "adapter 99"),
        (
            fvl_wgpu::weights::write_quantized(&ck, &fixture_path("llama-a"), DType::Q8, &|_| true, &|| {})
                .unwrap_err(),
            Setting::OutputFolder,
            "the output folder is the same folder as the input folder",
        ),
        (
            fvl_wgpu::pipeline::batch::expand_inputs(&[out]).unwrap_err(),
            Setting::Images,
            "the image list",
        ),
    ];
    for (e, setting, says) in cases {
        let shown = e.to_string();
        assert!(shown.contains(says) && !shown.contains("--"), "{shown}");
        assert_eq!(shown.lines().count(), 1, "{shown}");
        assert!(matches!(&e, Error::Setting { setting: s, .. } if *s == setting), "{e:?}");
        // A front end's own word for the setting takes the setting's place.
        let named = e.naming(|s| (s == setting).then_some("<FLAG>"));
        assert!(named.contains("<FLAG>") && named != shown, "{named}");
    }
}

// The `ask` example itself, compiled into this test so that `--test pipeline` runs it.
#[allow(dead_code)] // its `main`
#[path = "../examples/ask.rs"]
mod ask_example;

/// The `ask` example on the fixture: both questions answered in one conversation, the
/// follow-up prefilling only its own few positions (the image rows stay cached) and running
/// no vision pass; a bad folder is one line with no CLI flag in it.
#[test]
fn ask_example_answers_a_question_and_a_follow_up() {
    let (model, image) = (fixture_path("florence-vl-tiny"), fixture_path("images/photo.png"));
    let bart = fixture_path("florence2-a");
    let mut out = Vec::new();
    ask_example::run(&model, &image, Some(bart.as_path()), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    // "Q: …\nA: <answer>\n   (N tokens, …; prefilled P positions in … ms, vision V ms; …)"
    let mut prefilled = vec![];
    let mut rest = text.as_str();
    for q in ask_example::QUESTIONS {
        let asked = format!("Q: {q}\nA: ");
        let at = rest.find(&asked).unwrap_or_else(|| panic!("{q}: {text}"));
        rest = &rest[at + asked.len()..];
        let (answer, report) = rest.split_once("\n   (").unwrap();
        assert!(!answer.trim().is_empty(), "{q}: no answer in {text}");
        let tokens: usize = report.split(' ').next().unwrap().parse().unwrap();
        let positions: usize = report
            .split_once("prefilled ")
            .and_then(|(_, r)| r.split(' ').next()?.parse().ok())
            .unwrap();
        assert!(tokens >= 1, "{text}");
        prefilled.push((positions, report.contains("vision 0 ms")));
    }
    let want = json("florence-vl-tiny/expected.json")["merged_length"].as_u64().unwrap() as usize;
    assert!(prefilled[0].0 >= want - 10, "{text}");
    // A re-read would prefill the first turn again: more positions than the first question.
    assert!(prefilled[1].0 < prefilled[0].0 && prefilled[1].1, "follow-up re-read the image: {text}");

    let e = ask_example::run(&image, &image, None, &mut Vec::new()).unwrap_err().to_string();
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(!e.contains("--"), "{e}");
}
