//! [`Identity`]: a node's Ed25519 key pair, and its key file.
//!
//! # Key file format
//!
//! A key file is ASCII text, at most [`MAX_KEY_FILE_LEN`] bytes:
//!
//! ```text
//! qudag-identity-key v1 ed25519-pkcs8-hex
//! 3053020101300506032b657004220420...   (the PKCS#8 v2 document, lowercase hex)
//! ```
//!
//! That is the header line [`KEY_FILE_HEADER`] (ending in `\n`), then the
//! PKCS#8 v2 DER document (RFC 5958, as produced by ring) as lowercase hex,
//! then an optional final `\n`. Nothing else is accepted: no blank lines,
//! no `\r`, no upper-case hex, no trailing data.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use ring::rand::SecureRandom;
use ring::signature::{self, Ed25519KeyPair, KeyPair};
use zeroize::Zeroizing;

use crate::PeerId;

/// The first line of a key file (including its newline).
pub const KEY_FILE_HEADER: &str = "qudag-identity-key v1 ed25519-pkcs8-hex\n";

/// Largest key file [`Identity::load`] and [`Identity::from_file_bytes`]
/// accept, in bytes; checked before anything is read or allocated.
pub const MAX_KEY_FILE_LEN: usize = 1024;

/// Length of an Ed25519 public key in bytes.
pub const PUBLIC_KEY_LEN: usize = 32;

/// Length of an Ed25519 signature in bytes.
pub const SIGNATURE_LEN: usize = 64;

/// A node's Ed25519 identity key pair.
///
/// `Debug` prints only the [`PeerId`]; there is no `Clone` (use
/// [`try_clone`](Identity::try_clone) when a second copy of the secret is
/// really wanted). The PKCS#8 document (the seed) is held in a
/// [`Zeroizing`] heap buffer and wiped on drop. ring's parsed key pair,
/// which `sign` uses, holds the private scalar and prefix and is **not**
/// wiped: ring offers no way to (docs/SECURITY.md §5).
///
/// # Examples
///
/// ```
/// use qudag_crypto::{verify_signature, Identity, PeerId};
///
/// let id = Identity::generate().unwrap();
/// assert_eq!(id.peer_id(), PeerId::from_public_key(id.public_key()));
/// let sig = id.sign(b"hello");
/// assert!(verify_signature(id.public_key(), b"hello", &sig));
/// assert!(!verify_signature(id.public_key(), b"hullo", &sig));
///
/// // The key file form round-trips.
/// let text = id.to_file_bytes();
/// let back = Identity::from_file_bytes(&text).unwrap();
/// assert_eq!(back.peer_id(), id.peer_id());
/// ```
pub struct Identity {
    pkcs8: Zeroizing<Vec<u8>>,
    key_pair: Ed25519KeyPair,
    public_key: [u8; PUBLIC_KEY_LEN],
    peer_id: PeerId,
}

