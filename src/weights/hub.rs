//! Hub ids and the Hugging Face cache. A model is named by a folder or by a hub id
//! `owner/name[@revision]`; an id resolves to a snapshot folder of the standard cache (the one
//! the Python `huggingface_hub` client fills, so either tool can fill it for the other),
//! downloading what is missing unless `HF_HUB_OFFLINE` is set.
//!
//! Cache layout: `models--owner--name/blobs/<etag>` (the file contents),
//! `refs/<revision>` (holds a commit sha), `snapshots/<sha>/<file>` → `../../blobs/<etag>`.
//! Which cache: `HF_HUB_CACHE`, else `HF_HOME/hub`, else `XDG_CACHE_HOME/huggingface/hub`,
//! else `~/.cache/huggingface/hub`.

mod download;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::{Error, Result};

/// Which files of a repo a command needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// Configs and tokenizers only (a tokenizer source, or a Florence-VL tower whose weights
    /// live in the main checkpoint).
    Configs,
    /// Configs, tokenizers and the weights.
    Model,
}

/// The configs and tokenizer files any command may read; each is fetched when the repo has it.
const CONFIG_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.json",
    "chat_template.jinja",
];

/// Weight layouts we read, preferred first: (shard index, single file, extension).
const WEIGHTS: [(&str, &str, &str); 2] = [
    (
        "model.safetensors.index.json",
        "model.safetensors",
        ".safetensors",
    ),
    ("pytorch_model.bin.index.json", "pytorch_model.bin", ".bin"),
];

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// The command users run, for the hints in messages.
const PROGRAM: &str = env!("CARGO_PKG_NAME");

/// A hub model id `owner/name`, optionally at a revision (branch, tag or commit sha).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoId {
    owner: String,
    name: String,
    revision: Option<String>,
}

impl RepoId {
    /// Parses `owner/name[@revision]` with the hub's rules for names: 1 to 96 letters, digits,
    /// `-`, `_` or `.`, starting and ending with a letter, digit or `_`, no `--` or `..`.
    pub fn parse(spec: &str) -> Result<RepoId> {
        RepoId::parse_why(spec).map_err(|why| {
            Error::Hub(format!(
                "{spec:?} is not a hub id (owner/name[@revision]): {why}"
            ))
        })
    }

    /// [`RepoId::parse`] with the reason a bad id is bad.
    fn parse_why(spec: &str) -> std::result::Result<RepoId, String> {
        let (repo, revision) = match spec.split_once('@') {
            Some((repo, rev)) => (repo, Some(rev)),
            None => (spec, None),
        };
        let (owner, name) = repo
            .split_once('/')
            .ok_or("no '/' between owner and name")?;
        for (what, part) in [("owner", owner), ("name", name)] {
            check_name(part).map_err(|why| format!("the {what} {why}"))?;
        }
        if let Some(rev) = revision {
            check_revision(rev).map_err(|why| format!("the revision {why}"))?;
        }
        Ok(RepoId {
            owner: owner.into(),
            name: name.into(),
            revision: revision.map(str::to_string),
        })
    }

    /// `owner/name`.
    pub fn repo(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }

    /// The revision asked for, `main` when none was.
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }

    /// The same repo at `revision`.
    pub fn at(&self, revision: &str) -> RepoId {
        RepoId {
            revision: Some(revision.into()),
            ..self.clone()
        }
    }

    /// The repo's folder name in the cache.
    fn folder(&self) -> String {
        format!("models--{}--{}", self.owner, self.name)
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.revision {
            Some(rev) => write!(f, "{}/{}@{rev}", self.owner, self.name),
            None => write!(f, "{}/{}", self.owner, self.name),
        }
    }
}

fn check_name(part: &str) -> std::result::Result<(), String> {
    if part.is_empty() || part.len() > 96 {
        return Err(format!("must be 1 to 96 characters, not {}", part.len()));
    }
    if let Some(c) = part
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(*c)))
    {
        return Err(format!(
            "has {c:?}; only letters, digits, '-', '_' and '.' are allowed"
        ));
    }
    let edge = |c: char| c == '-' || c == '.';
    if part.starts_with(edge) || part.ends_with(edge) || part.ends_with(".git") {
        return Err(format!(
            "{part:?} must start and end with a letter, digit or '_' (and not end in .git)"
        ));
    }
    if part.contains("--") || part.contains("..") {
        return Err(format!("{part:?} must not contain '--' or '..'"));
    }
    Ok(())
}

