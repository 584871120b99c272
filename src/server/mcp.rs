//! `fvl-wgpu mcp`: a Model Context Protocol server over stdio (JSON-RPC 2.0, one message a
//! line). Florence-2 models offer `caption`, `detailed_caption`, `ocr`, `detect` and `ground`;
//! Florence-VL models offer `ask`. Each takes an image file path and answers with text plus
//! structured content.

use std::io::{BufRead, Write};
use std::path::PathBuf;

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

/// Which tools a server offers: those of its model's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A Florence-2 model: the task tools.
    Florence2,
    /// A Florence-VL model: `ask`.
    FlorenceVl,
}

impl Kind {
    /// The kind of a loaded model.
    pub fn of(model: &Loaded) -> Kind {
        match model {
            Loaded::Florence2(_) => Kind::Florence2,
            Loaded::FlorenceVl(_) => Kind::FlorenceVl,
        }
    }
}

/// The tools of `kind`, as `tools/list` returns them.
pub fn tools(kind: Kind) -> Vec<Value> {
    match kind {
        Kind::Florence2 => TASK_TOOLS
            .iter()
            .map(|(name, _, text, what)| {
                let extra = text.then_some((
                    "text",
                    "The phrases to find, e.g. \"a red car and a tree\".",
                ));
                json!({"name": name, "description": what, "inputSchema": image_schema(extra)})
            })
            .collect(),
        Kind::FlorenceVl => vec![json!({
            "name": "ask",
            "description": "Answer a question about an image.",
            "inputSchema": image_schema(Some(("question", "The question about the image."))),
        })],
    }
}

/// A `tools/call` whose arguments were checked (no file is opened yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolCall {
    /// A Florence-2 task on an image file.
    Task {
        /// The image file.
        image: PathBuf,
        /// The task, with its text where it takes one.
        task: Task,
    },
    /// A question about an image file.
    Ask {
        /// The image file.
        image: PathBuf,
        /// The question.
        question: String,
    },
}

/// What one JSON-RPC request asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `initialize`, answered with this protocol revision.
    Initialize(&'static str),
    /// `ping`.
    Ping,
    /// `tools/list`.
    ListTools,
    /// `tools/call`; bad arguments are a tool error the caller can read, not a protocol error.
    Call(std::result::Result<ToolCall, String>),
}

/// A request, or a JSON-RPC error code and message.
pub type RpcResult = std::result::Result<Request, (i64, String)>;

/// Checks a known tool's arguments.
fn parse_call(kind: Kind, name: &str, args: &Value) -> std::result::Result<ToolCall, String> {
    let arg = |key: &str| args.get(key).and_then(Value::as_str);
    let image = PathBuf::from(arg("image").ok_or("the image argument (a file path) is required")?);
    match kind {
        Kind::Florence2 => {
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
            Ok(ToolCall::Task { image, task })
        }
        Kind::FlorenceVl => {
            let question = arg("question").ok_or("the question argument is required")?;
            Ok(ToolCall::Ask {
                image,
                question: question.to_string(),
            })
        }
    }
}

/// Parses one JSON-RPC message for a server of `kind` (pure: the fuzz target's entry).
/// `None` for a notification (no id); else its id and the request, or a JSON-RPC error
/// code and message.
pub fn parse_message(kind: Kind, msg: &Value) -> Option<(Value, RpcResult)> {
    let id = msg.get("id").cloned()?;
    let method = msg["method"].as_str().unwrap_or("");
    let params = &msg["params"];
    let request = match method {
        "initialize" => {
            let asked = params["protocolVersion"].as_str().unwrap_or("");
            let version = VERSIONS
                .iter()
                .find(|v| **v == asked)
                .unwrap_or(&VERSIONS[0]);
            Ok(Request::Initialize(version))
        }
        "ping" => Ok(Request::Ping),
        "tools/list" => Ok(Request::ListTools),
        "tools/call" => match params["name"].as_str() {
            None => Err((-32602, "tools/call needs params.name".to_string())),
            Some(name) if !tools(kind).iter().any(|t| t["name"] == name) => {
                Err((-32602, format!("unknown tool {name:?}")))
            }
            Some(name) => {
                let args = params.get("arguments").cloned().unwrap_or(json!({}));
                Ok(Request::Call(parse_call(kind, name, &args)))
            }
        },
        _ => Err((-32601, format!("method {method:?} not found"))),
    };
    Some((id, request))
}

