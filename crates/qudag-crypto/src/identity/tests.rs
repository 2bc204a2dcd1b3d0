//! Identity tests: keys, signatures, the key file format, save and load.

use super::*;
use proptest::prelude::*;
use std::sync::atomic::{AtomicU32, Ordering};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let mut r = [0u8; 8];
        ring::rand::SystemRandom::new().fill(&mut r).unwrap();
        let p = std::env::temp_dir().join(format!(
            "qudag-crypto-test-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            u64::from_le_bytes(r)
        ));
        std::fs::create_dir(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[track_caller]
fn check_format_err(bytes: &[u8], reason: &str) {
    match Identity::from_file_bytes(bytes) {
        Err(IdentityError::NotAnIdentityKey(r)) => assert_eq!(r, reason),
        other => panic!("expected NotAnIdentityKey({reason:?}), got {other:?}"),
    }
}

fn valid_file() -> (Identity, Vec<u8>) {
    let id = Identity::generate().unwrap();
    let bytes = id.to_file_bytes().to_vec();
    (id, bytes)
}

#[test]
fn generated_identity_is_consistent() {
    let id = Identity::generate().unwrap();
    assert_eq!(id.peer_id(), PeerId::from_public_key(id.public_key()));
    let again = Identity::from_pkcs8(id.pkcs8_der()).unwrap();
    assert_eq!(again.public_key(), id.public_key());
    let other = Identity::generate().unwrap();
    assert_ne!(other.peer_id(), id.peer_id());
    let copy = id.try_clone().unwrap();
    assert_eq!(copy.sign(b"m"), id.sign(b"m"));
}

#[test]
fn debug_shows_only_peer_id() {
    let id = Identity::generate().unwrap();
    let d = format!("{id:?}");
    assert!(d.starts_with("Identity { peer_id: PeerId("), "{d}");
    let secret_hex: String = id.pkcs8_der()[16..24]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(!d.contains(&secret_hex), "{d}");
}

#[test]
fn rejects_non_pkcs8() {
    assert!(matches!(
        Identity::from_pkcs8(b"nope"),
        Err(IdentityError::InvalidKey)
    ));
    assert!(matches!(
        Identity::from_pkcs8(&[]),
        Err(IdentityError::InvalidKey)
    ));
}

#[test]
fn file_format_is_header_hex_newline() {
    let (id, bytes) = valid_file();
    let text = std::str::from_utf8(&bytes).unwrap();
    let (header, rest) = text.split_at(KEY_FILE_HEADER.len());
    assert_eq!(header, KEY_FILE_HEADER);
    assert!(rest.ends_with('\n'));
    assert_eq!(rest.trim_end().len(), 2 * id.pkcs8_der().len());
    assert!(rest
        .trim_end()
        .bytes()
        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
    // The final newline is optional.
    let id2 = Identity::from_file_bytes(&bytes[..bytes.len() - 1]).unwrap();
    assert_eq!(id2.peer_id(), id.peer_id());
}

#[test]
fn file_format_errors() {
    let (_, bytes) = valid_file();
    check_format_err(b"", "missing header line");
    check_format_err(b"-----BEGIN PRIVATE KEY-----\n", "missing header line");
    check_format_err(KEY_FILE_HEADER.as_bytes(), "no key after the header");
    let mut odd = bytes.clone();
    odd.remove(KEY_FILE_HEADER.len());
    check_format_err(&odd, "odd number of hex digits");
    let upper = bytes.to_ascii_uppercase();
    check_format_err(&upper, "missing header line");
    let mut upper_body = bytes.clone();
    upper_body[KEY_FILE_HEADER.len()..].make_ascii_uppercase();
    upper_body[KEY_FILE_HEADER.len()] = b'A';
    upper_body[KEY_FILE_HEADER.len() + 1] = b'0';
    check_format_err(&upper_body, "key is not lowercase hex on one line");
    let mut crlf = bytes[..bytes.len() - 1].to_vec();
    crlf.extend_from_slice(b"\r\n");
    check_format_err(&crlf, "odd number of hex digits");
    let mut two_newlines = bytes.clone();
    two_newlines.extend_from_slice(b"\n");
    check_format_err(&two_newlines, "odd number of hex digits");
    let mut trailing = bytes[..bytes.len() - 1].to_vec();
    trailing.extend_from_slice(b"00\n");
    assert!(matches!(
        Identity::from_file_bytes(&trailing),
        Err(IdentityError::InvalidKey)
    ));
    let mut bad_key = KEY_FILE_HEADER.as_bytes().to_vec();
    bad_key.extend_from_slice(b"00112233\n");
    assert!(matches!(
        Identity::from_file_bytes(&bad_key),
        Err(IdentityError::InvalidKey)
    ));
}

#[test]
fn file_bytes_too_large_is_refused_first() {
    let big = vec![b'a'; MAX_KEY_FILE_LEN + 1];
    assert!(matches!(
        Identity::from_file_bytes(&big),
        Err(IdentityError::TooLarge { len, max }) if len == MAX_KEY_FILE_LEN as u64 + 1 && max == MAX_KEY_FILE_LEN as u64
    ));
}

#[test]
fn error_messages() {
    let e = IdentityError::Permissions {
        path: PathBuf::from("/k"),
        mode: 0o644,
    };
    assert_eq!(
        e.to_string(),
        "key file /k is readable or writable by group or others (mode 0644); chmod 600 it"
    );
    assert_eq!(
        IdentityError::NotAnIdentityKey("missing header line").to_string(),
        "key file is not a qudag identity key: missing header line"
    );
    assert_eq!(
        IdentityError::FileTooLarge {
            path: PathBuf::from("/k"),
            len: 2048,
            max: 1024
        }
        .to_string(),
        "key file /k is too large to be a qudag identity key (2048 bytes, limit 1024)"
    );
    assert_eq!(
        IdentityError::NotAFile {
            path: PathBuf::from("/k"),
            kind: FileKind::Socket
        }
        .to_string(),
        "key file /k is not a regular file: it is a socket"
    );
}

#[test]
fn save_then_load_round_trips_with_mode_0600() {
    let dir = TempDir::new();
    let path = dir.0.join("node.key");
    let id = Identity::generate().unwrap();
    id.save(&path).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let loaded = Identity::load(&path).unwrap();
    assert_eq!(loaded.peer_id(), id.peer_id());
    assert_eq!(loaded.sign(b"x"), id.sign(b"x"));
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("node.key")]);
}

