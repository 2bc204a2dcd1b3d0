//! `keygen`: writes a new identity key file and prints its PeerId; and the
//! key loading every other subcommand shares.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use qudag_net::Identity;

/// Options of `qudag-node keygen`.
#[derive(Debug, Args)]
pub(crate) struct KeygenArgs {
    /// Where to write the key (created with mode 0600; never overwritten).
    #[arg(long, value_name = "FILE")]
    pub(crate) out: PathBuf,
}

/// Generates an identity, saves it to `args.out` and prints its PeerId on stdout.
pub(crate) fn run(args: &KeygenArgs) -> anyhow::Result<()> {
    let identity = Identity::generate().context("cannot generate an identity key")?;
    identity
        .save(&args.out)
        .with_context(|| format!("cannot write key file {}", args.out.display()))?;
    println!("{}", identity.peer_id());
    Ok(())
}

/// The identity in `key`, or a fresh one (not saved) when there is no key file.
pub(crate) fn load_identity(key: Option<&Path>) -> anyhow::Result<Identity> {
    match key {
        Some(path) => {
            Identity::load(path).with_context(|| format!("bad key file {}", path.display()))
        }
        None => Identity::generate().context("cannot generate an identity key"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("qudag-node-keygen-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn saved_key_loads_back_with_the_same_peer_id() {
        let dir = temp_dir("roundtrip");
        let path = dir.join("node.key");
        run(&KeygenArgs { out: path.clone() }).unwrap();
        let a = load_identity(Some(&path)).unwrap();
        let b = load_identity(Some(&path)).unwrap();
        assert_eq!(a.peer_id(), b.peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let again = run(&KeygenArgs { out: path.clone() }).unwrap_err();
        assert!(format!("{again:#}").contains("already exists"), "{again:#}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_key_files_are_errors_naming_the_file() {
        let dir = temp_dir("bad");
        let missing = dir.join("missing.key");
        let e = load_identity(Some(&missing)).unwrap_err();
        assert!(format!("{e:#}").contains("bad key file"), "{e:#}");
        let garbage = dir.join("garbage.key");
        std::fs::write(&garbage, b"not a key").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&garbage, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let e = load_identity(Some(&garbage)).unwrap_err();
        assert!(format!("{e:#}").contains("garbage.key"), "{e:#}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn no_key_file_gives_distinct_fresh_identities() {
        let a = load_identity(None).unwrap();
        let b = load_identity(None).unwrap();
        assert_ne!(a.peer_id(), b.peer_id());
    }
}
