//! `vessel completion bash|zsh|fish` and `vessel man DIR`: generated from
//! the same clap definition that parses the command line, so they never
//! drift from it.

use crate::cli::{Cli, CompletionArgs, ManArgs};
use anyhow::{Context, Result};
use clap::CommandFactory;

pub fn completion(a: CompletionArgs) -> Result<i32> {
    let shell = match a.shell.as_str() {
        "bash" => clap_complete::Shell::Bash,
        "zsh" => clap_complete::Shell::Zsh,
        _ => clap_complete::Shell::Fish,
    };
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "vessel", &mut script);
    crate::out!("{}", String::from_utf8_lossy(&script));
    Ok(0)
}

/// One page per command and subcommand: `vessel.1`, `vessel-run.1`,
/// `vessel-image-pull.1`, ...
pub fn man(a: ManArgs) -> Result<i32> {
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let mut cmd = Cli::command();
    cmd.build();
    let mut written = 0;
    write_pages(&cmd, "vessel", &a.dir, &mut written)?;
    eprintln!("wrote {written} man pages to {}", a.dir.display());
    Ok(0)
}

fn write_pages(
    cmd: &clap::Command,
    name: &str,
    dir: &std::path::Path,
    written: &mut usize,
) -> Result<()> {
    let page = cmd.clone().name(name.to_string());
    let mut out = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut out)
        .with_context(|| format!("rendering the page of {name}"))?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    *written += 1;
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() {
            continue;
        }
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}