#[test]
fn save_refuses_to_overwrite() {
    let dir = TempDir::new();
    let path = dir.0.join("node.key");
    let first = Identity::generate().unwrap();
    first.save(&path).unwrap();
    let second = Identity::generate().unwrap();
    assert!(matches!(
        second.save(&path),
        Err(IdentityError::AlreadyExists { path: p }) if p == path
    ));
    assert_eq!(Identity::load(&path).unwrap().peer_id(), first.peer_id());
}

#[test]
fn save_into_missing_directory_is_a_write_error() {
    let dir = TempDir::new();
    let path = dir.0.join("missing").join("node.key");
    let err = Identity::generate().unwrap().save(&path).unwrap_err();
    assert!(
        matches!(&err, IdentityError::Write { source, .. } if source.kind() == io::ErrorKind::NotFound),
        "{err:?}"
    );
}

#[cfg(unix)]
#[test]
fn load_refuses_group_or_world_accessible_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new();
    let path = dir.0.join("node.key");
    Identity::generate().unwrap().save(&path).unwrap();
    for mode in [0o644, 0o640, 0o604, 0o620, 0o602] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = Identity::load(&path).unwrap_err();
        assert!(
            matches!(&err, IdentityError::Permissions { mode: m, .. } if *m == mode),
            "{err:?}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    Identity::load(&path).unwrap();
}

#[test]
fn load_refuses_large_file_and_directory_and_missing() {
    let dir = TempDir::new();
    let big = dir.0.join("big.key");
    let mut f = create_private(&big).unwrap();
    f.write_all(&vec![b'0'; MAX_KEY_FILE_LEN + 1]).unwrap();
    drop(f);
    assert!(matches!(
        Identity::load(&big),
        Err(IdentityError::FileTooLarge { path, len, max })
            if path == big && len == MAX_KEY_FILE_LEN as u64 + 1 && max == MAX_KEY_FILE_LEN as u64
    ));

    let sub = dir.0.join("sub");
    std::fs::create_dir(&sub).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    assert!(matches!(
        Identity::load(&sub),
        Err(IdentityError::NotAFile { path, kind: FileKind::Directory }) if path == sub
    ));

    let missing = dir.0.join("missing.key");
    assert!(matches!(
        Identity::load(&missing),
        Err(IdentityError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound
    ));

    let junk = dir.0.join("junk.key");
    let mut f = create_private(&junk).unwrap();
    f.write_all(b"hello\n").unwrap();
    drop(f);
    assert!(matches!(
        Identity::load(&junk),
        Err(IdentityError::NotAnIdentityKey(_))
    ));
}

/// Runs `Identity::load(path)` on another thread and returns its result, or
/// fails the test if it has not returned within a generous bound: a loader
/// that blocks (as `File::open` does on a FIFO with no writer) fails here
/// instead of hanging the suite. Before failing, `unblock` is run so the
/// stuck thread can finish.
#[cfg(unix)]
#[track_caller]
fn load_with_guard(path: &Path, unblock: impl FnOnce()) -> Result<Identity, IdentityError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(Identity::load(&p));
    });
    match rx.recv_timeout(std::time::Duration::from_secs(20)) {
        Ok(result) => result,
        Err(_) => {
            unblock();
            panic!("Identity::load({}) blocked", path.display());
        }
    }
}