fn check_revision(rev: &str) -> std::result::Result<(), String> {
    let ok_chars = rev
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    if rev.is_empty()
        || rev.len() > 256
        || !ok_chars
        || rev.contains("..")
        || rev.contains("//")
        || rev.starts_with('/')
        || rev.ends_with('/')
    {
        return Err(format!(
            "{rev:?} must be a branch, tag or commit sha: letters, digits, '-', '_', '.' and '/'"
        ));
    }
    Ok(())
}

/// A full commit sha, the only revision that names a snapshot by itself.
fn is_commit(rev: &str) -> bool {
    rev.len() == 40
        && rev
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// What a `--model` argument names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelRef {
    /// An existing folder.
    Folder(PathBuf),
    /// A hub id.
    Hub(RepoId),
}

impl ModelRef {
    /// An existing folder wins; otherwise `spec` must be a valid hub id.
    pub fn parse(spec: &Path) -> Result<ModelRef> {
        if spec.is_dir() {
            return Ok(ModelRef::Folder(spec.to_path_buf()));
        }
        let shown = spec.display();
        if spec.exists() {
            return Err(Error::Hub(format!(
                "{shown}: a file, not a model folder or hub id"
            )));
        }
        let why = match spec.to_str() {
            Some(text) => match RepoId::parse_why(text) {
                Ok(id) => return Ok(ModelRef::Hub(id)),
                // A path (absolute, relative, nested) needs no id grammar lesson.
                Err(_)
                    if spec.has_root()
                        || text.starts_with('.')
                        || text.matches('/').count() != 1 =>
                {
                    String::new()
                }
                Err(why) => format!(": {why}"),
            },
            None => String::new(),
        };
        Err(Error::Hub(format!(
            "{shown}: no such folder, and not a hub id (owner/name[@revision]){why}"
        )))
    }
}

/// Where the cache is, where the hub is, and whether it may be asked.
#[derive(Clone, Debug)]
pub struct Hub {
    cache: PathBuf,
    endpoint: String,
    token: Option<String>,
    offline: bool,
}

