//! `vessel system install-shim`: make containerd run tasks and Kubernetes
//! pods in vessel VMs. Puts `containerd-shim-vessel-v2` (and the
//! `vessel-runtime` it starts) where containerd finds it, and registers the
//! runtime handler `vessel` in containerd's configuration for CRI; `ctr run
//! --runtime io.containerd.vessel.v2` needs only the binary.

use crate::cli::InstallShimArgs;
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use vessel_api::fsutil::write_atomic;
use vessel_api::paths::sibling_binary;

/// The binaries containerd's side needs, found next to this CLI.
const BINARIES: [&str; 2] = ["containerd-shim-vessel-v2", "vessel-runtime"];
/// The runtime type containerd derives the shim's name from.
pub const RUNTIME_TYPE: &str = "io.containerd.vessel.v2";
/// The CRI runtime handler (a RuntimeClass's `handler`).
pub const HANDLER: &str = "vessel";

/// What the configuration needs, or why it cannot be changed safely.
#[derive(Debug, PartialEq, Eq)]
pub enum ConfigEdit {
    /// The handler is there already.
    Present,
    /// The new content.
    Write(String),
}

/// The CRI plugin's table for a configuration `version` (2: containerd 1.x,
/// 3: containerd 2.x).
fn runtimes_table(version: i64) -> Option<String> {
    let plugin = match version {
        2 => "io.containerd.grpc.v1.cri",
        3 => "io.containerd.cri.v1.runtime",
        _ => return None,
    };
    Some(format!(
        "plugins.\"{plugin}\".containerd.runtimes.{HANDLER}"
    ))
}

/// The top-level `version = N` of a containerd configuration (1 when
/// absent, as containerd reads it).
fn config_version(text: &str) -> Result<i64> {
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            break;
        }
        if let Some(rest) = l.strip_prefix("version") {
            let v = rest.trim_start();
            if let Some(v) = v.strip_prefix('=') {
                let v = v.split('#').next().unwrap_or("").trim();
                return v
                    .parse()
                    .with_context(|| format!("containerd's `version = {v}` is not a number"));
            }
        }
    }
    Ok(1)
}

/// `existing` (the file's content, `None`: no file) with the `vessel`
/// handler added. Only appends a table, so comments and layout stay.
pub fn containerd_config(existing: Option<&str>) -> Result<ConfigEdit> {
    let text = existing.unwrap_or("");
    let version = if existing.is_none() || text.trim().is_empty() {
        2
    } else {
        config_version(text)?
    };
    let Some(table) = runtimes_table(version) else {
        bail!(
            "containerd's configuration is version {version}; vessel can add its handler to \
             versions 2 and 3 only: add a runtime with runtime_type = \"{RUNTIME_TYPE}\" by hand"
        );
    };
    let header = format!("[{table}]");
    let squash = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    let wanted = squash(&header);
    if text.lines().any(|l| squash(l) == wanted) {
        return Ok(ConfigEdit::Present);
    }
    let mut out = String::new();
    if text.trim().is_empty() {
        out.push_str(&format!("version = {version}\n"));
    } else {
        out.push_str(text);
        if !text.ends_with('\n') {
            out.push('\n');
        }
    }
    out.push_str(&format!(
        "\n# vessel: containers of a RuntimeClass with handler \"{HANDLER}\" run in a VM each\n\
         {header}\n  runtime_type = \"{RUNTIME_TYPE}\"\n"
    ));
    Ok(ConfigEdit::Write(out))
}

/// The RuntimeClass that selects the handler.
pub fn runtime_class() -> String {
    format!(
        "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata:\n  name: {HANDLER}\nhandler: {HANDLER}\n"
    )
}

/// Copy `src` to `dir/NAME` (atomically, mode 0755) unless it is that file.
fn install_binary(src: &Path, dir: &Path, dry_run: bool) -> Result<PathBuf> {
    let name = src.file_name().context("a binary without a name")?;
    let dest = dir.join(name);
    let same = match (fs::canonicalize(src), fs::canonicalize(&dest)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        crate::outln!("{} is installed", dest.display());
        return Ok(dest);
    }
    if dry_run {
        crate::outln!("would copy {} to {}", src.display(), dest.display());
        return Ok(dest);
    }
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let tmp = dir.join(format!(".{}.new", name.to_string_lossy()));
    fs::copy(src, &tmp).with_context(|| format!("copy {} to {}", src.display(), tmp.display()))?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
    fs::rename(&tmp, &dest).with_context(|| format!("install {}", dest.display()))?;
    crate::outln!("installed {}", dest.display());
    Ok(dest)
}

