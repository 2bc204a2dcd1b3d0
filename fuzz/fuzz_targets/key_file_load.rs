//! Fuzz target: the key file parser (`Identity::from_file_bytes`, which
//! `Identity::load` uses) must never panic, and anything it accepts
//! re-serialises to the canonical file (the input, up to the optional final
//! newline) and parses back to the same identity.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qudag_crypto::Identity;

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = Identity::from_file_bytes(data) {
        let canon = id.to_file_bytes();
        assert!(canon[..] == data[..] || canon[..canon.len() - 1] == data[..]);
        let again = Identity::from_file_bytes(&canon).expect("canonical file parses");
        assert_eq!(again.peer_id(), id.peer_id());
    }
});