/// An environment variable, with an empty value counting as unset.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Hub {
    /// A hub client on `cache`, talking to huggingface.co without a token.
    pub fn new(cache: impl Into<PathBuf>) -> Hub {
        Hub {
            cache: cache.into(),
            endpoint: DEFAULT_ENDPOINT.into(),
            token: None,
            offline: false,
        }
    }

    /// The client the environment describes, as `huggingface_hub` reads it: the cache
    /// (module docs), `HF_ENDPOINT`, `HF_TOKEN` else the file `HF_HOME/token`, `HF_HUB_OFFLINE`.
    pub fn from_env() -> Result<Hub> {
        let home = || {
            env("HOME")
                .or_else(|| env("USERPROFILE"))
                .map(PathBuf::from)
        };
        let xdg = || {
            env("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| home().map(|h| h.join(".cache")))
        };
        let hf_home = env("HF_HOME")
            .map(PathBuf::from)
            .or_else(|| xdg().map(|x| x.join("huggingface")));
        let cache = env("HF_HUB_CACHE")
            .map(PathBuf::from)
            .or_else(|| hf_home.as_ref().map(|h| h.join("hub")))
            .ok_or_else(|| {
                Error::Hub(
                    "cannot place the Hugging Face cache: set HF_HUB_CACHE or HF_HOME (HOME is unset)"
                        .into(),
                )
            })?;
        let token = env("HF_TOKEN").or_else(|| {
            let file = hf_home?.join("token");
            let text = fs::read_to_string(file).ok()?;
            Some(text.trim().to_string()).filter(|t| !t.is_empty())
        });
        let offline = env("HF_HUB_OFFLINE")
            .is_some_and(|v| ["1", "on", "yes", "true"].contains(&v.to_ascii_lowercase().as_str()));
        let mut hub = Hub::new(cache).with_token(token).with_offline(offline);
        if let Some(endpoint) = env("HF_ENDPOINT") {
            hub = hub.with_endpoint(&endpoint);
        }
        Ok(hub)
    }

    /// Talks to the hub at `url` (as `HF_ENDPOINT`) instead of huggingface.co.
    pub fn with_endpoint(mut self, url: &str) -> Hub {
        self.endpoint = url.trim_end_matches('/').to_string();
        self
    }

    /// Sends `token` (as `HF_TOKEN`) to the hub, for gated and private repos.
    pub fn with_token(mut self, token: Option<String>) -> Hub {
        self.token = token;
        self
    }

    /// Never touches the network when `offline` (as `HF_HUB_OFFLINE=1`).
    pub fn with_offline(mut self, offline: bool) -> Hub {
        self.offline = offline;
        self
    }

    /// The cache folder.
    pub fn cache(&self) -> &Path {
        &self.cache
    }

    /// The folder `spec` names: an existing folder as it is, or a hub id's snapshot with the
    /// files `needs` asks for (see [`Hub::snapshot`]).
    pub fn resolve(&self, spec: &Path, needs: Needs) -> Result<PathBuf> {
        match ModelRef::parse(spec)? {
            ModelRef::Folder(dir) => Ok(dir),
            ModelRef::Hub(id) => self.snapshot(&id, needs),
        }
    }

    /// The snapshot folder of `id` with the files `needs` asks for: from the cache when it holds
    /// them (no network), else downloaded; offline, a missing file or revision is an error
    /// naming the command that fetches it.
    pub fn snapshot(&self, id: &RepoId, needs: Needs) -> Result<PathBuf> {
        match self.cached_snapshot(id)? {
            Some(snap) => match self.missing(id, &snap, needs)? {
                None => return Ok(snap),
                Some(file) if self.offline => {
                    return Err(Error::Hub(format!(
                        "{id}: the Hugging Face cache ({}) lacks {file} and HF_HUB_OFFLINE is set; fetch it with `{PROGRAM} pull {id}`",
                        snap.display()
                    )))
                }
                Some(_) => {}
            },
            None if self.offline => return Err(self.not_cached(id)),
            None => {}
        }
        self.pull(id, needs)
    }

    /// Asks the hub for `id`'s revision and downloads the files `needs` asks for that the
    /// cache lacks (a progress bar each on stderr); returns the snapshot folder.
    pub fn pull(&self, id: &RepoId, needs: Needs) -> Result<PathBuf> {
        if self.offline {
            return Err(Error::Hub(format!(
                "cannot download {id}: HF_HUB_OFFLINE is set"
            )));
        }
        let client = download::Client::new(&self.endpoint, self.token.clone());
        let listing = client.list(id)?;
        let repo_dir = self.cache.join(id.folder());
        let snap = repo_dir.join("snapshots").join(&listing.commit);
        remove_dangling(&snap)?;
        let (files, index) = select(id, &listing.files, needs)?;
        let fetch = |file: &str| client.fetch(id, &listing.commit, file, &repo_dir, &snap);
        for file in &files {
            fetch(file)?;
        }
        if let Some(index) = index {
            for shard in shard_files(&snap.join(&index))? {
                if !listing.files.contains(&shard) {
                    return Err(Error::Hub(format!(
                        "{id}: {index} names the shard {shard}, which the repo does not have"
                    )));
                }
                fetch(&shard)?;
            }
        }
        if id.revision() != listing.commit {
            let r = repo_dir.join("refs").join(id.revision());
            write_atomic(&r, listing.commit.as_bytes())?;
        }
        Ok(snap)
    }

    /// [`Hub::pull`] with [`Needs::Model`], and for a Florence-VL checkpoint whose
    /// `mm_vision_tower` is a hub id also the tower repo (its weights only when the main
    /// checkpoint lacks them). Returns each repo pulled with its snapshot folder.
    pub fn pull_model(&self, id: &RepoId) -> Result<Vec<(RepoId, PathBuf)>> {
        let snap = self.pull(id, Needs::Model)?;
        let mut pulled = vec![(id.clone(), snap.clone())];
        let config_path = snap.join("config.json");
        let text = fs::read_to_string(&config_path).map_err(|e| Error::file(&config_path, e))?;
        let config: Value = serde_json::from_str(&text).map_err(|e| Error::file(&config_path, e))?;
        let named = config.get("mm_vision_tower").and_then(Value::as_str);
        // A tower named by a folder inside the snapshot needs nothing more.
        let tower = named
            .filter(|t| !snap.join(t).is_dir())
            .and_then(|t| RepoId::parse(t).ok());
        if let Some(tower) = tower {
            // Released Florence-VL shards hold the tower's weights; then only its configs.
            let in_main = super::Checkpoint::open(&snap).is_ok_and(|c| {
                c.names()
                    .any(|n| n.starts_with("model.vision_tower.vision_tower."))
            });
            let needs = if in_main {
                Needs::Configs
            } else {
                Needs::Model
            };
            pulled.push((tower.clone(), self.pull(&tower, needs)?));
        }
        Ok(pulled)
    }

    /// Every model repo the cache holds, sorted by id.
    pub fn cached_models(&self) -> Result<Vec<CachedModel>> {
        let entries = match fs::read_dir(&self.cache) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::file(&self.cache, e)),
        };
        let mut models = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| Error::file(&self.cache, e))?.path();
            let folder = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let Some(id) = folder
                .strip_prefix("models--")
                .and_then(|rest| rest.split_once("--"))
                .and_then(|(o, n)| RepoId::parse(&format!("{o}/{n}")).ok())
            else {
                continue;
            };
            models.push(CachedModel::read(id.repo(), &path)?);
        }
        models.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(models)
    }

    /// The snapshot folder the cache holds for `id`'s revision, if any.
    fn cached_snapshot(&self, id: &RepoId) -> Result<Option<PathBuf>> {
        let repo_dir = self.cache.join(id.folder());
        let rev = id.revision();
        let commit = if is_commit(rev) {
            rev.to_string()
        } else {
            let r = repo_dir.join("refs").join(rev);
            match fs::read_to_string(&r) {
                Ok(text) if is_commit(text.trim()) => text.trim().to_string(),
                Ok(text) => {
                    return Err(Error::file(
                        &r,
                        format!("holds {:?}, not a commit sha", text.trim()),
                    ))
                }
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(Error::file(&r, e)),
            }
        };
        let snap = repo_dir.join("snapshots").join(commit);
        Ok(snap.is_dir().then_some(snap))
    }

    /// The error for a revision the cache lacks while offline, listing what it has.
    fn not_cached(&self, id: &RepoId) -> Error {
        let repo_dir = self.cache.join(id.folder());
        let have = CachedModel::read(id.repo(), &repo_dir)
            .map(|m| m.refs.into_keys().collect::<Vec<_>>())
            .unwrap_or_default();
        let what = if repo_dir.is_dir() {
            let cached = if have.is_empty() {
                "no named revision".to_string()
            } else {
                have.join(", ")
            };
            format!(
                "{}: revision {} is not in the Hugging Face cache ({}; it holds {cached})",
                id.repo(),
                id.revision(),
                self.cache.display()
            )
        } else {
            format!(
                "{} is not in the Hugging Face cache ({})",
                id.repo(),
                self.cache.display()
            )
        };
        Error::Hub(format!(
            "{what} and HF_HUB_OFFLINE is set; fetch it with `{PROGRAM} pull {id}`"
        ))
    }

    /// The first file `needs` asks for that `snap` lacks. A dangling link is an error.
    fn missing(&self, id: &RepoId, snap: &Path, needs: Needs) -> Result<Option<String>> {
        if let Some(link) = dangling(snap)?.first() {
            return Err(Error::Hub(format!(
                "{}: a dangling link in the Hugging Face cache (its blob is gone); `{PROGRAM} pull {id}` repairs it",
                link.display()
            )));
        }
        if !snap.join("config.json").is_file() {
            return Ok(Some("config.json".into()));
        }
        if needs == Needs::Configs {
            return Ok(None);
        }
        for (index, single, _) in WEIGHTS {
            if snap.join(index).is_file() {
                let shards = shard_files(&snap.join(index))?;
                return Ok(shards.into_iter().find(|s| !snap.join(s).is_file()));
            }
            if snap.join(single).is_file() {
                return Ok(None);
            }
        }
        let any_safetensors = top_files(snap)?.iter().any(|f| f.ends_with(".safetensors"));
        Ok((!any_safetensors)
            .then(|| "the weights (model.safetensors or pytorch_model.bin)".into()))
    }
}

