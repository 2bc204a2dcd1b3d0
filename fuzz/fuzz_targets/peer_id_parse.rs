//! Fuzz target: `PeerId` parsing must never panic, and anything it accepts prints back identically.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(id) = s.parse::<qudag_crypto::PeerId>() {
            assert_eq!(id.to_string(), s);
        }
    }
});
