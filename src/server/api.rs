//! The server's request and error shapes, parsed by pure functions (bytes in, a typed request
//! or a 4xx error out) so they can be fuzzed and tested without a socket or a GPU.

use std::path::PathBuf;

use serde_json::{json, Map, Value};

/// Most tokens a request may ask for.
pub const MAX_TOKENS_LIMIT: usize = 4096;
/// Most messages in one conversation.
pub const MAX_MESSAGES: usize = 256;
/// Most `stop` sequences (OpenAI's limit).
pub const MAX_STOP: usize = 4;

/// An error answered with an HTTP status and OpenAI's error object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status (400, 401, 404, 413, 429, 500, 503).
    pub status: u16,
    /// One line saying what was wrong.
    pub message: String,
    /// The request field at fault, if one.
    pub param: Option<String>,
}

impl ApiError {
    /// A 400 about `param`.
    pub fn bad(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            message: message.into(),
            param: Some(param.to_string()),
        }
    }

    /// An error with `status` and no field.
    pub fn status(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            param: None,
        }
    }

    /// OpenAI's `type` for the status.
    fn kind(&self) -> &'static str {
        match self.status {
            401 => "authentication_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_exceeded",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        }
    }

    /// `{"error": {"message", "type", "param", "code"}}`.
    pub fn to_json(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind(),
            "param": self.param,
            "code": Value::Null,
        }})
    }
}

/// Where an image comes from, before it is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    /// Bytes decoded from a `data:` URI (or plain base64).
    Data(Vec<u8>),
    /// A local file named by `file://` or a plain path; the server checks it against its
    /// allowed folders (`ServeOptions::allow_paths`).
    File(PathBuf),
}

/// One chat message, its content flattened to text and images.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text parts joined with newlines.
    pub text: String,
    /// The image parts in order.
    pub images: Vec<ImageRef>,
}

/// A parsed `POST /v1/chat/completions`.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatRequest {
    /// The `model` field (any name is answered by the loaded model).
    pub model: Option<String>,
    /// The conversation, oldest first.
    pub messages: Vec<Message>,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<usize>,
    /// Sampling temperature (0..=2; 0 is greedy).
    pub temperature: Option<f32>,
    /// Nucleus sampling mass (0 < p ≤ 1).
    pub top_p: Option<f32>,
    /// Sampler seed.
    pub seed: Option<u32>,
    /// Sequences that end the answer (not included in it).
    pub stop: Vec<String>,
    /// Answer as server-sent events.
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with `usage`.
    pub include_usage: bool,
}

/// A parsed `POST /v1/florence2`.
#[derive(Clone, Debug, PartialEq)]
pub struct Florence2Request {
    /// The image (`image` as a data URI or path, or `image_base64`).
    pub image: ImageRef,
    /// The task token, e.g. `<OD>`.
    pub task: String,
    /// The task's text (`text`, or `text_input` as Florence2-http names it).
    pub text: Option<String>,
    /// Most tokens to generate.
    pub max_tokens: Option<usize>,
    /// Beams of the beam search (default 3).
    pub num_beams: Option<usize>,
}

fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::status(400, "the body must be a JSON object")),
        Err(e) => Err(ApiError::status(
            400,
            format!("the body is not valid JSON: {e}"),
        )),
    }
}

fn opt_uint(m: &Map<String, Value>, key: &str, max: usize) -> Result<Option<usize>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 && n <= max as u64 => Ok(Some(n as usize)),
            _ => Err(ApiError::bad(
                key,
                format!("{key} must be an integer from 1 to {max}, got {v}"),
            )),
        },
    }
}

fn opt_float(
    m: &Map<String, Value>,
    key: &str,
    ok: impl Fn(f64) -> bool,
    range: &str,
) -> Result<Option<f32>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if x.is_finite() && ok(x) => Ok(Some(x as f32)),
            _ => Err(ApiError::bad(
                key,
                format!("{key} must be {range}, got {v}"),
            )),
        },
    }
}

fn opt_bool(m: &Map<String, Value>, key: &str) -> Result<bool, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(ApiError::bad(
            key,
            format!("{key} must be true or false, got {v}"),
        )),
    }
}

fn opt_str(m: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(ApiError::bad(
            key,
            format!("{key} must be a string, got {v}"),
        )),
    }
}