/// The folder `spec` names (an existing folder, or a hub id resolved through the cache the
/// environment names, downloading what `needs` asks for if missing): what `--model` and
/// `mm_vision_tower` accept.
pub fn resolve(spec: impl AsRef<Path>, needs: Needs) -> Result<PathBuf> {
    Hub::from_env()?.resolve(spec.as_ref(), needs)
}

/// The files of a repo listing to fetch for `needs`: the configs it has, then its weights in
/// the preferred format; and the shard index, whose shards come once it is read.
fn select(
    id: &RepoId,
    files: &BTreeSet<String>,
    needs: Needs,
) -> Result<(Vec<String>, Option<String>)> {
    if !files.contains("config.json") {
        return Err(Error::Hub(format!(
            "{id}: the repo has no config.json, so it is not a model {PROGRAM} can run"
        )));
    }
    let mut pick: Vec<String> = CONFIG_FILES
        .iter()
        .filter(|f| files.contains(**f))
        .map(|f| f.to_string())
        .collect();
    if needs == Needs::Configs {
        return Ok((pick, None));
    }
    for (index, single, ext) in WEIGHTS {
        if files.contains(index) {
            pick.push(index.into());
            return Ok((pick, Some(index.into())));
        }
        if files.contains(single) {
            pick.push(single.into());
            return Ok((pick, None));
        }
        let loose: Vec<&String> = files
            .iter()
            .filter(|f| f.ends_with(ext) && !f.contains('/') && ext == ".safetensors")
            .collect();
        if !loose.is_empty() {
            pick.extend(loose.into_iter().cloned());
            return Ok((pick, None));
        }
    }
    Err(Error::Hub(format!(
        "{id}: the repo has no weights {PROGRAM} reads (safetensors or pytorch_model.bin)"
    )))
}

