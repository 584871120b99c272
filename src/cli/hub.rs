//! `fvl-wgpu pull` and `fvl-wgpu models`: the Hugging Face cache ahead of time.

use fvl_wgpu::weights::hub::{Hub, RepoId};
use fvl_wgpu::Result;
use indicatif::HumanBytes;

/// Arguments of `pull`.
#[derive(clap::Args)]
pub struct PullArgs {
    /// Hub id owner/name[@revision] (branch, tag or commit sha; default main).
    #[arg(value_name = "OWNER/NAME")]
    pub id: String,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `models`.
#[derive(clap::Args)]
pub struct ModelsArgs {
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Downloads the configs, tokenizers and weights a command would need, and a Florence-VL
/// checkpoint's tower repo.
pub fn pull(args: &PullArgs) -> Result<()> {
    let id = RepoId::parse(&args.id)?;
    let pulled = Hub::from_env()?.pull_model(&id)?;
    if args.json {
        let list: Vec<_> = pulled
            .iter()
            .map(|(id, dir)| serde_json::json!({"id": id.to_string(), "path": dir.display().to_string()}))
            .collect();
        println!("{}", serde_json::json!({ "pulled": list }));
    } else {
        for (id, dir) in &pulled {
            println!("{id}: {}", dir.display());
        }
    }
    Ok(())
}

/// Lists the model repos in the cache with their sizes and revisions.
pub fn models(args: &ModelsArgs) -> Result<()> {
    let hub = Hub::from_env()?;
    let models = hub.cached_models()?;
    if args.json {
        let list: Vec<_> = models
            .iter()
            .map(|m| {
                serde_json::json!({
                    "id": m.id, "path": m.path.display().to_string(), "size_bytes": m.size,
                    "partial_bytes": m.partial, "refs": m.refs, "snapshots": m.snapshots,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "cache": hub.cache().display().to_string(), "models": list })
        );
        return Ok(());
    }
    eprintln!("cache: {}", hub.cache().display());
    if models.is_empty() {
        eprintln!("no models (fetch one with `fvl-wgpu pull owner/name`)");
    }
    for m in &models {
        let refs: Vec<String> = m
            .refs
            .iter()
            .map(|(name, sha)| format!("{name}={}", &sha[..sha.len().min(8)]))
            .collect();
        let partial = if m.partial > 0 {
            format!(" (+{} partial)", HumanBytes(m.partial))
        } else {
            String::new()
        };
        println!(
            "{:<48} {:>10}{partial}  {} snapshot(s)  {}",
            m.id,
            HumanBytes(m.size).to_string(),
            m.snapshots.len(),
            refs.join(" ")
        );
    }
    Ok(())
}