impl Identity {
    /// Generates a fresh key pair from the system random number generator.
    pub fn generate() -> Result<Self, IdentityError> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| IdentityError::Rng)?;
        Self::from_pkcs8(doc.as_ref())
    }

    /// Parses an Ed25519 PKCS#8 v2 document (RFC 5958, with the public key,
    /// as ring and rcgen produce). The public key in the document must match
    /// the private key. PKCS#8 v1 documents are refused.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, IdentityError> {
        let key_pair = Ed25519KeyPair::from_pkcs8(der).map_err(|_| IdentityError::InvalidKey)?;
        let mut public_key = [0u8; PUBLIC_KEY_LEN];
        public_key.copy_from_slice(key_pair.public_key().as_ref());
        Ok(Self {
            pkcs8: Zeroizing::new(der.to_vec()),
            key_pair,
            peer_id: PeerId::from_public_key(&public_key),
            public_key,
        })
    }

    /// A second, independent copy of this identity (the secret is copied).
    pub fn try_clone(&self) -> Result<Self, IdentityError> {
        Self::from_pkcs8(&self.pkcs8)
    }

    /// The PKCS#8 v2 document: **this is the secret key.** Hand it only to
    /// code that needs the private key (rcgen, to build the self-signed TLS
    /// certificate); never log or send it.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The 32-byte Ed25519 public key.
    pub fn public_key(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.public_key
    }

    /// This node's [`PeerId`]: SHA-256 of [`public_key`](Identity::public_key).
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Signs `msg` (Ed25519, deterministic).
    pub fn sign(&self, msg: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut out = [0u8; SIGNATURE_LEN];
        out.copy_from_slice(self.key_pair.sign(msg).as_ref());
        out
    }

    /// The key file contents for this identity (see the
    /// [crate docs](crate#key-file-format) for the format). The buffer holds the secret and
    /// is wiped on drop.
    pub fn to_file_bytes(&self) -> Zeroizing<Vec<u8>> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = Zeroizing::new(Vec::with_capacity(
            KEY_FILE_HEADER.len() + 2 * self.pkcs8.len() + 1,
        ));
        out.extend_from_slice(KEY_FILE_HEADER.as_bytes());
        for b in self.pkcs8.iter() {
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0x0f)]);
        }
        out.push(b'\n');
        out
    }

    /// Parses key file contents (see the [crate docs](crate#key-file-format) for the
    /// format). This is what [`load`](Identity::load) uses after reading the
    /// file; it never panics and allocates at most `bytes.len() / 2`.
    pub fn from_file_bytes(bytes: &[u8]) -> Result<Self, IdentityError> {
        if bytes.len() > MAX_KEY_FILE_LEN {
            return Err(IdentityError::TooLarge {
                len: bytes.len() as u64,
                max: MAX_KEY_FILE_LEN as u64,
            });
        }
        let body = bytes
            .strip_prefix(KEY_FILE_HEADER.as_bytes())
            .ok_or(IdentityError::NotAnIdentityKey("missing header line"))?;
        let body = body.strip_suffix(b"\n").unwrap_or(body);
        if body.is_empty() {
            return Err(IdentityError::NotAnIdentityKey("no key after the header"));
        }
        if body.len() % 2 != 0 {
            return Err(IdentityError::NotAnIdentityKey("odd number of hex digits"));
        }
        let mut der = Zeroizing::new(Vec::with_capacity(body.len() / 2));
        for pair in body.chunks_exact(2) {
            let hi = hex_digit(pair[0])?;
            let lo = hex_digit(pair[1])?;
            der.push((hi << 4) | lo);
        }
        Self::from_pkcs8(&der)
    }

    /// Writes the key file to `path`, which must not exist yet.
    ///
    /// On Unix the file is created with mode `0600`. The contents are written
    /// to a temporary file in the same directory, flushed to disk, then
    /// hard-linked into place, so `path` either does not exist or holds the
    /// complete key; an existing `path` is never overwritten
    /// ([`IdentityError::AlreadyExists`]).
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        let write_err = |source| IdentityError::Write {
            path: path.to_path_buf(),
            source,
        };
        if path.symlink_metadata().is_ok() {
            return Err(IdentityError::AlreadyExists {
                path: path.to_path_buf(),
            });
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path.file_name().ok_or_else(|| {
            write_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "path has no file name",
            ))
        })?;
        let mut suffix = [0u8; 8];
        ring::rand::SystemRandom::new()
            .fill(&mut suffix)
            .map_err(|_| IdentityError::Rng)?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp-{}", u64::from_le_bytes(suffix)));
        let tmp = dir.join(tmp_name);

        let result = (|| {
            let mut file = create_private(&tmp)?;
            file.write_all(&self.to_file_bytes())?;
            file.sync_all()?;
            std::fs::hard_link(&tmp, path)
        })();
        let _ = std::fs::remove_file(&tmp);
        match result {
            Ok(()) => {
                // Persist the new directory entry; best effort.
                if let Ok(d) = std::fs::File::open(&dir) {
                    let _ = d.sync_all();
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(IdentityError::AlreadyExists {
                    path: path.to_path_buf(),
                })
            }
            Err(e) => Err(write_err(e)),
        }
    }

    /// Reads a key file written by [`save`](Identity::save).
    ///
    /// Before reading a byte of the contents it refuses, each with an
    /// [`IdentityError`] naming the path:
    ///
    /// - anything but a regular file: a directory, FIFO, socket or device
    ///   ([`IdentityError::NotAFile`], with its [`FileKind`]). The file is
    ///   opened non-blocking, so a FIFO is refused at once instead of
    ///   waiting for a writer;
    /// - on Unix, a file not owned by this process's effective uid
    ///   ([`IdentityError::Owner`]);
    /// - on Unix, a file group or others may read or write (any of the mode
    ///   bits `0o077`, [`IdentityError::Permissions`]);
    /// - a file larger than [`MAX_KEY_FILE_LEN`]
    ///   ([`IdentityError::FileTooLarge`]).
    ///
    /// A symbolic link is followed, and the checks apply to the file it
    /// leads to: they are made on the opened handle (`fstat`), so the link
    /// cannot be swapped for another file between check and read. Whoever
    /// can change the directories on the path can still point it at another
    /// regular file of ours; keep the key in a directory only this user can
    /// write.
    ///
    /// On other platforms only the file type and the size are checked (not
    /// ownership or ACLs).
    ///
    /// # Examples
    ///
    /// ```
    /// use qudag_crypto::{FileKind, Identity, IdentityError};
    ///
    /// let dir = std::env::temp_dir().join(format!("qudag-doc-load-{}", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// std::fs::create_dir(&dir)?;
    /// let path = dir.join("node.key");
    /// let id = Identity::generate()?;
    /// id.save(&path)?;
    /// assert_eq!(Identity::load(&path)?.peer_id(), id.peer_id());
    ///
    /// // A directory is not a key file.
    /// assert!(matches!(
    ///     Identity::load(&dir),
    ///     Err(IdentityError::NotAFile { kind: FileKind::Directory, .. })
    /// ));
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let read_err = |source| IdentityError::Read {
            path: path.to_path_buf(),
            source,
        };
        // A first look, so a device or FIFO is refused without being opened
        // at all (opening some devices has side effects). It can race with a
        // rename; the checks on the opened handle below are the ones that count.
        let before = std::fs::metadata(path).map_err(read_err)?;
        check_file_type(path, &before)?;
        let file = open_key_file(path).map_err(read_err)?;
        let meta = file.metadata().map_err(read_err)?;
        check_key_file(path, &meta, effective_uid())?;
        // The file may grow after the check: read at most one byte past the
        // limit so the size is checked again below.
        let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE_LEN + 1));
        file.take(MAX_KEY_FILE_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        if bytes.len() > MAX_KEY_FILE_LEN {
            return Err(IdentityError::FileTooLarge {
                path: path.to_path_buf(),
                len: bytes.len() as u64,
                max: MAX_KEY_FILE_LEN as u64,
            });
        }
        Self::from_file_bytes(&bytes)
    }
}