/// The shard file names a `*.index.json` maps tensors to; each must be a plain file name.
fn shard_files(index: &Path) -> Result<BTreeSet<String>> {
    let text = fs::read_to_string(index).map_err(|e| Error::file(index, e))?;
    let json: Value = serde_json::from_str(&text).map_err(|e| Error::file(index, e))?;
    let map = json
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::file(index, "no \"weight_map\" object"))?;
    map.values()
        .map(|v| match v.as_str() {
            Some(f) if !f.is_empty() && !f.contains(['/', '\\']) && f != ".." => Ok(f.to_string()),
            _ => Err(Error::file(
                index,
                format!("weight_map names {v}, not a file name"),
            )),
        })
        .collect()
}

/// Names of the plain files (or links) directly in `dir`.
fn top_files(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::file(dir, e))? {
        let entry = entry.map_err(|e| Error::file(dir, e))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

/// Links under `dir` (recursively) whose target is gone; none when `dir` does not exist.
fn dangling(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(found);
    };
    for entry in entries {
        let path = entry.map_err(|e| Error::file(dir, e))?.path();
        let link = fs::symlink_metadata(&path).map_err(|e| Error::file(&path, e))?;
        match fs::metadata(&path) {
            Err(_) if link.file_type().is_symlink() => found.push(path),
            Ok(m) if m.is_dir() && !link.file_type().is_symlink() => found.extend(dangling(&path)?),
            _ => {}
        }
    }
    Ok(found)
}

/// Deletes the dangling links of a snapshot before a pull refills it.
fn remove_dangling(snap: &Path) -> Result<()> {
    for link in dangling(snap)? {
        fs::remove_file(&link).map_err(|e| Error::file(&link, e))?;
    }
    Ok(())
}

/// Writes `bytes` to a temporary sibling of `path` and renames it over `path`.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| Error::file(parent, e))?;
    let tmp = tmp_sibling(path);
    fs::write(&tmp, bytes).map_err(|e| Error::file(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::file(path, e))
}

/// A temporary name beside `path`, unique to this process.
fn tmp_sibling(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

/// One model repo in the cache.
#[derive(Clone, Debug)]
pub struct CachedModel {
    /// `owner/name`.
    pub id: String,
    /// Its folder in the cache.
    pub path: PathBuf,
    /// Bytes of its complete blobs.
    pub size: u64,
    /// Bytes of interrupted downloads (`*.incomplete`), resumed by the next pull.
    pub partial: u64,
    /// Revision names (`main`, tags, …) → commit sha.
    pub refs: BTreeMap<String, String>,
    /// The commit shas it has snapshots of.
    pub snapshots: Vec<String>,
}

impl CachedModel {
    fn read(id: String, path: &Path) -> Result<CachedModel> {
        let mut model = CachedModel {
            id,
            path: path.to_path_buf(),
            size: 0,
            partial: 0,
            refs: BTreeMap::new(),
            snapshots: Vec::new(),
        };
        let blobs = path.join("blobs");
        for name in top_files(&blobs).unwrap_or_default() {
            let len = fs::metadata(blobs.join(&name)).map_or(0, |m| m.len());
            if name.ends_with(".incomplete") {
                model.partial += len;
            } else {
                model.size += len;
            }
        }
        model.snapshots = top_files(&path.join("snapshots")).unwrap_or_default();
        model.snapshots.sort();
        read_refs(&path.join("refs"), "", &mut model.refs);
        Ok(model)
    }
}

/// `refs/` holds one file per revision name; names with `/` (`refs/pr/1`) are nested.
fn read_refs(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>) {
    for name in top_files(dir).unwrap_or_default() {
        let path = dir.join(&name);
        let rev = format!("{prefix}{name}");
        if path.is_dir() {
            read_refs(&path, &format!("{rev}/"), out);
        } else if let Ok(text) = fs::read_to_string(&path) {
            out.insert(rev, text.trim().to_string());
        }
    }
}
