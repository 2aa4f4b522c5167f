//! `vessel image load|import|ls|rm|pull|push|tag|inspect|prune|save`.

use crate::api::{check, decode, error_kind, Api, ErrorKind};
use crate::cli::{ImageCommand, PullArgs, PushArgs};
use crate::format::{human_size, table};
use crate::progress::{self, split_name_tag, Kind, Mode, Outcome};
use anyhow::{anyhow, bail, Context, Result};
use std::fs::File;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use vessel_api::http::percent_encode;
use vessel_api::types::{ImageSummary, LoadResponse, RegistryRequest};

pub fn dispatch(api: &Api, c: ImageCommand) -> Result<i32> {
    match c {
        ImageCommand::Load { input, quiet } => {
            let resp = upload(api, &input, "/v1/images/load")?;
            for i in resp.images {
                if quiet {
                    crate::outln!("{}", i.reference);
                } else {
                    crate::outln!("Loaded image: {}", i.reference);
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
                crate::outln!("{}", i.id);
            }
            Ok(0)
        }
        ImageCommand::Ls { quiet, format } => ls(api, quiet, format.as_deref()),
        ImageCommand::Rm { force, images } => rm(api, force, &images),
        ImageCommand::Pull(a) => pull_command(api, a),
        ImageCommand::Push(a) => push_command(api, a),
        ImageCommand::Tag { source, target } => tag(api, &source, &target),
        ImageCommand::Inspect { images } => inspect(api, &images),
        ImageCommand::Prune { all, force } => prune(api, all, force),
        ImageCommand::Save { output, images } => save(api, output.as_deref(), &images),
    }
}

/// Print `Error: <message>` the way Docker reports a failed transfer; exit 1.
pub fn fail(e: &anyhow::Error) -> i32 {
    eprintln!("Error: {}", vessel_api::error::error_chain(e.as_ref()));
    crate::exit::FAILURE
}

fn ls(api: &Api, quiet: bool, format: Option<&str>) -> Result<i32> {
    let list: Vec<ImageSummary> = api.call("GET", "/v1/images", None)?;
    if quiet {
        for i in &list {
            crate::outln!("{}", short_id(&i.id));
        }
        return Ok(0);
    }
    match format {
        Some("json") => {
            for i in &list {
                crate::outln!("{}", serde_json::to_string(i)?);
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
            crate::out!("{}", table(&rows));
        }
        Some(other) => bail!("unknown --format {other:?}: use `table` or `json`"),
    }
    Ok(0)
}

fn print_removal(v: &serde_json::Value, untagged: &str, deleted: &str) {
    let items = |k: &str| {
        v.get(k)
            .and_then(|r| r.as_array())
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect::<Vec<_>>()
    };
    for r in items("removed") {
        crate::outln!("{untagged}: {r}");
    }
    for d in items("deleted") {
        crate::outln!("{deleted}: {d}");
    }
}

fn rm(api: &Api, force: bool, images: &[String]) -> Result<i32> {
    let mut code = 0;
    for i in images {
        let path = format!("/v1/images?ref={}&force={force}", percent_encode(i));
        match api.call::<serde_json::Value>("DELETE", &path, None) {
            Ok(v) => print_removal(&v, "Untagged", "Deleted"),
            Err(e) => {
                eprintln!("vessel: error: {e:#}");
                code = 1;
            }
        }
    }
    Ok(code)
}

/// `REF` as Docker shows it in messages: with `:latest` when it names no tag or digest.
pub fn with_default_tag(reference: &str) -> String {
    if reference.contains('@') {
        return reference.to_string();
    }
    let slash = reference.rfind('/').map(|i| i + 1).unwrap_or(0);
    if reference[slash..].contains(':') {
        reference.to_string()
    } else {
        format!("{reference}:latest")
    }
}

/// The manifest digest the store has for `reference` now: `Ok(None)` when
/// the image is absent, `Err` when that cannot be known.
fn current_digest(api: &Api, reference: &str) -> Result<Option<String>> {
    let resp = api.send(
        "GET",
        &format!("/v1/images/inspect?ref={}", percent_encode(reference)),
        None,
    )?;
    match decode::<serde_json::Value>(resp) {
        Ok(v) => Ok(v.get("digest").and_then(|d| d.as_str()).map(str::to_string)),
        Err(e) if error_kind(&e) == Some(ErrorKind::ImageNotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Pull or push `reference` through the apiserver, rendering progress.
pub fn transfer(
    api: &Api,
    kind: Kind,
    reference: &str,
    platform: Option<&str>,
    tls_verify: bool,
    mode: Mode,
) -> Result<Outcome> {
    let mut path = format!(
        "/v1/images/{}?ref={}",
        match kind {
            Kind::Pull => "pull",
            Kind::Push => "push",
        },
        percent_encode(reference)
    );
    if let Some(p) = platform {
        path.push_str(&format!("&platform={}", percent_encode(p)));
    }
    if !tls_verify {
        path.push_str("&tls_verify=false");
    }
    let body = RegistryRequest {
        auth: crate::auth::for_reference(reference),
    };
    let resp = check(api.send("POST", &path, Some(&serde_json::to_value(&body)?))?)?;
    let mut reader = resp.reader;
    progress::follow(&mut reader, kind, mode)
}

/// Pull with Docker's messages; `to_stderr` puts the result lines on stderr
/// (implicit pulls of `run`). Returns the pulled image.
pub fn pull(
    api: &Api,
    reference: &str,
    platform: Option<&str>,
    tls_verify: bool,
    quiet: bool,
    to_stderr: bool,
) -> Result<ImageSummary> {
    // Whether the image was there already, for the final status line.
    let before = current_digest(api, reference).ok();
    let out = transfer(
        api,
        Kind::Pull,
        reference,
        platform,
        tls_verify,
        Mode::detect(quiet),
    )?;
    if quiet {
        return Ok(out.image);
    }
    let up_to_date = match before {
        Some(Some(d)) => d == out.image.digest,
        Some(None) => false,
        None => !out.transferred,
    };
    let status = if up_to_date {
        format!(
            "Status: Image is up to date for {}",
            with_default_tag(reference)
        )
    } else {
        format!(
            "Status: Downloaded newer image for {}",
            with_default_tag(reference)
        )
    };
    if to_stderr {
        eprintln!("Digest: {}\n{status}", out.digest);
    } else {
        crate::outln!("Digest: {}\n{status}", out.digest);
    }
    Ok(out.image)
}

fn pull_command(api: &Api, a: PullArgs) -> Result<i32> {
    match pull(
        api,
        &a.reference,
        a.platform.as_deref(),
        a.tls_verify,
        a.quiet,
        false,
    ) {
        Ok(image) => {
            crate::outln!("{}", image.reference);
            Ok(0)
        }
        Err(e) => Ok(fail(&e)),
    }
}

fn push_command(api: &Api, a: PushArgs) -> Result<i32> {
    let mode = Mode::detect(a.quiet);
    match transfer(api, Kind::Push, &a.reference, None, a.tls_verify, mode) {
        Ok(out) => {
            if a.quiet {
                crate::outln!("{}", out.image.reference);
            } else {
                let (_, tag) = split_name_tag(&with_default_tag(&a.reference));
                crate::outln!("{tag}: digest: {}", out.digest);
            }
            Ok(0)
        }
        Err(e) => Ok(fail(&e)),
    }
}

fn tag(api: &Api, source: &str, target: &str) -> Result<i32> {
    let path = format!(
        "/v1/images/tag?source={}&target={}",
        percent_encode(source),
        percent_encode(target)
    );
    match api.call::<ImageSummary>("POST", &path, None) {
        Ok(_) => Ok(0),
        Err(e) => Ok(fail(&e)),
    }
}

fn inspect(api: &Api, images: &[String]) -> Result<i32> {
    let mut found = Vec::new();
    let mut code = 0;
    for i in images {
        let resp = api.send(
            "GET",
            &format!("/v1/images/inspect?ref={}", percent_encode(i)),
            None,
        )?;
        match decode::<serde_json::Value>(resp) {
            Ok(v) => found.push(v),
            Err(e) => {
                match error_kind(&e) {
                    Some(ErrorKind::ImageNotFound) => eprintln!("Error: No such image: {i}"),
                    _ => eprintln!("Error: {e:#}"),
                }
                code = 1;
            }
        }
    }
    crate::outln!("{}", serde_json::to_string_pretty(&found)?);
    Ok(code)
}

pub(crate) fn confirm(question: &str) -> Result<bool> {
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

fn prune(api: &Api, all: bool, force: bool) -> Result<i32> {
    if !force && std::io::stdin().is_terminal() {
        let warning = if all {
            "WARNING! This will remove all images without at least one container associated to them."
        } else {
            "WARNING! This will remove all dangling images."
        };
        eprintln!("{warning}");
        if !confirm("Are you sure you want to continue?")? {
            return Ok(0);
        }
    }
    let v: serde_json::Value = match api.call("POST", &format!("/v1/images/prune?all={all}"), None)
    {
        Ok(v) => v,
        Err(e) => return Ok(fail(&e)),
    };
    let any = ["removed", "deleted"].iter().any(|k| {
        v.get(k)
            .and_then(|a| a.as_array())
            .is_some_and(|a| !a.is_empty())
    });
    if any {
        crate::outln!("Deleted Images:");
        print_removal(&v, "untagged", "deleted");
        crate::outln!();
    }
    let reclaimed = v.get("reclaimed").and_then(|r| r.as_u64()).unwrap_or(0);
    crate::outln!("Total reclaimed space: {}", progress::bar_size(reclaimed));
    Ok(0)
}

/// Copies bytes and remembers how a tar archive ends, to tell a complete
/// archive from one cut short.
struct TarTail<W> {
    inner: W,
    len: u64,
    tail: Vec<u8>,
}

impl<W: Write> Write for TarTail<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.len += n as u64;
        self.tail.extend_from_slice(&buf[..n]);
        if self.tail.len() > 1024 {
            self.tail.drain(..self.tail.len() - 1024);
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<W> TarTail<W> {
    fn complete(&self) -> bool {
        self.len >= 1024
            && self.len & 511 == 0
            && self.tail.len() == 1024
            && self.tail.iter().all(|b| *b == 0)
    }
}

fn save_stream(reader: &mut dyn Read, out: &mut dyn Write) -> Result<()> {
    let mut t = TarTail {
        inner: out,
        len: 0,
        tail: Vec::with_capacity(2048),
    };
    std::io::copy(reader, &mut t).context("receiving the archive")?;
    t.flush()?;
    if !t.complete() {
        bail!(
            "the archive ended early after {} bytes (the image helper failed; see `vessel system logs`)",
            t.len
        );
    }
    Ok(())
}

fn save(api: &Api, output: Option<&Path>, images: &[String]) -> Result<i32> {
    let refs: Vec<&str> = images.iter().map(String::as_str).collect();
    if output.is_none() && std::io::stdout().is_terminal() {
        eprintln!(
            "Error: refusing to write an archive to a terminal: use -o FILE or redirect stdout"
        );
        return Ok(1);
    }
    let path = format!("/v1/images/save?refs={}", percent_encode(&refs.join(",")));
    let resp = match api.send("GET", &path, None).and_then(check) {
        Ok(r) => r,
        Err(e) => return Ok(fail(&e)),
    };
    let mut reader = resp.reader;
    let Some(file) = output else {
        let stdout = std::io::stdout();
        let mut lock = stdout.lock();
        return match save_stream(&mut reader, &mut lock) {
            Ok(()) => Ok(0),
            Err(e) => Ok(fail(&e)),
        };
    };
    let mut tmp_name = file.as_os_str().to_os_string();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let result = (|| -> Result<()> {
        let mut f =
            File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        save_stream(&mut reader, &mut f)?;
        f.sync_all()
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, file)
            .with_context(|| format!("renaming {} to {}", tmp.display(), file.display()))?;
        Ok(())
    })();
    match result {
        Ok(()) => Ok(0),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Ok(fail(&anyhow!("{e:#}")))
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
    fn default_tags_in_messages() {
        assert_eq!(with_default_tag("busybox"), "busybox:latest");
        assert_eq!(with_default_tag("h:5000/a"), "h:5000/a:latest");
        assert_eq!(with_default_tag("h:5000/a:v1"), "h:5000/a:v1");
        assert_eq!(with_default_tag("a@sha256:00"), "a@sha256:00");
    }

    #[test]
    fn archives_cut_short_are_refused() {
        let mut whole = vec![7u8; 1536];
        whole.extend(vec![0u8; 1024]);
        let mut out = Vec::new();
        save_stream(&mut &whole[..], &mut out).unwrap();
        assert_eq!(out, whole);
        for cut in [0, 100, 1536, 2000, 2559] {
            let mut out = Vec::new();
            assert!(
                save_stream(&mut &whole[..cut], &mut out).is_err(),
                "cut at {cut}"
            );
        }
    }

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
