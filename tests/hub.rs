//! Hub ids and downloads without the internet: a server on 127.0.0.1 answers the hub's
//! endpoints (revision listing, `resolve` with its headers, an LFS "CDN" with ranges) for the
//! tiny `llama-a` fixture, and the real download code fills a temporary Hugging Face cache.
//! Each test has its own cache folder and server; the CLI runs as a subprocess with its own
//! environment, so nothing touches `~/.cache`.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fvl_wgpu::weights::hub::{Hub, Needs, RepoId};
use sha2::{Digest, Sha256};

const REPO: &str = "test-org/llama-a";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
/// How long a test server answers; every test finishes well inside it.
const SERVER_LIFE: Duration = Duration::from_secs(60);

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What the server does wrong, to test the client's checks.
#[derive(Clone, Default)]
struct Faults {
    /// Close the connection halfway through the first download of this file.
    cut_once: Option<&'static str>,
    /// Send this file with more bytes than its announced size.
    long_body: Option<&'static str>,
    /// Announce a sha256 etag for this file that its bytes do not have.
    wrong_sha: Option<&'static str>,
    /// The repo is gated: listing and files need `Authorization: Bearer hf_test`.
    gated: bool,
    /// Listed, but 404 when asked for.
    missing: Option<&'static str>,
}

struct File {
    bytes: Vec<u8>,
    etag: String,
    lfs: bool,
}

struct Server {
    url: String,
    /// Request lines with their Range header: "GET /path bytes=N-".
    log: Arc<Mutex<Vec<String>>>,
}

/// One repo the server hosts.
struct Repo {
    id: String,
    commit: String,
    files: BTreeMap<String, File>,
}

impl Repo {
    /// The files of `dir` (links followed) plus `extra`, as `id` at `commit`.
    fn from_dir(id: &str, commit: &str, dir: &Path, extra: &[(&str, &[u8])]) -> Repo {
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            files.insert(name, std::fs::read(&path).unwrap());
        }
        for (name, bytes) in extra {
            files.insert(name.to_string(), bytes.to_vec());
        }
        let files = files
            .into_iter()
            .map(|(name, bytes)| {
                let lfs = name.ends_with(".safetensors") || name.ends_with(".bin");
                // Git blob ids for small files (any 40 hex), sha256 for LFS files, as the hub.
                let etag = if lfs {
                    sha256(&bytes)
                } else {
                    sha256(&bytes)[..40].to_string()
                };
                (name, File { bytes, etag, lfs })
            })
            .collect();
        Repo {
            id: id.into(),
            commit: commit.into(),
            files,
        }
    }
}

impl Server {
    /// Serves the llama-a fixture (plus files a command never needs) as `test-org/llama-a`.
    fn start(faults: Faults) -> Server {
        let extra: [(&str, &[u8]); 2] = [
            ("README.md", b"# tiny llama\n"),
            ("pytorch_model.bin", b"not read: safetensors win"),
        ];
        let repo = Repo::from_dir(REPO, COMMIT, &common::fixture_path("llama-a"), &extra);
        Server::start_repos(vec![repo], faults)
    }

