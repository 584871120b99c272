//! `fvl-wgpu serve`: an OpenAI-compatible HTTP server over one model on one GPU.
//!
//! Requests are parsed and their images decoded and preprocessed on their own threads
//! ([`api`] holds the pure parsers); GPU work queues FIFO for the one worker ([`worker`]),
//! which calls the pipeline layer. HTTP/1.1 comes from `tiny_http` (a small synchronous
//! server); streamed answers are written straight to the connection, one server-sent event
//! a token, so a client that has gone is noticed at the next token and its generation stops.
//!
//! Owns: routes, limits, auth, the queue, SSE framing. Must not touch: pipelines (it calls
//! [`crate::pipeline`]), wgpu.

pub mod api;
pub mod mcp;
pub mod worker;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tiny_http::{Header, Method, Request, Response};

use crate::image::{decode_image, preprocess_image, PreprocessConfig, Preprocessed};
use crate::model::generate::Pick;
use crate::pipeline::{AskOptions, Task, TaskOptions};
use crate::{Error, Result, Setting};

use api::{ApiError, ChatRequest, ImageRef};
use worker::{Event, Job, Loaded, Outcome, Work};

/// How the server listens and what it accepts.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Address to bind (127.0.0.1 keeps it on this machine).
    pub host: String,
    /// Port (0: any free port, reported through `on_ready`).
    pub port: u16,
    /// Requests that may wait for the GPU besides the running one; more get 429.
    pub max_queue: usize,
    /// When set, every route but `/health` needs `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Folders whose images `file://` URLs and paths may name.
    pub allow_paths: Vec<PathBuf>,
    /// Largest request body in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Largest decoded image in pixels (413 beyond).
    pub max_image_pixels: u64,
    /// Answer length when a request gives none.
    pub default_max_tokens: usize,
    /// The model's name in `/v1/models` and answers.
    pub model_name: String,
}

/// Set by SIGINT/SIGTERM: stop accepting, finish what was accepted, exit.
static SHUTDOWN: AtomicBool = AtomicBool::new(false);