/// Standard base64 (padding optional, whitespace skipped) → bytes.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let digits: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let body = digits
        .strip_suffix(b"==")
        .or_else(|| digits.strip_suffix(b"="));
    let body = body.unwrap_or(&digits);
    if body.len() % 4 == 1 || (body.len() != digits.len() && !digits.len().is_multiple_of(4)) {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() / 4 * 3 + 2);
    for chunk in body.chunks(4) {
        let mut acc = 0u32;
        for &c in chunk {
            acc = acc << 6 | val(c)?;
        }
        acc <<= 6 * (4 - chunk.len() as u32);
        out.extend(&acc.to_be_bytes()[1..chunk.len()]);
    }
    Some(out)
}

/// An image URL or path: `data:image/…;base64,…`, `file:///abs/path`, or a plain path.
/// Other schemes (http, https, …) are refused: the server fetches nothing from the network.
pub fn parse_image_url(url: &str, param: &str) -> Result<ImageRef, ApiError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let Some((meta, data)) = rest.split_once(',') else {
            return Err(ApiError::bad(
                param,
                "a data: URI needs a comma before its data",
            ));
        };
        if !meta.ends_with(";base64") {
            return Err(ApiError::bad(
                param,
                "a data: URI must be base64 (data:image/png;base64,…)",
            ));
        }
        return decode_base64(data)
            .filter(|b| !b.is_empty())
            .map(ImageRef::Data)
            .ok_or_else(|| ApiError::bad(param, "the data: URI's base64 is invalid"));
    }
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(ApiError::bad(param, "a file:// URL needs an absolute path"));
        }
        return Ok(ImageRef::File(PathBuf::from(path)));
    }
    if url.contains("://") {
        return Err(ApiError::bad(
            param,
            "only data: URIs and file:// paths are accepted (the server does not fetch URLs)",
        ));
    }
    if url.is_empty() {
        return Err(ApiError::bad(param, "the image URL is empty"));
    }
    Ok(ImageRef::File(PathBuf::from(url)))
}

fn parse_content(v: &Value, k: usize) -> Result<(String, Vec<ImageRef>), ApiError> {
    let param = format!("messages[{k}].content");
    match v {
        Value::String(s) => Ok((s.clone(), vec![])),
        Value::Null => Ok((String::new(), vec![])),
        Value::Array(parts) => {
            let mut texts = Vec::new();
            let mut images = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                let p = format!("{param}[{j}]");
                match part["type"].as_str() {
                    Some("text") => match part["text"].as_str() {
                        Some(t) => texts.push(t.to_string()),
                        None => return Err(ApiError::bad(&p, "a text part needs a string text")),
                    },
                    Some("image_url") => {
                        let url = part["image_url"]["url"]
                            .as_str()
                            .or_else(|| part["image_url"].as_str());
                        let Some(url) = url else {
                            return Err(ApiError::bad(&p, "an image_url part needs image_url.url"));
                        };
                        images.push(parse_image_url(url, &p)?);
                    }
                    _ => {
                        return Err(ApiError::bad(
                            &p,
                            "content parts must have type \"text\" or \"image_url\"",
                        ))
                    }
                }
            }
            Ok((texts.join("\n"), images))
        }
        _ => Err(ApiError::bad(
            &param,
            "content must be a string or an array of parts",
        )),
    }
}