/// A tool's result: text content, structured content, and whether it is an error.
fn result(text: String, structured: Value, is_error: bool) -> Value {
    json!({
        "content": [{"type": "text", "text": text}],
        "structuredContent": structured,
        "isError": is_error,
    })
}

/// Runs a checked tool call on the model.
fn run_tool(model: &Loaded, call: ToolCall) -> std::result::Result<Value, String> {
    match (model, call) {
        (Loaded::Florence2(m), ToolCall::Task { image, task }) => {
            let out = m
                .run(
                    ImageInput::Path(&image),
                    &task,
                    &TaskOptions::default(),
                    &mut |_| true,
                )
                .map_err(|e| e.to_string())?;
            let text = match &out.answer {
                Answer::Text(t) => t.clone(),
                other => other.to_json().to_string(),
            };
            Ok(result(
                text,
                json!({"task": task.token(), "result": out.answer.to_json()}),
                false,
            ))
        }
        (Loaded::FlorenceVl(vl), ToolCall::Ask { image, question }) => {
            let opts = AskOptions {
                max_new_tokens: 256,
                ..Default::default()
            };
            let reply = vl
                .ask(ImageInput::Path(&image), &question, &opts, &mut |_| true)
                .map_err(|e| e.to_string())?;
            let structured = json!({"answer": reply.text, "stopped": reply.stopped.name()});
            Ok(result(reply.text, structured, false))
        }
        _ => Err("this model does not offer that tool".to_string()),
    }
}

/// Answers one message (`None` for notifications); `run` carries out checked tool calls.
fn answer(
    kind: Kind,
    msg: &Value,
    run: &mut dyn FnMut(ToolCall) -> std::result::Result<Value, String>,
) -> Option<Value> {
    let (id, request) = parse_message(kind, msg)?;
    let result = match request {
        Err((code, message)) => {
            return Some(
                json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}),
            )
        }
        Ok(Request::Initialize(version)) => json!({
            "protocolVersion": version,
            "capabilities": {"tools": {"listChanged": false}},
            "serverInfo": {"name": "fvl-wgpu", "version": env!("CARGO_PKG_VERSION")},
        }),
        Ok(Request::Ping) => json!({}),
        Ok(Request::ListTools) => json!({"tools": tools(kind)}),
        // Tool failures (a missing file, a bad argument) are results the model can read.
        Ok(Request::Call(call)) => call
            .and_then(&mut *run)
            .unwrap_or_else(|e| result(e, json!({"error": true}), true)),
    };
    Some(json!({"jsonrpc": "2.0", "id": id, "result": result}))
}

/// Answers one line of input: a message or a batch (`None` when nothing is to be sent back).
/// `run` carries out checked tool calls; the fuzz target passes a stand-in for the model.
pub fn answer_line(
    kind: Kind,
    line: &str,
    run: &mut dyn FnMut(ToolCall) -> std::result::Result<Value, String>,
) -> Option<Value> {
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Array(batch)) => {
            let all: Vec<Value> = batch.iter().filter_map(|m| answer(kind, m, run)).collect();
            (!all.is_empty()).then_some(Value::Array(all))
        }
        Ok(msg) => answer(kind, &msg, run),
        Err(e) => Some(
            json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": format!("parse error: {e}")}}),
        ),
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
        let answer = answer_line(Kind::of(model), &line, &mut |call| run_tool(model, call));
        if let Some(a) = answer {
            writeln!(output, "{a}")
                .and_then(|_| output.flush())
                .map_err(io)?;
        }
    }
    Ok(())
}
