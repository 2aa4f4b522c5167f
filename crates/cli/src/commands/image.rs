//! `vessel image load|import|ls|rm`.

use crate::api::{decode, Api};
use crate::cli::ImageCommand;
use crate::format::{human_size, table};
use anyhow::{bail, Context, Result};
use std::fs::File;
use vessel_api::http::percent_encode;
use vessel_api::types::{ImageSummary, LoadResponse};

pub fn dispatch(api: &Api, c: ImageCommand) -> Result<i32> {
    match c {
        ImageCommand::Load { input, quiet } => {
            let resp = upload(api, &input, "/v1/images/load")?;
            for i in resp.images {
                if quiet {
                    println!("{}", i.reference);
                } else {
                    println!("Loaded image: {}", i.reference);
                }
            }
            Ok(0)
        }
        ImageCommand::Import { file, reference } => {
            let resp = upload(
                api,
                &file,
                &format!("/v1/images/import?ref={}", percent_encode(&reference)),
            )?;
            for i in resp.images {
                println!("{}", i.id);
            }
            Ok(0)
        }
        ImageCommand::Ls { quiet, format } => {
            let list: Vec<ImageSummary> = api.call("GET", "/v1/images", None)?;
            if quiet {
                for i in &list {
                    println!("{}", short_id(&i.id));
                }
                return Ok(0);
            }
            match format.as_deref() {
                Some("json") => {
                    for i in &list {
                        println!("{}", serde_json::to_string(i)?);
                    }
                }
                None | Some("table") => {
                    let mut rows = vec![vec![
                        "REPOSITORY".to_string(),
                        "TAG".into(),
                        "IMAGE ID".into(),
                        "SIZE".into(),
                    ]];
                    for i in &list {
                        let (repo, tag) = split_reference(&i.reference);
                        rows.push(vec![repo, tag, short_id(&i.id), human_size(i.size)]);
                    }
                    print!("{}", table(&rows));
                }
                Some(other) => bail!("unknown --format {other:?}: use `table` or `json`"),
            }
            Ok(0)
        }
        ImageCommand::Rm { force, images } => {
            let mut code = 0;
            for i in &images {
                let path = format!("/v1/images?ref={}&force={force}", percent_encode(i));
                match api.call::<serde_json::Value>("DELETE", &path, None) {
                    Ok(v) => {
                        for r in v
                            .get("removed")
                            .and_then(|r| r.as_array())
                            .into_iter()
                            .flatten()
                        {
                            println!("Untagged: {}", r.as_str().unwrap_or_default());
                        }
                        for d in v
                            .get("deleted")
                            .and_then(|r| r.as_array())
                            .into_iter()
                            .flatten()
                        {
                            println!("Deleted: {}", d.as_str().unwrap_or_default());
                        }
                    }
                    Err(e) => {
                        eprintln!("vessel: error: {e:#}");
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
    }
}

fn upload(api: &Api, file: &std::path::Path, path: &str) -> Result<LoadResponse> {
    let mut f = File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        bail!("{} is not a file", file.display());
    }
    decode(api.upload(path, &mut f, meta.len())?)
}

fn short_id(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

/// `host/repo:tag` → (`host/repo`, `tag`); digests show as `<none>` tags.
fn split_reference(r: &str) -> (String, String) {
    if let Some((repo, _digest)) = r.split_once('@') {
        return (repo.to_string(), "<none>".into());
    }
    let slash = r.rfind('/').map(|i| i + 1).unwrap_or(0);
    match r[slash..].rfind(':') {
        Some(i) => (r[..slash + i].to_string(), r[slash + i + 1..].to_string()),
        None => (r.to_string(), "latest".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_like_docker() {
        assert_eq!(
            split_reference("localhost:5000/a/b:v1"),
            ("localhost:5000/a/b".into(), "v1".into())
        );
        assert_eq!(
            split_reference("localhost:5000/a"),
            ("localhost:5000/a".into(), "latest".into())
        );
    }
}
