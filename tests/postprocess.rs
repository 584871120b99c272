//! Florence-2 post-processing against HF's `Florence2Processor.post_process_generation`: the
//! generate.json runs of the tiny models and crafted generations
//! (`tools/make_postprocess_cases.py`).

use std::path::Path;

use fvl_wgpu::postprocess::{Answer, AnswerKind, PostProcessor};
use serde_json::Value;

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn size(v: &Value) -> (u32, u32) {
    (v[0].as_u64().unwrap() as u32, v[1].as_u64().unwrap() as u32)
}

#[test]
fn generate_json_runs_match_hf() {
    let mut checked = 0;
    for model in ["florence2-a", "florence2-b"] {
        let dir = Path::new("tests/fixtures").join(model);
        let pp = PostProcessor::for_model(&dir).unwrap();
        let gen = read_json(&dir.join("generate.json"));
        for run in gen["runs"].as_array().unwrap() {
            let task = run["task"].as_str().unwrap();
            for mode in ["greedy", "beam3"] {
                let text = run[mode]["text"].as_str().unwrap();
                let got = pp.parse_json(task, text, size(&run["image_size_wh"]));
                assert_eq!(
                    got, run[mode]["post_processed"],
                    "{model} {task} {mode}: {text}"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 16);
}

#[test]
fn crafted_cases_match_hf() {
    let cases = read_json(Path::new("tests/fixtures/postprocess_cases.json"));
    let pp = PostProcessor::for_model(Path::new("tests/fixtures/florence2-a")).unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 40);
    for case in cases {
        let (task, text) = (
            case["task"].as_str().unwrap(),
            case["text"].as_str().unwrap(),
        );
        let got = pp.parse_json(task, text, size(&case["image_size_wh"]));
        assert_eq!(got, case["expected"], "{task} {text:?}");
    }
}

#[test]
fn builtin_blacklist_equals_the_shipped_one() {
    let builtin = PostProcessor::default();
    let text = "</s><s>it<loc_1><loc_2><loc_3><loc_4>the image<loc_1><loc_2><loc_3><loc_4>\
                each other<loc_1><loc_2><loc_3><loc_4>car<loc_1><loc_2><loc_3><loc_4></s>";
    let task = "<CAPTION_TO_PHRASE_GROUNDING>";
    let shipped = PostProcessor::for_model(Path::new("tests/fixtures/florence2-a")).unwrap();
    assert_eq!(
        builtin.parse_json(task, text, (100, 100)),
        shipped.parse_json(task, text, (100, 100))
    );
    let Answer::Boxes { labels, .. } = builtin.parse(task, text, (100, 100)) else {
        panic!("grounding gives boxes");
    };
    assert_eq!(labels, ["car"]);
}

#[test]
fn task_kinds() {
    assert_eq!(
        AnswerKind::of_task("<OD>"),
        AnswerKind::DescriptionWithBboxes
    );
    assert_eq!(
        AnswerKind::of_task("<CAPTION_TO_PHRASE_GROUNDING>a car"),
        AnswerKind::PhraseGrounding
    );
    assert_eq!(AnswerKind::of_task("<REGION_TO_OCR>"), AnswerKind::PureText);
    assert_eq!(AnswerKind::of_task("free text"), AnswerKind::PureText);
}