    fn start_repos(repos: Vec<Repo>, faults: Faults) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new((repos, faults, url.clone(), AtomicUsize::new(0)));
        let thread_log = log.clone();
        std::thread::spawn(move || {
            let end = Instant::now() + SERVER_LIFE;
            while Instant::now() < end {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (state, log) = (state.clone(), thread_log.clone());
                        std::thread::spawn(move || {
                            let _ = serve(stream, &state.0, &state.1, &state.2, &state.3, &log);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Server { url, log }
    }

    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

/// Answers one request and closes the connection.
fn serve(
    mut stream: TcpStream,
    repos: &[Repo],
    faults: &Faults,
    url: &str,
    cuts: &AtomicUsize,
    log: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let range = headers.get("range").cloned().unwrap_or_default();
    log.lock()
        .unwrap()
        .push(format!("{method} {path} {range}").trim_end().to_string());
    let authorized = headers.get("authorization").map(String::as_str) == Some("Bearer hf_test");
    let head = method == "HEAD";
    let mut reply = |status: &str, extra: &[(&str, String)], body: &[u8], length: usize| {
        let mut text =
            format!("HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {length}\r\n");
        for (k, v) in extra {
            text.push_str(&format!("{k}: {v}\r\n"));
        }
        text.push_str("\r\n");
        stream.write_all(text.as_bytes())?;
        if !head {
            stream.write_all(body)?;
        }
        stream.flush()
    };
    let gated = || [("X-Error-Code", "GatedRepo".to_string())];
    for repo in repos {
        let (id, commit, files) = (&repo.id, &repo.commit, &repo.files);
        if let Some(rev) = path.strip_prefix(&format!("/api/models/{id}/revision/")) {
            if faults.gated && !authorized {
                return reply("401 Unauthorized", &gated(), b"", 0);
            }
            if rev != "main" && rev != commit {
                let code = [("X-Error-Code", "RevisionNotFound".into())];
                return reply("404 Not Found", &code, b"", 0);
            }
            let siblings: Vec<_> = files
                .keys()
                .map(|f| serde_json::json!({ "rfilename": f }))
                .collect();
            let body =
                serde_json::json!({ "id": id, "sha": commit, "siblings": siblings }).to_string();
            return reply("200 OK", &[], body.as_bytes(), body.len());
        }
        if let Some(rest) = path.strip_prefix(&format!("/{id}/resolve/")) {
            let (_, name) = rest.split_once('/').unwrap_or(("", ""));
            if faults.gated && !authorized {
                return reply("401 Unauthorized", &gated(), b"", 0);
            }
            let Some(file) = files.get(name).filter(|_| faults.missing != Some(name)) else {
                let code = [("X-Error-Code", "EntryNotFound".into())];
                return reply("404 Not Found", &code, b"", 0);
            };
            let mut extra = vec![("X-Repo-Commit", commit.to_string())];
            if !file.lfs {
                extra.push(("ETag", format!("\"{}\"", file.etag)));
                return reply("200 OK", &extra, &file.bytes, file.bytes.len());
            }
            let etag = if faults.wrong_sha == Some(name) {
                sha256(b"other bytes")
            } else {
                file.etag.clone()
            };
            extra.push(("X-Linked-Etag", format!("\"{etag}\"")));
            extra.push(("X-Linked-Size", file.bytes.len().to_string()));
            extra.push(("Location", format!("{url}/cdn/{id}/{name}")));
            return reply("302 Found", &extra, b"", 0);
        }
    }
    let cdn = path.strip_prefix("/cdn/").and_then(|p| {
        let repo = repos
            .iter()
            .find(|r| p.starts_with(&format!("{}/", r.id)))?;
        let name = &p[repo.id.len() + 1..];
        Some((name, repo.files.get(name)?))
    });
    if let Some((name, file)) = cdn {
        let mut bytes = file.bytes.clone();
        if faults.long_body == Some(name) {
            bytes.extend_from_slice(b"garbage");
        }
        let from: usize = range
            .strip_prefix("bytes=")
            .and_then(|r| r.trim_end_matches('-').parse().ok())
            .unwrap_or(0);
        let total = bytes.len();
        let body = &bytes[from.min(total)..];
        let (status, extra) = if from > 0 {
            (
                "206 Partial Content",
                vec![(
                    "Content-Range",
                    format!("bytes {from}-{}/{total}", total - 1),
                )],
            )
        } else {
            ("200 OK", vec![])
        };
        if faults.cut_once == Some(name) && cuts.fetch_add(1, Ordering::SeqCst) == 0 {
            // Promise the whole body, send half, hang up.
            return reply(status, &extra, &body[..body.len() / 2], body.len());
        }
        return reply(status, &extra, body, body.len());
    }
    reply("404 Not Found", &[], b"", 0)
}

/// A fresh, empty cache folder for one test.
fn temp_cache(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fvl-hub-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn hub(cache: &Path, server: &Server) -> Hub {
    Hub::new(cache).with_endpoint(&server.url)
}

fn id() -> RepoId {
    RepoId::parse(REPO).unwrap()
}

fn repo_dir(cache: &Path) -> PathBuf {
    cache.join("models--test-org--llama-a")
}

fn fvl(args: &[&str], cache: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fvl-wgpu"));
    cmd.args(args)
        .env_remove("HF_TOKEN")
        .env_remove("HF_ENDPOINT")
        .env_remove("HF_HUB_OFFLINE")
        .env("HF_HOME", cache.join("home"))
        .env("HF_HUB_CACHE", cache);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run fvl-wgpu");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn one_line(err: &str) -> &str {
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
    err.trim()
}

#[test]
fn download_lays_out_the_cache_like_the_hub_client_and_runs_offline_by_id() {
    let cache = temp_cache("layout");
    let server = Server::start(Faults::default());
    let (code, out, err) = fvl(
        &["pull", REPO, "--json"],
        &cache,
        &[("HF_ENDPOINT", &server.url)],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let snap = repo_dir(&cache).join("snapshots").join(COMMIT);
    assert_eq!(v["pulled"][0]["path"], snap.display().to_string());
    assert!(
        err.contains("downloading test-org/llama-a/model-00003-of-00005.safetensors"),
        "{err}"
    );

    let refs = std::fs::read_to_string(repo_dir(&cache).join("refs/main")).unwrap();
    assert_eq!(refs, COMMIT);
    let fixture = common::fixture_path("llama-a");
    let mut linked: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(&snap).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let target = std::fs::read_link(&path).unwrap();
        let bytes = std::fs::read(fixture.join(&name)).unwrap();
        let etag = if name.ends_with(".safetensors") {
            sha256(&bytes)
        } else {
            sha256(&bytes)[..40].to_string()
        };
        assert_eq!(target, Path::new("../../blobs").join(&etag), "{name}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{name}");
        linked.push(name);
    }
    linked.sort();
    // Configs, tokenizer, index and shards; not README.md, expected.*, nor the .bin.
    let mut want: Vec<String> = [
        "config.json",
        "generation_config.json",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain((1..=5).map(|i| format!("model-0000{i}-of-00005.safetensors")))
    .collect();
    want.sort();
    assert_eq!(linked, want);
    let blobs = std::fs::read_dir(repo_dir(&cache).join("blobs"))
        .unwrap()
        .count();
    assert_eq!(blobs, want.len(), "one blob per file, no .incomplete left");

    // A second pull finds everything cached: only the listing is asked for.
    let before = server.requests().len();
    let (code, _, err) = fvl(&["pull", REPO], &cache, &[("HF_ENDPOINT", &server.url)]);
    assert_eq!(code, 0, "{err}");
    let after = server.requests();
    assert_eq!(after.len(), before + 1, "{:?}", &after[before..]);

    // Offline by id: the greedy ids transformers gives, as from the fixture folder.
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("expected.json")).unwrap())
            .unwrap();
    let args = |model: &str| {
        let p = expected["prompt"].as_str().unwrap().to_string();
        [
            "generate",
            "--model",
            model,
            "--prompt",
            &p,
            "--max-new-tokens",
            "32",
            "--quant",
            "f32",
            "--json",
        ]
        .map(str::to_string)
    };
    let run_args = args(REPO);
    let run_args: Vec<&str> = run_args.iter().map(String::as_str).collect();
    let (code, out, err) = fvl(&run_args, &cache, &[("HF_HUB_OFFLINE", "1")]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["token_ids"], expected["greedy_32_no_eos"]);
    assert_eq!(
        server.requests().len(),
        after.len(),
        "offline touched the network"
    );

    // `models` lists it with the size of its blobs.
    let (code, out, err) = fvl(&["models", "--json"], &cache, &[]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let m = &v["models"][0];
    assert_eq!(m["id"], REPO);
    assert_eq!(m["refs"]["main"], COMMIT);
    let size: u64 = want
        .iter()
        .map(|f| std::fs::metadata(fixture.join(f)).unwrap().len())
        .sum();
    assert_eq!(m["size_bytes"], size);
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn a_cut_connection_resumes_with_a_range_request() {
    let cache = temp_cache("resume");
    let shard = "model-00002-of-00005.safetensors";
    let server = Server::start(Faults {
        cut_once: Some(shard),
        ..Default::default()
    });
    let snap = hub(&cache, &server).pull(&id(), Needs::Model).unwrap();
    let want = std::fs::read(common::fixture_path("llama-a").join(shard)).unwrap();
    assert_eq!(std::fs::read(snap.join(shard)).unwrap(), want);
    let gets: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with(&format!("GET /cdn/{REPO}/{shard}")))
        .collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(
        gets[1],
        format!("GET /cdn/{REPO}/{shard} bytes={}-", want.len() / 2)
    );

    // A partial file left by an earlier run resumes too.
    let first = "model-00001-of-00005.safetensors";
    let bytes = std::fs::read(common::fixture_path("llama-a").join(first)).unwrap();
    let blob = repo_dir(&cache).join("blobs").join(sha256(&bytes));
    std::fs::remove_file(&blob).unwrap();
    std::fs::remove_file(snap.join(first)).unwrap();
    std::fs::write(blob.with_extension("incomplete"), &bytes[..1000]).unwrap();
    hub(&cache, &server).pull(&id(), Needs::Model).unwrap();
    assert_eq!(std::fs::read(snap.join(first)).unwrap(), bytes);
    assert!(server
        .requests()
        .contains(&format!("GET /cdn/{REPO}/{first} bytes=1000-")));
    let _ = std::fs::remove_dir_all(&cache);
}

/// The pull fails with a message containing `words`, and leaves neither the file in the
/// snapshot nor a blob or partial download for it.
fn rejected(faults: Faults, file: &str, words: &[&str]) {
    let cache = temp_cache(&format!("reject-{}", words[0].replace(' ', "_")));
    let server = Server::start(faults);
    let err = hub(&cache, &server)
        .pull(&id(), Needs::Model)
        .unwrap_err()
        .to_string();
    for w in words {
        assert!(err.contains(w), "{err:?} lacks {w:?}");
    }
    assert_eq!(err.lines().count(), 1);
    let snap = repo_dir(&cache).join("snapshots").join(COMMIT);
    assert!(!snap.join(file).exists() && std::fs::symlink_metadata(snap.join(file)).is_err());
    let bytes = std::fs::read(common::fixture_path("llama-a").join(file)).unwrap();
    let blob = repo_dir(&cache).join("blobs").join(sha256(&bytes));
    assert!(!blob.exists() && !blob.with_extension("incomplete").exists());
    assert!(
        !repo_dir(&cache).join("refs/main").exists(),
        "a failed pull names no revision"
    );
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn a_wrong_size_is_rejected() {
    let shard = "model-00003-of-00005.safetensors";
    let faults = Faults {
        long_body: Some(shard),
        ..Default::default()
    };
    rejected(
        faults,
        shard,
        &[
            "more than",
            "test-org/llama-a/model-00003-of-00005.safetensors",
        ],
    );
}

#[test]
fn a_wrong_sha256_is_rejected() {
    let shard = "model-00004-of-00005.safetensors";
    let faults = Faults {
        wrong_sha: Some(shard),
        ..Default::default()
    };
    rejected(
        faults,
        shard,
        &[
            "sha256",
            "test-org/llama-a/model-00004-of-00005.safetensors",
            "discarded",
        ],
    );
}

#[test]
fn a_missing_file_is_a_404_naming_it() {
    let faults = Faults {
        missing: Some("tokenizer.json"),
        ..Default::default()
    };
    rejected(
        faults,
        "tokenizer.json",
        &["no file tokenizer.json", "test-org/llama-a@main", "404"],
    );
}

#[test]
fn a_gated_repo_asks_for_hf_token() {
    let cache = temp_cache("gated");
    let server = Server::start(Faults {
        gated: true,
        ..Default::default()
    });
    let (code, out, err) = fvl(&["pull", REPO], &cache, &[("HF_ENDPOINT", &server.url)]);
    assert_ne!(code, 0);
    assert!(out.is_empty());
    let line = one_line(&err);
    assert!(
        line.contains("test-org/llama-a is a gated repo") && line.contains("HF_TOKEN"),
        "{line}"
    );
    // The token from HF_TOKEN, then from HF_HOME/token, opens it.
    let (code, _, err) = fvl(
        &["pull", REPO],
        &cache,
        &[("HF_ENDPOINT", &server.url), ("HF_TOKEN", "hf_test")],
    );
    assert_eq!(code, 0, "{err}");
    let _ = std::fs::remove_dir_all(&cache);
    std::fs::create_dir_all(cache.join("home")).unwrap();
    std::fs::write(cache.join("home/token"), "hf_test\n").unwrap();
    let (code, _, err) = fvl(&["pull", REPO], &cache, &[("HF_ENDPOINT", &server.url)]);
    assert_eq!(code, 0, "{err}");
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn offline_errors_name_the_repo_the_file_and_the_fix() {
    let cache = temp_cache("offline");
    let server = Server::start(Faults::default());
    // Offline with nothing cached: the repo and the command that fetches it.
    let offline = hub(&cache, &server).with_offline(true);
    let err = offline
        .snapshot(&id(), Needs::Model)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("test-org/llama-a is not in the Hugging Face cache"),
        "{err}"
    );
    assert!(err.contains("`fvl-wgpu pull test-org/llama-a`"), "{err}");

    // Configs only cached: the missing weight file.
    hub(&cache, &server).pull(&id(), Needs::Configs).unwrap();
    offline.snapshot(&id(), Needs::Configs).unwrap();
    let err = offline
        .snapshot(&id(), Needs::Model)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("test-org/llama-a: the Hugging Face cache"),
        "{err}"
    );
    assert!(
        err.contains("lacks the weights (model.safetensors or pytorch_model.bin)"),
        "{err}"
    );
    assert!(
        err.contains("HF_HUB_OFFLINE") && err.contains("`fvl-wgpu pull test-org/llama-a`"),
        "{err}"
    );

    // A revision the cache lacks, by the CLI.
    let (code, _, err) = fvl(
        &["inspect", "--model", "test-org/llama-a@v2"],
        &cache,
        &[("HF_HUB_OFFLINE", "1")],
    );
    assert_ne!(code, 0);
    let line = one_line(&err);
    assert!(
        line.contains("revision v2 is not in the Hugging Face cache"),
        "{line}"
    );
    assert!(
        line.contains("it holds main") && line.contains("`fvl-wgpu pull test-org/llama-a@v2`"),
        "{line}"
    );
    let before = server.requests().len();
    assert_eq!(
        before,
        1 + 2 * 4,
        "the listing and 4 config files: {:?}",
        server.requests()
    );

    // Online, what is missing is fetched: the index and shards, not the configs again.
    let snap = hub(&cache, &server).snapshot(&id(), Needs::Model).unwrap();
    let fetched: Vec<String> = server.requests()[before..]
        .iter()
        .filter(|r| r.starts_with("HEAD"))
        .cloned()
        .collect();
    assert_eq!(fetched.len(), 6, "{fetched:?}");
    // And by commit sha, offline, the same snapshot.
    let by_sha = offline.snapshot(&id().at(COMMIT), Needs::Model).unwrap();
    assert_eq!(by_sha, snap);
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn a_dangling_snapshot_link_is_one_line_and_pull_repairs_it() {
    let cache = temp_cache("dangling");
    let server = Server::start(Faults::default());
    let snap = hub(&cache, &server).pull(&id(), Needs::Model).unwrap();
    let target = std::fs::read_link(snap.join("tokenizer.json")).unwrap();
    std::fs::remove_file(snap.join(&target)).unwrap();
    let (code, _, err) = fvl(
        &["inspect", "--model", REPO],
        &cache,
        &[("HF_HUB_OFFLINE", "1")],
    );
    assert_ne!(code, 0);
    let line = one_line(&err);
    assert!(
        line.contains("tokenizer.json: a dangling link in the Hugging Face cache"),
        "{line}"
    );
    assert!(
        line.contains("`fvl-wgpu pull test-org/llama-a` repairs it"),
        "{line}"
    );
    let (code, _, err) = fvl(&["pull", REPO], &cache, &[("HF_ENDPOINT", &server.url)]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = fvl(
        &["inspect", "--model", REPO],
        &cache,
        &[("HF_HUB_OFFLINE", "1")],
    );
    assert_eq!(code, 0, "{err}");
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn bad_ids_are_one_clear_line() {
    for (spec, why) in [
        ("owner/na me", "has ' '"),
        ("owner/name$", "has '$'"),
        ("-owner/name", "must start and end"),
        ("owner/na--me", "'--'"),
        ("owner/name@", "the revision"),
        ("owner/name@../../etc", "the revision"),
        ("a/b/c", "has '/'"),
    ] {
        let err = RepoId::parse(spec).unwrap_err().to_string();
        assert!(
            err.contains("is not a hub id (owner/name[@revision])") && err.contains(why),
            "{spec}: {err}"
        );
    }
    for spec in [
        "owner/name",
        "Org_1/model.v2-x@main",
        "o/n@refs/pr/1",
        &format!("o/n@{COMMIT}"),
    ] {
        RepoId::parse(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
    }
    let cache = temp_cache("bad-id");
    let (code, _, err) = fvl(
        &["inspect", "--model", "owner/na me"],
        &cache,
        &[("HF_HUB_OFFLINE", "1")],
    );
    assert_ne!(code, 0);
    let line = one_line(&err);
    assert!(
        line.contains("owner/na me: no such folder, and not a hub id"),
        "{line}"
    );
    let (code, _, err) = fvl(&["inspect", "--model", "no/such/folder"], &cache, &[]);
    assert_ne!(code, 0);
    assert!(
        one_line(&err).contains("no such folder, and not a hub id"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn pull_and_models_have_help_on_every_flag() {
    let cache = temp_cache("help");
    for (cmd, flags) in [
        ("pull", &["--json", "OWNER/NAME"][..]),
        ("models", &["--json"]),
    ] {
        let (code, out, _) = fvl(&[cmd, "--help"], &cache, &[]);
        assert_eq!(code, 0);
        for f in flags {
            assert!(out.contains(f), "{cmd} --help lacks {f}: {out}");
        }
    }
    let (code, out, _) = fvl(&["inspect", "--help"], &cache, &[]);
    assert_eq!(code, 0);
    assert!(
        out.contains("DIR|OWNER/NAME") && out.contains("hub id"),
        "{out}"
    );
    let (code, out, err) = fvl(&["models"], &cache, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty() && err.contains("no models"), "{out}{err}");
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn pulling_a_florence_vl_repo_fetches_the_tower_it_names() {
    let fixture = common::fixture_path("hf-cache");
    let (main, tower) = ("fvl-test/florence-vl-tiny-sft", "fvl-test/Florence-2-tiny");
    let snapshot = |id: &str| {
        let dir = fixture.join(format!("models--{}", id.replace('/', "--")));
        let commit = std::fs::read_to_string(dir.join("refs/main")).unwrap();
        dir.join("snapshots").join(commit.trim())
    };
    let repos = [main, tower].map(|id| {
        let snap = snapshot(id);
        let commit = snap.file_name().unwrap().to_str().unwrap();
        Repo::from_dir(id, commit, &snap, &[])
    });
    let server = Server::start_repos(repos.into(), Faults::default());
    let cache = temp_cache("tower");
    let (code, out, err) = fvl(
        &["pull", main, "--json"],
        &cache,
        &[("HF_ENDPOINT", &server.url)],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let pulled = v["pulled"].as_array().unwrap();
    assert_eq!(pulled.len(), 2, "{out}");
    // The main shards hold no tower weights, so the tower's pytorch_model.bin comes too: each
    // snapshot ends up with the files the fixture's cache has, byte for byte.
    for (entry, id) in pulled.iter().zip([main, tower]) {
        assert_eq!(entry["id"], id);
        let got = PathBuf::from(entry["path"].as_str().unwrap());
        let want = snapshot(id);
        let names = |dir: &Path| {
            let mut n: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_str().unwrap().to_string())
                .collect();
            n.sort();
            n
        };
        assert_eq!(names(&got), names(&want), "{id}");
        for name in names(&want) {
            let same =
                std::fs::read(got.join(&name)).unwrap() == std::fs::read(want.join(&name)).unwrap();
            assert!(same, "{id}/{name} differs");
        }
    }
    let _ = std::fs::remove_dir_all(&cache);
}