/// What kind of file a path that is not a regular file turned out to be
/// (see [`IdentityError::NotAFile`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FileKind {
    /// A directory.
    Directory,
    /// A named pipe (FIFO).
    Fifo,
    /// A Unix domain socket.
    Socket,
    /// A character device (such as `/dev/zero`).
    CharDevice,
    /// A block device.
    BlockDevice,
    /// Anything else that is not a regular file.
    Other,
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::Directory => "a directory",
            FileKind::Fifo => "a FIFO",
            FileKind::Socket => "a socket",
            FileKind::CharDevice => "a character device",
            FileKind::BlockDevice => "a block device",
            FileKind::Other => "of another kind",
        })
    }
}

impl FileKind {
    fn of(ft: std::fs::FileType) -> Self {
        if ft.is_dir() {
            return FileKind::Directory;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileTypeExt;
            if ft.is_fifo() {
                return FileKind::Fifo;
            }
            if ft.is_socket() {
                return FileKind::Socket;
            }
            if ft.is_char_device() {
                return FileKind::CharDevice;
            }
            if ft.is_block_device() {
                return FileKind::BlockDevice;
            }
        }
        FileKind::Other
    }
}

fn check_file_type(path: &Path, meta: &std::fs::Metadata) -> Result<(), IdentityError> {
    if meta.is_file() {
        Ok(())
    } else {
        Err(IdentityError::NotAFile {
            path: path.to_path_buf(),
            kind: FileKind::of(meta.file_type()),
        })
    }
}

