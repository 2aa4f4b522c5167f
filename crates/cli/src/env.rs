//! Environment variables from `-e` and `--env-file`, read as Docker reads
//! them: the files first, then `-e`, so `-e` wins; `KEY` alone takes our
//! own value of `KEY` (and is left out when we have none).

use anyhow::{Context, Result};
use std::path::PathBuf;

/// The lines of an env file: `KEY=VALUE` taken as written (no quoting),
/// `KEY` alone looked up with `lookup`, blank lines and `#` comments
/// skipped, leading whitespace ignored.
pub fn parse_env_file(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (line.trim_end(), None),
        };
        if key.is_empty() {
            return Err(format!("line {}: no variable name before '='", n + 1));
        }
        if key.chars().any(char::is_whitespace) {
            return Err(format!(
                "line {}: variable name {key:?} contains whitespace",
                n + 1
            ));
        }
        match value {
            Some(v) => out.push(format!("{key}={v}")),
            None => {
                if let Some(v) = lookup(key) {
                    out.push(format!("{key}={v}"));
                }
            }
        }
    }
    Ok(out)
}

/// `-e` values: `KEY=VALUE` as given, `KEY` with our value.
pub fn from_flags(env: &[String], lookup: impl Fn(&str) -> Option<String>) -> Vec<String> {
    env.iter()
        .filter_map(|e| {
            if e.contains('=') {
                Some(e.clone())
            } else {
                lookup(e).map(|v| format!("{e}={v}"))
            }
        })
        .collect()
}

/// The variables of `--env-file FILE...` and `-e ...`, in that order.
pub fn environment(env: &[String], files: &[PathBuf]) -> Result<Vec<String>> {
    let lookup = |k: &str| std::env::var(k).ok();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading the env file {}", f.display()))?;
        let vars = parse_env_file(&text, lookup)
            .map_err(|e| anyhow::anyhow!("invalid env file {}: {e}", f.display()))?;
        out.extend(vars);
    }
    out.extend(from_flags(env, lookup));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(k: &str) -> Option<String> {
        (k == "HOME_ISH").then(|| "/home/me".to_string())
    }

    #[test]
    fn env_files_as_docker_reads_them() {
        let text =
            "# a comment\n\n  A=1\nB=value with spaces \nC=\"quoted\"\nHOME_ISH\nUNSET\nD=x=y\n";
        assert_eq!(
            parse_env_file(text, ours).unwrap(),
            vec![
                "A=1",
                "B=value with spaces ",
                "C=\"quoted\"",
                "HOME_ISH=/home/me",
                "D=x=y"
            ]
        );
        assert!(parse_env_file("B = x\n", ours)
            .unwrap_err()
            .contains("whitespace"));
        assert!(parse_env_file("=x\n", ours).unwrap_err().contains("line 1"));
        assert!(parse_env_file("A B\n", ours)
            .unwrap_err()
            .contains("whitespace"));
    }

    #[test]
    fn flags_take_our_value_for_a_bare_name() {
        let flags = ["X=1".to_string(), "HOME_ISH".into(), "NOPE".into()];
        assert_eq!(from_flags(&flags, ours), vec!["X=1", "HOME_ISH=/home/me"]);
    }

    #[test]
    fn files_come_first_so_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("env");
        std::fs::write(&f, "A=from-file\nB=2\n").unwrap();
        let env = environment(&["A=from-flag".into()], &[f]).unwrap();
        assert_eq!(env, vec!["A=from-file", "B=2", "A=from-flag"]);
        assert!(environment(&[], &[dir.path().join("missing")]).is_err());
    }
}
