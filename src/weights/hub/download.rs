//! Talking to the hub the way `huggingface_hub` does: the revision listing
//! (`/api/models/{repo}/revision/{rev}`), then per file a `HEAD` on
//! `/{repo}/resolve/{commit}/{file}` for its commit (`X-Repo-Commit`), blob id
//! (`X-Linked-Etag`, else `ETag`), size (`X-Linked-Size`, else `Content-Length`) and download
//! address (`Location` for files stored in LFS). Blobs download to `blobs/<etag>.incomplete`,
//! resumed with a `Range` request after a cut, checked for size and (LFS files, whose etag is
//! one) sha256, then renamed and linked from the snapshot.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use ureq::http::{HeaderMap, Response};
use ureq::Body;

use super::{is_commit, tmp_sibling, RepoId};
use crate::{Error, Result};

/// Cuts in a row a download survives by resuming before it gives up.
const ATTEMPTS: usize = 4;
/// Relative redirects (renamed repos) a `HEAD` follows.
const REDIRECTS: usize = 5;

/// What the hub says about one file.
struct FileMeta {
    etag: String,
    size: u64,
    url: String,
}

/// A revision's commit sha and its files.
pub(super) struct Listing {
    pub commit: String,
    pub files: BTreeSet<String>,
}

/// An HTTP client for one hub endpoint.
pub(super) struct Client {
    agent: ureq::Agent,
    endpoint: String,
    token: Option<String>,
}

impl Client {
    pub fn new(endpoint: &str, token: Option<String>) -> Client {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .user_agent(concat!(env!("CARGO_PKG_NAME"), "/", env!("CARGO_PKG_VERSION")))
            .build();
        Client {
            agent: config.into(),
            endpoint: endpoint.to_string(),
            token,
        }
    }

    /// `GET` or `HEAD` `url`, with the token only when the address is the hub's own.
    fn call(&self, head: bool, url: &str, range: u64) -> Result<Response<Body>> {
        let mut req = if head {
            self.agent.head(url)
        } else {
            self.agent.get(url)
        };
        req = req.header("Accept-Encoding", "identity");
        if let Some(token) = self
            .token
            .as_deref()
            .filter(|_| url.starts_with(&self.endpoint))
        {
            req = req.header("Authorization", format!("Bearer {token}"));
        }
        if range > 0 {
            req = req.header("Range", format!("bytes={range}-"));
        }
        // Downloads may follow the CDN's own redirects; ureq never resends the token on them.
        let req = req.config().max_redirects(if head { 0 } else { 5 }).build();
        req.call()
            .map_err(|e| Error::Hub(format!("cannot reach {url}: {e}")))
    }

    /// The revision's commit and file names.
    pub fn list(&self, id: &RepoId) -> Result<Listing> {
        let url = format!(
            "{}/api/models/{}/revision/{}",
            self.endpoint,
            id.repo(),
            encode(id.revision(), false)
        );
        let mut resp = self.call(false, &url, 0)?;
        check_status(&resp, id, None)?;
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(|e| Error::Hub(format!("{id}: reading the file list from {url}: {e}")))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| Error::Hub(format!("{id}: the file list from {url} is not JSON: {e}")))?;
        let commit = json
            .get("sha")
            .and_then(Value::as_str)
            .filter(|s| is_commit(s))
            .ok_or_else(|| {
                Error::Hub(format!("{id}: the file list from {url} has no commit sha"))
            })?;
        let files = json
            .get("siblings")
            .and_then(Value::as_array)
            .map(|s| {
                s.iter()
                    .filter_map(|f| f.get("rfilename").and_then(Value::as_str))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Listing {
            commit: commit.to_string(),
            files,
        })
    }

    /// Makes `snap/file` a link to its blob, downloading the blob unless the cache has it.
    pub fn fetch(
        &self,
        id: &RepoId,
        commit: &str,
        file: &str,
        repo_dir: &Path,
        snap: &Path,
    ) -> Result<()> {
        let link = snap.join(file);
        if link.is_file() {
            return Ok(());
        }
        let meta = self.head(id, commit, file)?;
        let blobs = repo_dir.join("blobs");
        let blob = blobs.join(&meta.etag);
        if !blob.is_file() {
            fs::create_dir_all(&blobs).map_err(|e| Error::file(&blobs, e))?;
            self.download(id, file, &meta, &blob)?;
        }
        link_blob(&meta.etag, snap, file)
    }