#[cfg(unix)]
fn mkfifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
}

/// Opening the FIFO's write end releases a reader blocked in `open`.
#[cfg(unix)]
fn release_fifo(path: &Path) -> impl FnOnce() + '_ {
    move || {
        let _ = std::fs::OpenOptions::new().write(true).open(path);
    }
}

#[cfg(unix)]
#[test]
fn load_refuses_a_fifo_without_blocking() {
    let dir = TempDir::new();
    let fifo = dir.0.join("node.key");
    mkfifo(&fifo);
    let err = load_with_guard(&fifo, release_fifo(&fifo)).unwrap_err();
    assert!(
        matches!(&err, IdentityError::NotAFile { path, kind: FileKind::Fifo } if *path == fifo),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "key file {} is not a regular file: it is a FIFO",
            fifo.display()
        )
    );
}

/// The open itself does not block on a FIFO either, for the case where a
/// FIFO replaces the file between `load`'s first look and its open: the
/// opened handle is then refused by the checks on it.
#[cfg(unix)]
#[test]
fn opening_a_fifo_does_not_block() {
    let dir = TempDir::new();
    let fifo = dir.0.join("node.key");
    mkfifo(&fifo);
    let (tx, rx) = std::sync::mpsc::channel();
    let p = fifo.clone();
    std::thread::spawn(move || {
        let _ = tx.send(open_key_file(&p).and_then(|f| f.metadata()));
    });
    let meta = match rx.recv_timeout(std::time::Duration::from_secs(20)) {
        Ok(meta) => meta.unwrap(),
        Err(_) => {
            release_fifo(&fifo)();
            panic!("open_key_file blocked on a FIFO");
        }
    };
    assert!(matches!(
        check_key_file(&fifo, &meta, effective_uid()),
        Err(IdentityError::NotAFile {
            kind: FileKind::Fifo,
            ..
        })
    ));
}

#[cfg(unix)]
#[test]
fn load_refuses_character_devices() {
    for dev in ["/dev/null", "/dev/zero"] {
        let path = Path::new(dev);
        if !path.exists() {
            continue;
        }
        let err = load_with_guard(path, || {}).unwrap_err();
        assert!(
            matches!(&err, IdentityError::NotAFile { path: p, kind: FileKind::CharDevice } if p == path),
            "{dev}: {err:?}"
        );
    }
}

/// The symlink policy: a link is followed and the file it leads to is
/// checked like any other; a FIFO behind a link is still refused at once.
#[cfg(unix)]
#[test]
fn load_follows_symlinks_and_checks_their_target() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let dir = TempDir::new();
    let key = dir.0.join("node.key");
    let id = Identity::generate().unwrap();
    id.save(&key).unwrap();
    let link = dir.0.join("link.key");
    symlink(&key, &link).unwrap();
    assert_eq!(Identity::load(&link).unwrap().peer_id(), id.peer_id());

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert!(matches!(
        Identity::load(&link),
        Err(IdentityError::Permissions { path, mode: 0o640 }) if path == link
    ));

    let fifo = dir.0.join("fifo");
    mkfifo(&fifo);
    let to_fifo = dir.0.join("to-fifo.key");
    symlink(&fifo, &to_fifo).unwrap();
    assert!(matches!(
        load_with_guard(&to_fifo, release_fifo(&fifo)),
        Err(IdentityError::NotAFile {
            kind: FileKind::Fifo,
            ..
        })
    ));

    let dangling = dir.0.join("dangling.key");
    symlink(dir.0.join("nowhere"), &dangling).unwrap();
    assert!(matches!(
        Identity::load(&dangling),
        Err(IdentityError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound
    ));
}

/// The owner check itself, for any uid: a file we own, checked as if this
/// process ran as another user, is refused.
#[cfg(unix)]
#[test]
fn owner_check_compares_with_the_effective_uid() {
    use std::os::unix::fs::MetadataExt;
    let dir = TempDir::new();
    let path = dir.0.join("node.key");
    Identity::generate().unwrap().save(&path).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    let mine = meta.uid();
    assert_eq!(effective_uid(), Some(mine));
    check_key_file(&path, &meta, Some(mine)).unwrap();
    let other = mine.wrapping_add(1);
    let err = check_key_file(&path, &meta, Some(other)).unwrap_err();
    assert!(
        matches!(&err, IdentityError::Owner { path: p, owner, euid } if *p == path && *owner == mine && *euid == other),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "key file {} is owned by uid {mine}, not by this process's uid {other}; chown it or run as its owner",
            path.display()
        )
    );
}

