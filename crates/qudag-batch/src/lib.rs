//! Sans-IO message batching and the batch wire codec for qudag-net.
//!
//! This crate groups small messages into batches and puts batches on the
//! wire:
//!
//! - [`Batcher`] collects messages and closes a batch when it is full (by
//!   message count or bytes), when its oldest message has waited
//!   `max_delay`, or, under [`FlushPolicy::Adaptive`], as soon as the writer
//!   is idle. It is sans-IO in the style of `quinn-proto`: it never reads
//!   the clock (every call that depends on time takes `now: Instant`) and
//!   does no IO.
//! - The codec ([`encode_batch_frame`], [`encode_ack_frame`],
//!   [`FrameDecoder`], [`decode_body`]) writes and reads length-delimited
//!   frames, checking every length read off the wire against
//!   [`CodecLimits`] before allocating. Decoding hands out [`bytes::Bytes`]
//!   slices of the received buffer, not copies. The format is specified
//!   byte by byte in `docs/PROTOCOL.md`.
//!
//! What it does **not** do: no encryption (the 16-byte tag of a batch frame
//! is opaque here; the caller's sealer seals and opens the body in place,
//! see [`FrameSpans`] and [`SealedBatch::parts_mut`]), no sequence-number
//! or acknowledgement policy (the caller picks and checks sequence numbers),
//! no timers, sockets or tasks, and no dependency on tokio or on other
//! qudag crates.
//!
//! # Key types
//!
//! - [`BatchConfig`] / [`FlushPolicy`]: limits and policy, with production
//!   defaults (128 messages, 1 MiB, 50 ms, fixed policy).
//! - [`Batcher`] / [`Batch`] / [`PushError`]: the sans-IO batcher.
//! - [`FrameDecoder`] / [`Frame`] / [`SealedBatch`] / [`DecodeError`]: the
//!   receiving side.
//!
//! # Examples
//!
//! Batch two messages, frame them, "seal" them, and read them back:
//!
//! ```
//! use bytes::{Bytes, BytesMut};
//! use qudag_batch::{
//!     decode_body, encode_batch_frame, BatchConfig, Batcher, Frame, FrameDecoder,
//! };
//! use std::time::Instant;
//!
//! let config = BatchConfig::default();
//! let mut batcher = Batcher::new(config.clone());
//! let now = Instant::now();
//! batcher.push(Bytes::from_static(b"ping"), now).unwrap();
//! batcher.push(Bytes::from_static(b"pong"), now).unwrap();
//! let batch = batcher.flush().unwrap();
//!
//! // sender: encode, then seal out[spans.body] in place and write the tag
//! let mut wire = BytesMut::new();
//! let spans = encode_batch_frame(0, 0, batch.messages(), &mut wire);
//! wire[spans.body].iter_mut().for_each(|b| *b ^= 0x5a); // a toy cipher
//!
//! // receiver: decode with the matching limits, open in place, parse
//! let limits = config.codec_limits();
//! let mut decoder = FrameDecoder::new(limits.clone());
//! let Some(Frame::Batch(mut sealed)) = decoder.decode(&mut wire).unwrap() else {
//!     panic!("expected a batch")
//! };
//! assert_eq!(sealed.seq(), 0);
//! let (_aad, body, _tag) = sealed.parts_mut();
//! body.iter_mut().for_each(|b| *b ^= 0x5a);
//! let messages = decode_body(sealed.into_body(), &limits).unwrap();
//! assert_eq!(messages, batch.into_messages());
//! assert!(wire.is_empty());
//! ```
#![doc(test(attr(deny(warnings))))]

/// The crate's README, compiled as a doctest so it cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

mod batcher;
mod codec;
mod config;
mod session;

pub use batcher::{Batch, Batcher, PushError};
pub use codec::{
    batch_frame_len, body_len, decode_body, encode_ack_frame, encode_batch_frame,
    encode_resume_frame, CodecLimits, DecodeError, Frame, FrameDecoder, FrameSpans, Resume,
    SealedBatch, ACK_FRAME_LEN, BATCH_HEADER_LEN, FRAME_OVERHEAD, KIND_ACK, KIND_BATCH,
    KIND_RESUME, RESUME_FRAME_LEN, TAG_LEN,
};
pub use config::{
    BatchConfig, ConfigError, FlushPolicy, DEFAULT_MAX_BYTES, DEFAULT_MAX_DELAY,
    DEFAULT_MAX_MESSAGES, MAX_MAX_BYTES, MIN_MAX_BYTES,
};
pub use session::{AckError, ConnectionRules, Inbox, InboxPlan, Outbox, ResumeOutcome, RuleError};