/// Parses a chat-completions body. Pure: no file is opened (file paths are checked later).
pub fn parse_chat_request(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let m = object(body)?;
    let Some(Value::Array(list)) = m.get("messages") else {
        return Err(ApiError::bad(
            "messages",
            "messages must be a non-empty array",
        ));
    };
    if list.is_empty() || list.len() > MAX_MESSAGES {
        return Err(ApiError::bad(
            "messages",
            format!("messages must hold 1 to {MAX_MESSAGES} messages"),
        ));
    }
    let mut messages = Vec::with_capacity(list.len());
    for (k, msg) in list.iter().enumerate() {
        let role = match msg["role"].as_str() {
            Some(r @ ("system" | "developer" | "user" | "assistant")) => r,
            _ => {
                return Err(ApiError::bad(
                    &format!("messages[{k}].role"),
                    "role must be \"system\", \"user\" or \"assistant\"",
                ))
            }
        };
        let (text, images) = parse_content(&msg["content"], k)?;
        let role = if role == "developer" { "system" } else { role };
        messages.push(Message {
            role: role.to_string(),
            text,
            images,
        });
    }
    if let Some(n) = m.get("n").and_then(Value::as_u64) {
        if n != 1 {
            return Err(ApiError::bad("n", "only n = 1 is supported"));
        }
    }
    let stop = match m.get("stop") {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= MAX_STOP && a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect(),
        Some(_) => {
            return Err(ApiError::bad(
                "stop",
                format!("stop must be a string or up to {MAX_STOP} strings"),
            ))
        }
    };
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::bad("stop", "stop sequences must not be empty"));
    }
    let seed = match m.get("seed") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64().and_then(|s| u32::try_from(s).ok()) {
            Some(s) => Some(s),
            None => {
                return Err(ApiError::bad(
                    "seed",
                    format!("seed must be an integer from 0 to {}, got {v}", u32::MAX),
                ))
            }
        },
    };
    let include_usage = m
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(ChatRequest {
        model: opt_str(&m, "model")?,
        messages,
        max_tokens: match opt_uint(&m, "max_completion_tokens", MAX_TOKENS_LIMIT)? {
            Some(n) => Some(n),
            None => opt_uint(&m, "max_tokens", MAX_TOKENS_LIMIT)?,
        },
        temperature: opt_float(
            &m,
            "temperature",
            |t| (0.0..=2.0).contains(&t),
            "from 0 to 2",
        )?,
        top_p: opt_float(&m, "top_p", |p| p > 0.0 && p <= 1.0, "in (0, 1]")?,
        seed,
        stop,
        stream: opt_bool(&m, "stream")?,
        include_usage,
    })
}

/// Parses a `/v1/florence2` body (the shape of `fvl-wgpu florence2 --json`'s inputs; also
/// Florence2-http's `image_base64` / `text_input` names).
pub fn parse_florence2_request(body: &[u8]) -> Result<Florence2Request, ApiError> {
    let m = object(body)?;
    let image = match (opt_str(&m, "image")?, opt_str(&m, "image_base64")?) {
        (Some(url), _) => parse_image_url(&url, "image")?,
        (None, Some(b64)) => decode_base64(&b64)
            .filter(|b| !b.is_empty())
            .map(ImageRef::Data)
            .ok_or_else(|| ApiError::bad("image_base64", "image_base64 is not valid base64"))?,
        (None, None) => {
            return Err(ApiError::bad(
                "image",
                "image (a data: URI or a path) is required",
            ))
        }
    };
    let Some(task) = opt_str(&m, "task")? else {
        return Err(ApiError::bad("task", "task (e.g. \"<OD>\") is required"));
    };
    let text = match opt_str(&m, "text")? {
        Some(t) => Some(t),
        None => opt_str(&m, "text_input")?,
    };
    Ok(Florence2Request {
        image,
        task,
        text: text.filter(|t| !t.is_empty()),
        max_tokens: match opt_uint(&m, "max_new_tokens", MAX_TOKENS_LIMIT)? {
            Some(n) => Some(n),
            None => opt_uint(&m, "max_tokens", MAX_TOKENS_LIMIT)?,
        },
        num_beams: opt_uint(&m, "num_beams", 8)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_refuses_garbage() {
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVsbG8").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVs bG8h").unwrap(), b"hello!");
        assert!(decode_base64("a").is_none());
        assert!(decode_base64("aGV*").is_none());
    }

    #[test]
    fn chat_requests_parse_or_name_the_field() {
        let ok = br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"Hi"},{"type":"image_url","image_url":{"url":"data:image/png;base64,aGk="}}]}],"max_tokens":5,"stop":"x","stream":true}"#;
        let r = parse_chat_request(ok).unwrap();
        assert_eq!(r.messages[0].images, vec![ImageRef::Data(b"hi".to_vec())]);
        assert_eq!((r.max_tokens, r.stream), (Some(5), true));
        for (body, param) in [
            (&br#"{"messages":[]}"#[..], "messages"),
            (br#"{"messages":[{"role":"user","content":"a"}],"temperature":9}"#, "temperature"),
            (br#"{"messages":[{"role":"user","content":"a"}],"top_p":0}"#, "top_p"),
            (br#"{"messages":[{"role":"user","content":"a"}],"max_tokens":0}"#, "max_tokens"),
            (br#"{"messages":[{"role":"bot","content":"a"}]}"#, "messages[0].role"),
            (
                br#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}]}"#,
                "messages[0].content[0]",
            ),
        ] {
            let e = parse_chat_request(body).unwrap_err();
            assert_eq!((e.status, e.param.as_deref()), (400, Some(param)), "{e:?}");
        }
        assert_eq!(parse_chat_request(b"{").unwrap_err().status, 400);
    }
}
