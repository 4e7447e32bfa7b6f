//! Certificate files: names as SwarmKit uses them, atomic writes, owner-only key files.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A file operation that failed, with the path in its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FileError(pub String);

macro_rules! file_error {
    ($($t:tt)*) => { FileError(format!($($t)*)) };
}

/// The root bundle.
pub const ROOT_CERT: &str = "swarm-root-ca.crt";
/// The node certificate (leaf + intermediates).
pub const NODE_CERT: &str = "swarm-node.crt";
/// The node private key (PKCS#8 PEM, mode 0600).
pub const NODE_KEY: &str = "swarm-node.key";

/// The embedded store's seal key, in the data directory beside the store (never inside it).
pub const SEAL_KEY_FILE: &str = "seal.key";

/// Reads a seal key file; refuses one that others than its owner can read.
pub fn read_seal_key(path: &Path) -> Result<swarmca_core::seal::SealKey, FileError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta =
            fs::metadata(path).map_err(|e| file_error!("cannot read seal key {}: {e}", path.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(file_error!(
                "seal key {} is readable by others (mode {mode:o}); run `chmod 600 {}`",
                path.display(),
                path.display()
            ));
        }
    }
    let text = zeroize::Zeroizing::new(
        fs::read_to_string(path).map_err(|e| file_error!("cannot read seal key {}: {e}", path.display()))?,
    );
    swarmca_core::seal::SealKey::parse(&text).map_err(|e| file_error!("seal key {}: {e}", path.display()))
}

/// The seal key of `dir/seal.key`, created (mode 0600) when missing: (key, whether it was
/// created now).
pub fn load_or_create_seal_key(
    dir: &Path,
    entropy: &mut dyn swarmca_core::entropy::Entropy,
) -> Result<(swarmca_core::seal::SealKey, bool), FileError> {
    let path = dir.join(SEAL_KEY_FILE);
    if path.exists() {
        return read_seal_key(&path).map(|k| (k, false));
    }
    let key = swarmca_core::seal::SealKey::generate(entropy).map_err(|e| file_error!("{e}"))?;
    write_atomic(dir, SEAL_KEY_FILE, key.to_text().as_bytes(), true)?;
    Ok((key, true))
}

/// Creates `dir` (and parents) with owner-only permissions if missing.
pub fn ensure_private_dir(dir: &Path) -> Result<(), FileError> {
    fs::create_dir_all(dir).map_err(|e| file_error!("cannot create directory {}: {e}", dir.display()))?;
    set_mode(dir, 0o700)
}

#[cfg(unix)]
fn set_mode(p: &Path, mode: u32) -> Result<(), FileError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .map_err(|e| file_error!("cannot set permissions of {}: {e}", p.display()))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> Result<(), FileError> {
    Ok(())
}

/// Restricts `p` to its owner (used for the control socket).
pub fn owner_only(p: &Path) -> Result<(), FileError> {
    set_mode(p, 0o600)
}

/// Writes `bytes` to `dir/name` atomically (temp file, fsync, rename, fsync dir); `secret`
/// files get mode 0600 before any byte is written.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8], secret: bool) -> Result<(), FileError> {
    let dest = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    let write = || -> std::io::Result<()> {
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, &dest)?;
        fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        file_error!("cannot write {}: {e}", dest.display())
    })
}

/// Reads `dir/name`, with the path in the error.
pub fn read(dir: &Path, name: &str) -> Result<Vec<u8>, FileError> {
    let p: PathBuf = dir.join(name);
    fs::read(&p).map_err(|e| file_error!("cannot read {}: {e}", p.display()))
}