#[cfg(unix)]
fn install_signal_handlers() {
    extern "C" fn on_signal(_: libc::c_int) {
        SHUTDOWN.store(true, Ordering::SeqCst);
    }
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

#[cfg(not(unix))]
fn install_signal_handlers() {}

/// What the request threads share.
struct Shared {
    opts: ServeOptions,
    jobs: Mutex<Sender<Job>>,
    /// Jobs queued or running.
    pending: Arc<AtomicUsize>,
    /// The model's preprocessing and whether it pads to a square.
    prep: (PreprocessConfig, bool),
    /// Florence-VL (chat) or Florence-2 (tasks).
    is_vl: bool,
    /// Canonical `allow_paths`.
    allowed: Vec<PathBuf>,
}

/// Serves `model` until SIGINT/SIGTERM, then finishes accepted requests and returns.
/// `on_ready` gets the bound address once requests are accepted.
pub fn serve(
    model: Loaded,
    opts: ServeOptions,
    on_ready: &mut dyn FnMut(SocketAddr),
) -> Result<()> {
    let addr = format!("{}:{}", opts.host, opts.port);
    let server = tiny_http::Server::http(&addr)
        .map_err(|e| Error::input(format!("cannot listen on {addr}: {e}")))?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| Error::input(format!("cannot listen on {addr}: not an IP address")))?;
    let allowed = opts
        .allow_paths
        .iter()
        .map(|p| {
            p.canonicalize()
                .map_err(|e| {
                    Error::setting(Setting::AllowedFolders, "", format!(" {}: {e}", p.display()))
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let prep = match &model {
        Loaded::Florence2(m) => (m.preprocess_config().clone(), false),
        Loaded::FlorenceVl(m) => (m.model.preprocess.clone(), m.model.config.pad_to_square),
    };
    install_signal_handlers();
    let (tx, rx) = mpsc::channel();
    let pending = Arc::new(AtomicUsize::new(0));
    let shared = Arc::new(Shared {
        is_vl: matches!(model, Loaded::FlorenceVl(_)),
        opts,
        jobs: Mutex::new(tx),
        pending: pending.clone(),
        prep,
        allowed,
    });
    let acceptor = std::thread::spawn(move || accept(server, shared));
    on_ready(bound);
    // The worker runs here; it ends when the acceptor (and every request thread) has dropped
    // its sender.
    worker::run(&model, rx, &pending);
    acceptor.join().ok();
    Ok(())
}

/// Accepts requests until shutdown, each on its own thread; then waits for them.
fn accept(server: tiny_http::Server, shared: Arc<Shared>) {
    let mut threads: Vec<std::thread::JoinHandle<()>> = Vec::new();
    while !SHUTDOWN.load(Ordering::SeqCst) {
        match server.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(req)) => {
                let shared = shared.clone();
                threads.retain(|t| !t.is_finished());
                threads.push(std::thread::spawn(move || handle(req, &shared)));
            }
            Ok(None) => {}
            Err(e) => eprintln!("serve: accepting a connection failed: {e}"),
        }
    }
    eprintln!("serve: shutting down after {} open requests", threads.len());
    drop(server);
    for t in threads {
        t.join().ok();
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("ASCII header")
}

fn send_json(req: Request, status: u16, body: &Value, extra: &[(&str, &str)]) {
    let mut resp = Response::from_data(body.to_string().into_bytes())
        .with_status_code(status)
        .with_header(header("Content-Type", "application/json"));
    for (k, v) in extra {
        resp = resp.with_header(header(k, v));
    }
    // A client that has gone needs no answer.
    req.respond(resp).ok();
}

fn send_error(req: Request, e: &ApiError) {
    let retry = [("Retry-After", "1")];
    let extra: &[(&str, &str)] = if e.status == 429 { &retry } else { &[] };
    send_json(req, e.status, &e.to_json(), extra);
}

fn handle(mut req: Request, shared: &Shared) {
    let path = req.url().split('?').next().unwrap_or("").to_string();
    let method = req.method().clone();
    if method == Method::Get && path == "/health" {
        let body = json!({
            "status": "ok",
            "model": shared.opts.model_name,
            "queued": shared.pending.load(Ordering::SeqCst),
        });
        return send_json(req, 200, &body, &[]);
    }
    if let Some(key) = &shared.opts.api_key {
        let want = format!("Bearer {key}");
        let ok = req
            .headers()
            .iter()
            .any(|h| h.field.equiv("Authorization") && h.value.as_str() == want);
        if !ok {
            let e = ApiError::status(401, "missing or wrong API key (Authorization: Bearer KEY)");
            return send_error(req, &e);
        }
    }
    let result = match (&method, path.as_str()) {
        (Method::Get, "/v1/models") => {
            let body = json!({"object": "list", "data": [{
                "id": shared.opts.model_name,
                "object": "model",
                "created": 0,
                "owned_by": "fvl-wgpu",
            }]});
            return send_json(req, 200, &body, &[]);
        }
        (Method::Post, "/v1/chat/completions") => read_body(&mut req, shared)
            .and_then(|b| api::parse_chat_request(&b))
            .and_then(|r| chat_job(r, shared)),
        (Method::Post, "/v1/florence2") => read_body(&mut req, shared)
            .and_then(|b| api::parse_florence2_request(&b))
            .and_then(|r| florence2_job(r, shared)),
        (_, "/health" | "/v1/models" | "/v1/chat/completions" | "/v1/florence2") => Err(
            ApiError::status(405, format!("{path} does not take {method}")),
        ),
        _ => Err(ApiError::status(404, format!("no route {path}"))),
    };
    let (work, reply) = match result {
        Ok(x) => x,
        Err(e) => return send_error(req, &e),
    };
    // FIFO for the one GPU: the running job plus up to max_queue waiting.
    let before = shared.pending.fetch_add(1, Ordering::SeqCst);
    if before > shared.opts.max_queue {
        shared.pending.fetch_sub(1, Ordering::SeqCst);
        let e = ApiError::status(
            429,
            format!("the queue is full ({} waiting); retry later", before - 1),
        );
        return send_error(req, &e);
    }
    let (events, rx) = mpsc::channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let job = Job {
        work,
        events,
        cancel: cancel.clone(),
    };
    let sent = shared
        .jobs
        .lock()
        .map(|tx| tx.send(job).is_ok())
        .unwrap_or(false);
    if !sent {
        shared.pending.fetch_sub(1, Ordering::SeqCst);
        return send_error(req, &ApiError::status(503, "the server is shutting down"));
    }
    match reply {
        Reply::Stream { include_usage } => stream(req, rx, &cancel, shared, include_usage),
        Reply::Chat | Reply::Florence2 => {
            let done = rx.iter().find_map(|ev| match ev {
                Event::Done(r) => Some(r),
                Event::Text(_) => None,
            });
            match done {
                Some(Ok(out)) => {
                    let body = if matches!(reply, Reply::Florence2) {
                        out.florence2.clone().unwrap_or(Value::Null)
                    } else {
                        completion(shared, &out)
                    };
                    send_json(req, 200, &body, &[]);
                }
                Some(Err(e)) => send_error(req, &e),
                None => send_error(req, &ApiError::status(500, "the model worker stopped")),
            }
        }
    }
}

/// How a request is answered.
enum Reply {
    /// One chat.completion object.
    Chat,
    /// chat.completion.chunk events.
    Stream { include_usage: bool },
    /// The `florence2 --json` object.
    Florence2,
}

fn read_body(req: &mut Request, shared: &Shared) -> std::result::Result<Vec<u8>, ApiError> {
    let max = shared.opts.max_body_bytes;
    let too_big = || ApiError::status(413, format!("the request body exceeds {max} bytes"));
    if req.body_length().is_some_and(|n| n > max) {
        return Err(too_big());
    }
    let mut body = Vec::new();
    req.as_reader()
        .take(max as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::status(400, format!("reading the body: {e}")))?;
    if body.len() > max {
        return Err(too_big());
    }
    Ok(body)
}

/// Reads an image reference: bytes as sent, or a file under one of
/// [`ServeOptions::allow_paths`].
fn image_bytes(r: ImageRef, shared: &Shared) -> std::result::Result<Vec<u8>, ApiError> {
    match r {
        ImageRef::Data(b) => Ok(b),
        ImageRef::File(p) => {
            let shown = p.display().to_string();
            let real = p.canonicalize().ok();
            let inside = real
                .as_ref()
                .is_some_and(|r| shared.allowed.iter().any(|a| r.starts_with(a)));
            if !inside {
                return Err(ApiError::bad(
                    "image",
                    format!("{shown}: not a file under one of the server's allowed folders (allow_paths)"),
                ));
            }
            let max = shared.opts.max_body_bytes as u64;
            let real = real.expect("checked above");
            let len = std::fs::metadata(&real).map(|m| m.len()).unwrap_or(0);
            if len > max {
                return Err(ApiError::status(
                    413,
                    format!("{shown}: larger than {max} bytes"),
                ));
            }
            std::fs::read(&real).map_err(|e| ApiError::bad("image", format!("{shown}: {e}")))
        }
    }
}

/// Decodes and preprocesses on the request's thread (overlapping the GPU's current job).
fn prepare(bytes: &[u8], shared: &Shared) -> std::result::Result<Preprocessed, ApiError> {
    let dims = ::image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .ok()
        .and_then(|r| r.into_dimensions().ok());
    if let Some((w, h)) = dims {
        let max = shared.opts.max_image_pixels;
        if w as u64 * h as u64 > max {
            return Err(ApiError::status(
                413,
                format!("the image is {w}×{h}, more than {max} pixels"),
            ));
        }
    }
    let img = decode_image(bytes, "image").map_err(|e| ApiError::bad("image", e.to_string()))?;
    let (cfg, pad) = &shared.prep;
    Ok(preprocess_image(&img, cfg, *pad))
}

fn chat_job(r: ChatRequest, shared: &Shared) -> std::result::Result<(Work, Reply), ApiError> {
    let reply = if r.stream {
        Reply::Stream {
            include_usage: r.include_usage,
        }
    } else {
        Reply::Chat
    };
    let max_new = r.max_tokens.unwrap_or(shared.opts.default_max_tokens);
    // System messages are left out: Florence-VL's template has its own system prompt.
    let msgs: Vec<_> = r
        .messages
        .into_iter()
        .filter(|m| m.role != "system")
        .collect();
    let Some(last) = msgs.last().filter(|m| m.role == "user") else {
        return Err(ApiError::bad(
            "messages",
            "the last message must be the user's",
        ));
    };
    let question = last.text.clone();
    let mut images = msgs.iter().flat_map(|m| m.images.iter().cloned());
    let Some(image) = images.next() else {
        return Err(ApiError::bad(
            "messages",
            "the conversation needs an image (an image_url part)",
        ));
    };
    if images.next().is_some() {
        return Err(ApiError::bad(
            "messages",
            "one image per conversation: the model sees one",
        ));
    }
    let bytes = image_bytes(image, shared)?;
    let pre = prepare(&bytes, shared)?;
    if !shared.is_vl {
        // Florence-2: the user's text is the task, e.g. "<OD>" or "<CAPTION_TO_PHRASE_GROUNDING>a car".
        let text = question.trim();
        let (token, rest) = match text.find('>') {
            Some(end) => text.split_at(end + 1),
            None => (text, ""),
        };
        let task = Task::new(token, Some(rest).filter(|t| !t.is_empty()))
            .map_err(|e| ApiError::bad("messages", e.to_string()))?;
        let opts = TaskOptions {
            max_new_tokens: r.max_tokens,
            ..Default::default()
        };
        return Ok((
            Work::Task {
                image: pre,
                task,
                opts,
            },
            reply,
        ));
    }
    // Earlier turns pair each user message with the assistant's answer after it.
    let mut turns = Vec::new();
    let earlier = &msgs[..msgs.len() - 1];
    for pair in earlier.chunks(2) {
        match pair {
            [u, a] if u.role == "user" && a.role == "assistant" => {
                turns.push((u.text.clone(), a.text.clone()))
            }
            _ => {
                return Err(ApiError::bad(
                    "messages",
                    "messages must alternate user and assistant, ending with the user's",
                ))
            }
        }
    }
    let pick = match r.temperature {
        Some(t) if t > 0.0 => Pick::Sample {
            temperature: t,
            top_k: 0,
            top_p: r.top_p.unwrap_or(1.0),
        },
        _ => Pick::Greedy,
    };
    let opts = AskOptions {
        max_new_tokens: max_new,
        pick,
        seed: r.seed.unwrap_or(0),
    };
    let work = Work::Ask {
        image_bytes: bytes,
        image: pre,
        turns,
        question,
        opts,
        stop: r.stop,
    };
    Ok((work, reply))
}

fn florence2_job(
    r: api::Florence2Request,
    shared: &Shared,
) -> std::result::Result<(Work, Reply), ApiError> {
    if shared.is_vl {
        return Err(ApiError::status(
            400,
            "/v1/florence2 needs a Florence-2 model; this server holds a Florence-VL model",
        ));
    }
    let task =
        Task::new(&r.task, r.text.as_deref()).map_err(|e| ApiError::bad("task", e.to_string()))?;
    let bytes = image_bytes(r.image, shared)?;
    let pre = prepare(&bytes, shared)?;
    let opts = TaskOptions {
        max_new_tokens: r.max_tokens,
        num_beams: r.num_beams,
        no_repeat_ngram_size: None,
    };
    Ok((
        Work::Task {
            image: pre,
            task,
            opts,
        },
        Reply::Florence2,
    ))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn request_id() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "chatcmpl-{}-{}",
        now(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn usage(out: &Outcome) -> Value {
    json!({
        "prompt_tokens": out.prompt_tokens,
        "completion_tokens": out.completion_tokens,
        "total_tokens": out.prompt_tokens + out.completion_tokens,
    })
}

fn completion(shared: &Shared, out: &Outcome) -> Value {
    json!({
        "id": request_id(),
        "object": "chat.completion",
        "created": now(),
        "model": shared.opts.model_name,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": out.text},
            "finish_reason": out.finish_reason,
        }],
        "usage": usage(out),
    })
}

/// Writes the answer as server-sent events straight to the connection; a failed write means
/// the client has gone, which cancels the job at its next token.
fn stream(
    req: Request,
    rx: mpsc::Receiver<Event>,
    cancel: &AtomicBool,
    shared: &Shared,
    include_usage: bool,
) {
    let mut w = req.into_writer();
    let (id, created, model) = (request_id(), now(), shared.opts.model_name.clone());
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    };
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n";
    let send = |w: &mut Box<dyn Write + Send>, v: &Value| -> bool {
        write!(w, "data: {v}\n\n").and_then(|_| w.flush()).is_ok()
    };
    let mut ok = write!(w, "{head}").is_ok()
        && send(
            &mut w,
            &chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        );
    for ev in rx.iter() {
        if !ok {
            break;
        }
        match ev {
            Event::Text(piece) => ok = send(&mut w, &chunk(json!({"content": piece}), Value::Null)),
            Event::Done(Ok(out)) => {
                ok = send(&mut w, &chunk(json!({}), json!(out.finish_reason)));
                if ok && include_usage {
                    let mut last = chunk(json!({}), Value::Null);
                    last["choices"] = json!([]);
                    last["usage"] = usage(&out);
                    ok = send(&mut w, &last);
                }
                break;
            }
            Event::Done(Err(e)) => {
                ok = send(&mut w, &e.to_json());
                break;
            }
        }
    }
    if ok {
        ok = write!(w, "data: [DONE]\n\n")
            .and_then(|_| w.flush())
            .is_ok();
    }
    if !ok {
        cancel.store(true, Ordering::Relaxed);
    }
}

/// The name `/v1/models` shows for `--model`: a folder's last path component, or the hub id.
pub fn model_name(spec: &Path) -> String {
    match spec.file_name() {
        Some(n) if spec.is_dir() => n.to_string_lossy().into_owned(),
        _ => spec.display().to_string(),
    }
}