pub fn install_shim(args: &InstallShimArgs) -> Result<i32> {
    for name in BINARIES {
        let src = sibling_binary(name);
        if !src.is_file() {
            bail!(
                "{name} is not next to this vessel binary nor on PATH: build it (`cargo build \
                 --release`) and run the vessel from the same directory"
            );
        }
        install_binary(&src, &args.bin_dir, args.dry_run)?;
    }
    let share = args
        .bin_dir
        .parent()
        .map(|p| p.join("share/vessel"))
        .unwrap_or_default();
    for asset in ["vmlinux", "initramfs.img"] {
        let p = share.join(asset);
        if !p.is_file() && !Path::new("/usr/local/share/vessel").join(asset).is_file() {
            eprintln!(
                "warning: no guest {asset} in {} or /usr/local/share/vessel: the shim then needs \
                 VESSEL_KERNEL and VESSEL_INITRD in containerd's environment (scripts/setup.sh \
                 installs them)",
                share.display()
            );
        }
    }
    if args.no_config {
        crate::outln!("containerd's configuration left alone (--no-config)");
    } else {
        let existing = match fs::read_to_string(&args.config) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("read {}", args.config.display())),
        };
        match containerd_config(existing.as_deref())? {
            ConfigEdit::Present => crate::outln!(
                "{} has the runtime handler \"{HANDLER}\" already",
                args.config.display()
            ),
            ConfigEdit::Write(text) if args.dry_run => {
                crate::outln!("would write {}:\n{text}", args.config.display())
            }
            ConfigEdit::Write(text) => {
                if let Some(dir) = args.config.parent() {
                    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
                }
                write_atomic(&args.config, text.as_bytes())
                    .with_context(|| format!("write {}", args.config.display()))?;
                crate::outln!(
                    "added the runtime handler \"{HANDLER}\" to {}; restart containerd to use it \
                     for CRI (systemctl restart containerd)",
                    args.config.display()
                );
            }
        }
    }
    crate::outln!(
        "ctr: ctr run --runtime {RUNTIME_TYPE} IMAGE ID CMD...\nKubernetes: a RuntimeClass \
         (kubectl apply -f -):\n---\n{}",
        runtime_class()
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_becomes_a_version_2_configuration() {
        let ConfigEdit::Write(t) = containerd_config(None).unwrap() else {
            panic!()
        };
        assert!(t.starts_with("version = 2\n"));
        assert!(t.contains(
            "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.vessel]\n  runtime_type = \"io.containerd.vessel.v2\"\n"
        ));
    }

    #[test]
    fn debians_configuration_gets_the_table_appended_once() {
        let debian = "version = 2\n\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n    [plugins.\"io.containerd.grpc.v1.cri\".cni]\n      bin_dir = \"/usr/lib/cni\"";
        let ConfigEdit::Write(t) = containerd_config(Some(debian)).unwrap() else {
            panic!()
        };
        assert!(t.starts_with(debian));
        assert_eq!(
            containerd_config(Some(&t)).unwrap(),
            ConfigEdit::Present,
            "a second run changes nothing"
        );
    }

    #[test]
    fn containerd_2_uses_its_own_plugin_and_version_1_is_refused() {
        let ConfigEdit::Write(t) = containerd_config(Some("version = 3 # 2.x\n")).unwrap() else {
            panic!()
        };
        assert!(t.contains("[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.vessel]"));
        let e = containerd_config(Some("[plugins.cri]\n  x = 1\n")).unwrap_err();
        assert!(e.to_string().contains("version 1"), "{e}");
        assert!(containerd_config(Some("version = \"x\"\n")).is_err());
    }

    #[test]
    fn the_runtime_class_names_the_handler() {
        assert!(runtime_class().contains("handler: vessel\n"));
    }
}
