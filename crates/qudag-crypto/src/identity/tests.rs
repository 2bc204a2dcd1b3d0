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
        Err(IdentityError::TooLarge { .. })
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
        Err(IdentityError::NotAFile { .. })
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