    /// The file's blob id, size and download address.
    fn head(&self, id: &RepoId, commit: &str, file: &str) -> Result<FileMeta> {
        let mut url = format!(
            "{}/{}/resolve/{commit}/{}",
            self.endpoint,
            id.repo(),
            encode(file, true)
        );
        for _ in 0..REDIRECTS {
            let resp = self.call(true, &url, 0)?;
            check_status(&resp, id, Some(file))?;
            let headers = resp.headers();
            let location = header(headers, "location");
            // A relative redirect is the hub's own (a renamed repo): ask again there.
            if resp.status().is_redirection() {
                if let Some(path) = location.filter(|l| l.starts_with('/')) {
                    url = format!("{}{path}", self.endpoint);
                    continue;
                }
            }
            let etag = header(headers, "x-linked-etag")
                .or_else(|| header(headers, "etag"))
                .map(|e| e.trim_start_matches("W/").trim_matches('"').to_string());
            let size = header(headers, "x-linked-size")
                .or_else(|| header(headers, "content-length"))
                .and_then(|s| s.parse::<u64>().ok());
            let (Some(etag), Some(size)) = (etag, size) else {
                return Err(Error::Hub(format!(
                    "{id}: {url} sent no ETag or size; is HF_ENDPOINT ({}) a Hugging Face hub?",
                    self.endpoint
                )));
            };
            if etag.is_empty()
                || !etag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(Error::Hub(format!(
                    "{id}: {file} has an unusable ETag {etag:?}"
                )));
            }
            let url = match location {
                Some(l) if resp.status().is_redirection() => l.to_string(),
                _ => url,
            };
            return Ok(FileMeta { etag, size, url });
        }
        Err(Error::Hub(format!(
            "{id}: {file}: more than {REDIRECTS} redirects"
        )))
    }

    /// Downloads a blob through `<blob>.incomplete`, resuming what an earlier run or a cut
    /// connection left, and renames it into place once its size and hash check out.
    fn download(&self, id: &RepoId, file: &str, meta: &FileMeta, blob: &Path) -> Result<()> {
        let part = blob.with_extension("incomplete");
        let mut out = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&part)
            .map_err(|e| Error::file(&part, e))?;
        let mut have = out.metadata().map_err(|e| Error::file(&part, e))?.len();
        if have > meta.size {
            restart(&mut out, &part)?;
            have = 0;
        }
        // The sha256 of what is already on disk, so a resumed download is checked whole.
        let mut hash = Sha256::new();
        out.seek(SeekFrom::Start(0))
            .map_err(|e| Error::file(&part, e))?;
        std::io::copy(&mut (&mut out).take(have), &mut hash).map_err(|e| Error::file(&part, e))?;

        eprintln!(
            "downloading {}/{file} ({})",
            id.repo(),
            indicatif::HumanBytes(meta.size)
        );
        let bar = indicatif::ProgressBar::new(meta.size);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(file.to_string());
        bar.set_position(have);
        let mut cuts = 0;
        let mut last_cut = String::new();
        while have < meta.size {
            if cuts == ATTEMPTS {
                bar.finish_and_clear();
                return Err(Error::Hub(format!(
                    "{}/{file}: the download broke off {ATTEMPTS} times ({last_cut}); {have} of {} bytes are kept in {} and the next run resumes there",
                    id.repo(),
                    meta.size,
                    part.display()
                )));
            }
            let resp = self.call(false, &meta.url, have);
            let resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    cuts += 1;
                    last_cut = e.to_string();
                    continue;
                }
            };
            if resp.status().as_u16() == 416 {
                // The partial file does not fit the blob (changed upstream): start over.
                restart(&mut out, &part)?;
                (hash, have, cuts) = (Sha256::new(), 0, cuts + 1);
                continue;
            }
            check_status(&resp, id, Some(file))?;
            // A partial answer must start exactly where we are; a full one restarts the file.
            let from = header(resp.headers(), "content-range")
                .and_then(|r| r.strip_prefix("bytes "))
                .and_then(|r| r.split('-').next())
                .and_then(|s| s.parse::<u64>().ok());
            let partial = resp.status().as_u16() == 206;
            if (partial && from != Some(have)) || (!partial && have > 0) {
                restart(&mut out, &part)?;
                (hash, have) = (Sha256::new(), 0);
                bar.set_position(0);
                if partial {
                    cuts += 1;
                    continue;
                }
            }
            let mut body = resp.into_body().into_reader();
            let mut buf = vec![0u8; 1 << 16];
            let before = have;
            loop {
                let n = match body.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        last_cut = e.to_string();
                        break;
                    }
                };
                if have + n as u64 > meta.size {
                    bar.finish_and_clear();
                    drop(out);
                    let _ = fs::remove_file(&part);
                    return Err(Error::Hub(format!(
                        "{}/{file}: the server sent more than the {} bytes the hub announced; the download was discarded",
                        id.repo(),
                        meta.size
                    )));
                }
                out.write_all(&buf[..n]).map_err(|e| Error::file(&part, e))?;
                hash.update(&buf[..n]);
                have += n as u64;
                bar.set_position(have);
            }
            if have < meta.size {
                // A cut; one that made progress does not count against the limit.
                cuts = if have > before { 1 } else { cuts + 1 };
                if last_cut.is_empty() {
                    last_cut = "connection closed early".into();
                }
            }
        }
        bar.finish_and_clear();
        out.sync_all().map_err(|e| Error::file(&part, e))?;
        drop(out);
        let is_sha256 = meta.etag.len() == 64 && meta.etag.bytes().all(|b| b.is_ascii_hexdigit());
        if is_sha256 {
            let got: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
            if !got.eq_ignore_ascii_case(&meta.etag) {
                let _ = fs::remove_file(&part);
                return Err(Error::Hub(format!(
                    "{}/{file}: the downloaded bytes have sha256 {got}, but the hub says {}; the download was discarded",
                    id.repo(),
                    meta.etag
                )));
            }
        }
        fs::rename(&part, blob).map_err(|e| Error::file(blob, e))
    }
}