/// Every check [`Identity::load`] makes on the opened file's metadata, in
/// order: regular file, owner (`euid`, Unix only), mode (Unix only), size.
fn check_key_file(
    path: &Path,
    meta: &std::fs::Metadata,
    euid: Option<u32>,
) -> Result<(), IdentityError> {
    check_file_type(path, meta)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let Some(euid) = euid {
            if meta.uid() != euid {
                return Err(IdentityError::Owner {
                    path: path.to_path_buf(),
                    owner: meta.uid(),
                    euid,
                });
            }
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = euid;
    if meta.len() > MAX_KEY_FILE_LEN as u64 {
        return Err(IdentityError::FileTooLarge {
            path: path.to_path_buf(),
            len: meta.len(),
            max: MAX_KEY_FILE_LEN as u64,
        });
    }
    Ok(())
}

/// The effective uid of this process (Unix); `None` elsewhere.
#[cfg(unix)]
fn effective_uid() -> Option<u32> {
    Some(rustix::process::geteuid().as_raw())
}

#[cfg(not(unix))]
fn effective_uid() -> Option<u32> {
    None
}

/// Opens a key file for reading without blocking on a FIFO (`O_NONBLOCK`;
/// it has no effect on a regular file) and without making a terminal the
/// controlling one (`O_NOCTTY`).
#[cfg(unix)]
fn open_key_file(path: &Path) -> io::Result<std::fs::File> {
    use rustix::fs::OFlags;
    use std::os::unix::fs::OpenOptionsExt;
    // The flags are small positive constants: the cast is exact.
    let flags = (OFlags::NONBLOCK | OFlags::NOCTTY).bits() as i32;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
}

#[cfg(not(unix))]
fn open_key_file(path: &Path) -> io::Result<std::fs::File> {
    std::fs::File::open(path)
}

fn hex_digit(c: u8) -> Result<u8, IdentityError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(IdentityError::NotAnIdentityKey(
            "key is not lowercase hex on one line",
        )),
    }
}

#[cfg(unix)]
fn create_private(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn create_private(path: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

/// Verifies an Ed25519 signature. Returns `false` for a malformed public key
/// or signature as well as for a wrong one.
pub fn verify_signature(public_key: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    signature::UnparsedPublicKey::new(&signature::ED25519, public_key)
        .verify(msg, sig)
        .is_ok()
}

/// Why an identity could not be generated, parsed, saved or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Rng,
    /// The bytes are not an Ed25519 PKCS#8 v2 document (or its public key
    /// does not match its private key).
    #[error("not a valid ed25519 pkcs#8 v2 private key")]
    InvalidKey,
    /// The key file contents are not in the qudag key file format (the
    /// reason is given).
    #[error("key file is not a qudag identity key: {0}")]
    NotAnIdentityKey(&'static str),
    /// The key file contents passed to [`Identity::from_file_bytes`] are
    /// larger than [`MAX_KEY_FILE_LEN`].
    #[error("key file is too large to be a qudag identity key ({len} bytes, limit {max})")]
    TooLarge {
        /// Size found, in bytes.
        len: u64,
        /// The limit, in bytes.
        max: u64,
    },
    /// On Unix: group or others have access to the key file.
    #[error("key file {} is readable or writable by group or others (mode {mode:04o}); chmod 600 it", path.display())]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The path is a directory, FIFO, socket, device or another
    /// non-regular file.
    #[error("key file {} is not a regular file: it is {kind}", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is instead.
        kind: FileKind,
    },
    /// On Unix: the key file is owned by another user than the effective
    /// uid of this process.
    #[error("key file {} is owned by uid {owner}, not by this process's uid {euid}; chown it or run as its owner", path.display())]
    Owner {
        /// The key file.
        path: PathBuf,
        /// Its owner's uid.
        owner: u32,
        /// This process's effective uid.
        euid: u32,
    },
    /// The key file on disk is larger than [`MAX_KEY_FILE_LEN`]; checked
    /// before it is read.
    #[error("key file {} is too large to be a qudag identity key ({len} bytes, limit {max})", path.display())]
    FileTooLarge {
        /// The key file.
        path: PathBuf,
        /// Size found, in bytes.
        len: u64,
        /// The limit, in bytes.
        max: u64,
    },
    /// [`Identity::save`] refuses to overwrite an existing file.
    #[error("key file {} already exists; refusing to overwrite it", path.display())]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// Reading the key file failed.
    #[error("cannot read key file {}", path.display())]
    Read {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Writing the key file failed.
    #[error("cannot write key file {}", path.display())]
    Write {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

#[cfg(test)]
mod tests;