/// A real file owned by someone else. Only root can make one; as any other
/// user the check is covered by `owner_check_compares_with_the_effective_uid`,
/// and here a file owned by root (if any is found) is refused instead.
#[cfg(unix)]
#[test]
fn load_refuses_a_file_owned_by_another_user() {
    let dir = TempDir::new();
    let path = dir.0.join("node.key");
    Identity::generate().unwrap().save(&path).unwrap();
    let me = effective_uid().unwrap();
    if me == 0 {
        let stranger = 4242;
        std::os::unix::fs::chown(&path, Some(stranger), None).unwrap();
        let err = Identity::load(&path).unwrap_err();
        assert!(
            matches!(&err, IdentityError::Owner { owner, euid: 0, .. } if *owner == stranger),
            "{err:?}"
        );
    } else {
        // Not root: a root-owned regular file such as /etc/passwd is refused
        // for its owner before its mode or contents are looked at.
        let err = Identity::load(Path::new("/etc/passwd")).unwrap_err();
        assert!(
            matches!(&err, IdentityError::Owner { owner: 0, euid, .. } if *euid == me),
            "{err:?}"
        );
    }
}

#[test]
fn check_order_is_type_owner_mode_size() {
    let dir = TempDir::new();
    let path = dir.0.join("big.key");
    let mut f = create_private(&path).unwrap();
    f.write_all(&vec![b'0'; MAX_KEY_FILE_LEN + 1]).unwrap();
    drop(f);
    let meta = std::fs::metadata(&path).unwrap();
    assert!(matches!(
        check_key_file(&path, &meta, effective_uid()),
        Err(IdentityError::FileTooLarge { .. })
    ));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(matches!(
            check_key_file(&path, &meta, effective_uid()),
            Err(IdentityError::Permissions { mode: 0o644, .. })
        ));
        let other = effective_uid().unwrap().wrapping_add(1);
        assert!(matches!(
            check_key_file(&path, &meta, Some(other)),
            Err(IdentityError::Owner { .. })
        ));
    }
    let dir_meta = std::fs::metadata(&dir.0).unwrap();
    assert!(matches!(
        check_key_file(&dir.0, &dir_meta, Some(u32::MAX)),
        Err(IdentityError::NotAFile {
            kind: FileKind::Directory,
            ..
        })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Signatures verify, and fail on any flipped bit of message or signature.
    #[test]
    fn sign_verify(msg in proptest::collection::vec(any::<u8>(), 0..256), bit in any::<usize>()) {
        let id = Identity::generate().unwrap();
        let sig = id.sign(&msg);
        prop_assert!(verify_signature(id.public_key(), &msg, &sig));
        let mut bad_sig = sig;
        bad_sig[(bit / 8) % SIGNATURE_LEN] ^= 1 << (bit % 8);
        prop_assert!(!verify_signature(id.public_key(), &msg, &bad_sig));
        if !msg.is_empty() {
            let mut bad_msg = msg.clone();
            let i = (bit / 8) % bad_msg.len();
            bad_msg[i] ^= 1 << (bit % 8);
            prop_assert!(!verify_signature(id.public_key(), &bad_msg, &sig));
        }
        prop_assert!(!verify_signature(&id.public_key()[..31], &msg, &sig));
        prop_assert!(!verify_signature(id.public_key(), &msg, &sig[..63]));
    }

    /// The key file parser never panics on arbitrary bytes.
    #[test]
    fn from_file_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Identity::from_file_bytes(&bytes);
    }

    /// Arbitrary bytes after a valid header never panic, and whatever is
    /// accepted re-serialises to the same canonical file.
    #[test]
    fn header_plus_junk(body in "[0-9a-fA-F\n\r ]{0,400}") {
        let mut bytes = KEY_FILE_HEADER.as_bytes().to_vec();
        bytes.extend_from_slice(body.as_bytes());
        if let Ok(id) = Identity::from_file_bytes(&bytes) {
            let canon = id.to_file_bytes();
            prop_assert!(canon[..] == bytes[..] || canon[..canon.len() - 1] == bytes[..]);
        }
    }

    /// Any single-byte change to a valid key file is refused or yields a
    /// different (still valid) file, never a panic.
    #[test]
    fn mutated_key_file(index in any::<usize>(), byte in any::<u8>()) {
        let (id, mut bytes) = valid_file();
        let i = index % bytes.len();
        prop_assume!(bytes[i] != byte);
        bytes[i] = byte;
        if let Ok(other) = Identity::from_file_bytes(&bytes) {
            // Only a change that keeps a valid, self-consistent key passes.
            prop_assert_ne!(other.to_file_bytes().to_vec(), id.to_file_bytes().to_vec());
        }
    }
}
