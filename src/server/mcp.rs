//! `fvl-wgpu mcp`: a Model Context Protocol server over stdio (JSON-RPC 2.0, one message a
//! line). Florence-2 models offer `caption`, `detailed_caption`, `ocr`, `detect` and `ground`;
//! Florence-VL models offer `ask`. Each takes an image file path and answers with text plus
//! structured content.

use std::io::{BufRead, Write};
use std::path::Path;

use serde_json::{json, Value};

use crate::pipeline::{Answer, AskOptions, ImageInput, Task, TaskOptions};
use crate::Result;

use super::worker::Loaded;

/// Protocol revisions this server speaks, newest first.
const VERSIONS: [&str; 3] = ["2025-06-18", "2025-03-26", "2024-11-05"];

/// The Florence-2 tools: name, task token, whether it takes text, description.
const TASK_TOOLS: [(&str, &str, bool, &str); 5] = [
    (
        "caption",
        "<CAPTION>",
        false,
        "A one-sentence caption of the image.",
    ),
    (
        "detailed_caption",
        "<MORE_DETAILED_CAPTION>",
        false,
        "A detailed description of the image.",
    ),
    (
        "ocr",
        "<OCR_WITH_REGION>",
        false,
        "The text in the image, each line with its quadrilateral in pixels.",
    ),
    (
        "detect",
        "<OD>",
        false,
        "Objects in the image with their bounding boxes (x1, y1, x2, y2) in pixels.",
    ),
    (
        "ground",
        "<CAPTION_TO_PHRASE_GROUNDING>",
        true,
        "Boxes in the image for each phrase of the given text.",
    ),
];

fn image_schema(extra: Option<(&str, &str)>) -> Value {
    let mut props = json!({"image": {"type": "string", "description": "Path of an image file (PNG, JPEG, WebP or BMP)."}});
    let mut required = vec!["image"];
    if let Some((name, what)) = extra {
        props[name] = json!({"type": "string", "description": what});
        required.push(name);
    }
    json!({"type": "object", "properties": props, "required": required, "additionalProperties": false})
}

/// The tools `model` offers, as `tools/list` returns them.
pub fn tools(model: &Loaded) -> Vec<Value> {
    match model {
        Loaded::Florence2(_) => TASK_TOOLS
            .iter()
            .map(|(name, _, text, what)| {
                let extra = text.then_some((
                    "text",
                    "The phrases to find, e.g. \"a red car and a tree\".",
                ));
                json!({"name": name, "description": what, "inputSchema": image_schema(extra)})
            })
            .collect(),
        Loaded::FlorenceVl(_) => vec![json!({
            "name": "ask",
            "description": "Answer a question about an image.",
            "inputSchema": image_schema(Some(("question", "The question about the image."))),
        })],
    }
}

/// A tool's result: text content, structured content, and whether it is an error.
fn result(text: String, structured: Value, is_error: bool) -> Value {
    json!({
        "content": [{"type": "text", "text": text}],
        "structuredContent": structured,
        "isError": is_error,
    })
}

fn call_tool(model: &Loaded, name: &str, args: &Value) -> std::result::Result<Value, String> {
    let arg = |key: &str| args.get(key).and_then(Value::as_str);
    let image = arg("image").ok_or("the image argument (a file path) is required")?;
    let image = ImageInput::Path(Path::new(image));
    match model {
        Loaded::Florence2(m) => {
            let &(_, token, takes_text, _) = TASK_TOOLS
                .iter()
                .find(|t| t.0 == name)
                .ok_or_else(|| format!("unknown tool {name:?}"))?;
            let text = if takes_text {
                Some(arg("text").ok_or("the text argument is required")?)
            } else {
                None
            };
            let task = Task::new(token, text).map_err(|e| e.to_string())?;
            let out = m
                .run(image, &task, &TaskOptions::default(), &mut |_| true)
                .map_err(|e| e.to_string())?;
            let text = match &out.answer {
                Answer::Text(t) => t.clone(),
                other => other.to_json().to_string(),
            };
            Ok(result(
                text,
                json!({"task": token, "result": out.answer.to_json()}),
                false,
            ))
        }
        Loaded::FlorenceVl(vl) => {
            if name != "ask" {
                return Err(format!("unknown tool {name:?}"));
            }
            let question = arg("question").ok_or("the question argument is required")?;
            let opts = AskOptions {
                max_new_tokens: 256,
                ..Default::default()
            };
            let reply = vl
                .ask(image, question, &opts, &mut |_| true)
                .map_err(|e| e.to_string())?;
            let structured = json!({"answer": reply.text, "stopped": reply.stopped.name()});
            Ok(result(reply.text, structured, false))
        }
    }
}

/// Answers one JSON-RPC message (`None` for notifications).
pub fn handle(model: &Loaded, msg: &Value) -> Option<Value> {
    let id = msg.get("id").cloned()?;
    let method = msg["method"].as_str().unwrap_or("");
    let params = &msg["params"];
    let ok = |r: Value| Some(json!({"jsonrpc": "2.0", "id": id, "result": r}));
    let err = |code: i64, m: &str| {
        Some(json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": m}}))
    };
    match method {
        "initialize" => {
            let asked = params["protocolVersion"].as_str().unwrap_or("");
            let version = VERSIONS
                .iter()
                .find(|v| **v == asked)
                .unwrap_or(&VERSIONS[0]);
            ok(json!({
                "protocolVersion": version,
                "capabilities": {"tools": {"listChanged": false}},
                "serverInfo": {"name": "fvl-wgpu", "version": env!("CARGO_PKG_VERSION")},
            }))
        }
        "ping" => ok(json!({})),
        "tools/list" => ok(json!({"tools": tools(model)})),
        "tools/call" => {
            let Some(name) = params["name"].as_str() else {
                return err(-32602, "tools/call needs params.name");
            };
            let known = tools(model).iter().any(|t| t["name"] == name);
            if !known {
                return err(-32602, &format!("unknown tool {name:?}"));
            }
            let args = params.get("arguments").cloned().unwrap_or(json!({}));
            // Tool failures (a missing file, a bad argument) are results the model can read.
            ok(call_tool(model, name, &args)
                .unwrap_or_else(|e| result(e, json!({"error": true}), true)))
        }
        _ => err(-32601, &format!("method {method:?} not found")),
    }
}

/// Reads messages from `input` until it ends, writing each answer to `output` on its own
/// line.
pub fn serve_stdio(model: &Loaded, input: impl BufRead, mut output: impl Write) -> Result<()> {
    let io = |e: std::io::Error| crate::Error::input(format!("mcp: stdio: {e}"));
    for line in input.lines() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        let answer = match serde_json::from_str::<Value>(&line) {
            Ok(Value::Array(batch)) => {
                let all: Vec<Value> = batch.iter().filter_map(|m| handle(model, m)).collect();
                (!all.is_empty()).then(|| Value::Array(all))
            }
            Ok(msg) => handle(model, &msg),
            Err(e) => Some(
                json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": format!("parse error: {e}")}}),
            ),
        };
        if let Some(a) = answer {
            writeln!(output, "{a}")
                .and_then(|_| output.flush())
                .map_err(io)?;
        }
    }
    Ok(())
}
