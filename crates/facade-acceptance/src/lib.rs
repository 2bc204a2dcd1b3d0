//! Acceptance tests of `qudag-net` written as a user's crate would be: the
//! tests in `tests/` depend only on `qudag-net`, `bytes` and `tokio`, so
//! anything they need and the facade does not re-export fails to compile.
//!
//! Nothing to use here; see `tests/facade.rs`.