/// Empties a partial download that cannot be resumed.
fn restart(out: &mut File, part: &Path) -> Result<()> {
    out.set_len(0).map_err(|e| Error::file(part, e))
}

/// `snap/file` → `../../blobs/<etag>` (one more `..` per folder in `file`), made beside and
/// renamed into place so a reader never sees a half-made link.
fn link_blob(etag: &str, snap: &Path, file: &str) -> Result<()> {
    let link = snap.join(file);
    let parent = link.parent().unwrap_or(snap);
    fs::create_dir_all(parent).map_err(|e| Error::file(parent, e))?;
    // Up from the link's folder to `models--owner--name`: `<sha>/` plus the file's folders.
    let mut target = PathBuf::new();
    for _ in 0..Path::new(file).components().count() + 1 {
        target.push("..");
    }
    target.push("blobs");
    target.push(etag);
    let tmp = tmp_sibling(&link);
    let _ = fs::remove_file(&tmp);
    make_link(&target, &tmp, parent)?;
    fs::rename(&tmp, &link).map_err(|e| Error::file(&link, e))
}

#[cfg(unix)]
fn make_link(target: &Path, link: &Path, _dir: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, link).map_err(|e| Error::file(link, e))
}

/// Without symlinks (Windows without developer mode) the hub client copies; so do we.
#[cfg(not(unix))]
fn make_link(target: &Path, link: &Path, dir: &Path) -> Result<()> {
    fs::copy(dir.join(target), link)
        .map(|_| ())
        .map_err(|e| Error::file(link, e))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Turns an error status into one line saying what to do; `file` is `None` for the listing.
fn check_status(resp: &Response<Body>, id: &RepoId, file: Option<&str>) -> Result<()> {
    let status = resp.status().as_u16();
    if status < 400 {
        return Ok(());
    }
    let code = header(resp.headers(), "x-error-code").unwrap_or("");
    let repo = id.repo();
    let msg = match (status, code) {
        (401 | 403, "GatedRepo") => format!(
            "{repo} is a gated repo: accept its terms on its hub page, then set HF_TOKEN (or HF_HOME/token) to a token of that account (HTTP {status})"
        ),
        (401, _) => format!(
            "{repo}: the hub refused access (HTTP 401): the repo is private or gated, or does not exist; set HF_TOKEN (or HF_HOME/token) to a token with access"
        ),
        (403, _) => format!(
            "{repo}: access denied (HTTP 403): the repo is gated or private and the token in HF_TOKEN (or HF_HOME/token) lacks access to it"
        ),
        (404, "RevisionNotFound") => format!("{repo} has no revision {}", id.revision()),
        (404, "RepoNotFound") => format!("{repo}: no such repo on the hub"),
        (404, _) => match file {
            Some(f) => format!("{repo}@{}: no file {f} (HTTP 404)", id.revision()),
            None => format!("{repo}@{}: not found on the hub (HTTP 404)", id.revision()),
        },
        _ => format!(
            "{repo}: the hub answered HTTP {status}{} ",
            file.map(|f| format!(" for {f}")).unwrap_or_default()
        ),
    };
    Err(Error::Hub(msg.trim_end().to_string()))
}

/// Percent-encodes `s` for a URL path (keeping `/` when `keep_slash`).
fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
