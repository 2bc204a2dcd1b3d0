//! The batch wire codec: frames ([`encode_batch_frame`], [`encode_ack_frame`],
//! [`FrameDecoder`]) and batch bodies ([`decode_body`]).
//!
//! The format is specified byte by byte in `docs/PROTOCOL.md`. In short, all
//! integers big-endian:
//!
//! ```text
//! frame      = length:u32 kind:u8 payload        length = 1 + len(payload)
//! BATCH (1)  = seq:u64 first:u64 sealed_body tag:[u8; 16]
//!                                                AAD = length, kind, seq, first (21 bytes)
//! ACK   (2)  = next:u64
//! RESUME (3) = incarnation:u64 known:u64 next:u64
//! body       = count:u32 { len:u32 bytes[len] }*count
//! ```

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use crate::config::DEFAULT_MAX_BYTES;
use crate::config::{DEFAULT_MAX_MESSAGES, MIN_MAX_BYTES};

/// Length of the authentication tag that ends every BATCH frame, in bytes.
/// The codec treats it as opaque: the caller's sealer fills and checks it.
pub const TAG_LEN: usize = 16;

/// Frame kind byte of a BATCH frame.
pub const KIND_BATCH: u8 = 1;
/// Frame kind byte of an ACK frame.
pub const KIND_ACK: u8 = 2;
/// Frame kind byte of a RESUME frame.
pub const KIND_RESUME: u8 = 3;

/// Length of the frame length field.
const LEN_FIELD: usize = 4;
/// Length of a BATCH frame header: length field, kind, sequence number and
/// the number of the batch's first message. These bytes are the AAD when
/// sealing.
pub const BATCH_HEADER_LEN: usize = LEN_FIELD + 1 + 8 + 8;
/// Length of a whole ACK frame.
pub const ACK_FRAME_LEN: usize = LEN_FIELD + 1 + 8;
/// Length of a whole RESUME frame.
pub const RESUME_FRAME_LEN: usize = LEN_FIELD + 1 + 3 * 8;
/// Bytes a BATCH frame adds around its body: header (21) and tag (16).
pub const FRAME_OVERHEAD: usize = BATCH_HEADER_LEN + TAG_LEN;
/// Length of the message count at the start of a body.
pub(crate) const BODY_COUNT_LEN: usize = 4;
/// Length of the length prefix of each message in a body.
pub(crate) const BODY_LEN_PREFIX: usize = 4;

/// Where the parts of a frame written by [`encode_batch_frame`] lie in the
/// output buffer (indices into `out` after the call).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameSpans {
    /// The 21 header bytes (length, kind, sequence number, first message
    /// number): the AAD.
    pub aad: Range<usize>,
    /// The plaintext body, to be sealed in place.
    pub body: Range<usize>,
    /// The zero-filled tag, to be overwritten by the sealer.
    pub tag: Range<usize>,
}

/// The encoded body length of a batch of `messages`: 4 bytes of count plus
/// 4 bytes of length prefix and the payload per message.
pub fn body_len<M: AsRef<[u8]>>(messages: &[M]) -> usize {
    messages.iter().fold(BODY_COUNT_LEN, |acc, m| {
        acc + BODY_LEN_PREFIX + m.as_ref().len()
    })
}

/// The exact length of the BATCH frame [`encode_batch_frame`] writes for
/// `messages`, length field and tag included, for reserving buffers and for
/// memory accounting.
///
/// # Examples
///
/// ```
/// use qudag_batch::batch_frame_len;
///
/// // 37 bytes of frame + 4 bytes of count + (4 + 5) bytes per message
/// assert_eq!(batch_frame_len(&[b"hello", b"world"]), 37 + 4 + 2 * 9);
/// ```
pub fn batch_frame_len<M: AsRef<[u8]>>(messages: &[M]) -> usize {
    FRAME_OVERHEAD + body_len(messages)
}

/// Appends one BATCH frame to `out`, with the tag zero-filled, and returns
/// where its parts lie.
///
/// `seq` is the batch's sequence number on its connection (the nonce);
/// `first` is the session-wide number of its first message (message numbers
/// outlive connections, see `docs/PROTOCOL.md` §6).
///
/// The caller then seals `out[spans.body]` in place with `out[spans.aad]` as
/// associated data and writes the tag into `out[spans.tag]`. Reserves the
/// whole frame once; no per-message allocation.
///
/// # Panics
///
/// If the frame's length field would not fit a `u32` (more than about
/// 4 GiB of messages) or there are more than `u32::MAX` messages, or one is
/// longer than `u32::MAX`. Batches from a [`Batcher`](crate::Batcher) with a
/// valid configuration never do.
///
/// # Examples
///
/// ```
/// use bytes::BytesMut;
/// use qudag_batch::{encode_batch_frame, TAG_LEN};
///
/// let mut out = BytesMut::new();
/// let spans = encode_batch_frame(7, 300, &[&b"hi"[..]], &mut out);
/// assert_eq!(
///     &out[spans.aad.clone()],
///     &[0, 0, 0, 43, 1, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 1, 44]
/// );
/// assert_eq!(&out[spans.body.clone()], &[0, 0, 0, 1, 0, 0, 0, 2, b'h', b'i']);
/// assert_eq!(&out[spans.tag.clone()], &[0; TAG_LEN]);
/// ```
pub fn encode_batch_frame<M: AsRef<[u8]>>(
    seq: u64,
    first: u64,
    messages: &[M],
    out: &mut BytesMut,
) -> FrameSpans {
    let body = body_len(messages);
    let frame_len = FRAME_OVERHEAD + body;
    let length_field =
        u32::try_from(frame_len - LEN_FIELD).expect("batch frame length exceeds u32::MAX");
    let count = u32::try_from(messages.len()).expect("more than u32::MAX messages in a batch");
    out.reserve(frame_len);
    let start = out.len();
    out.put_u32(length_field);
    out.put_u8(KIND_BATCH);
    out.put_u64(seq);
    out.put_u64(first);
    out.put_u32(count);
    for m in messages {
        let m = m.as_ref();
        // cannot fail: the total length already fits a u32
        out.put_u32(m.len() as u32);
        out.put_slice(m);
    }
    out.put_bytes(0, TAG_LEN);
    let body_start = start + BATCH_HEADER_LEN;
    let tag_start = body_start + body;
    FrameSpans {
        aad: start..body_start,
        body: body_start..tag_start,
        tag: tag_start..tag_start + TAG_LEN,
    }
}

/// Appends one ACK frame to `out`: every message numbered below `next` was
/// delivered to the application.
///
/// # Examples
///
/// ```
/// use bytes::BytesMut;
/// use qudag_batch::encode_ack_frame;
///
/// let mut out = BytesMut::new();
/// encode_ack_frame(3, &mut out);
/// assert_eq!(&out[..], &[0, 0, 0, 9, 2, 0, 0, 0, 0, 0, 0, 0, 3]);
/// ```
pub fn encode_ack_frame(next: u64, out: &mut BytesMut) {
    out.reserve(ACK_FRAME_LEN);
    out.put_u32((ACK_FRAME_LEN - LEN_FIELD) as u32);
    out.put_u8(KIND_ACK);
    out.put_u64(next);
}

/// What a RESUME frame says: the first frame each side sends on a new
/// connection (`docs/PROTOCOL.md` §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Resume {
    /// The sender's incarnation: random, fresh at each start, never 0.
    pub incarnation: u64,
    /// The incarnation of the receiver that the sender holds delivery state
    /// for, or 0 if it holds none.
    pub known: u64,
    /// Every message of incarnation `known` numbered below this was delivered
    /// to the sender's application (0 when `known` is 0).
    pub next: u64,
}

/// Appends one RESUME frame to `out`.
///
/// # Examples
///
/// ```
/// use bytes::BytesMut;
/// use qudag_batch::{encode_resume_frame, Resume};
///
/// let mut out = BytesMut::new();
/// encode_resume_frame(&Resume { incarnation: 1, known: 2, next: 3 }, &mut out);
/// assert_eq!(out.len(), 29);
/// assert_eq!(&out[..5], &[0, 0, 0, 25, 3]);
/// ```
pub fn encode_resume_frame(resume: &Resume, out: &mut BytesMut) {
    out.reserve(RESUME_FRAME_LEN);
    out.put_u32((RESUME_FRAME_LEN - LEN_FIELD) as u32);
    out.put_u8(KIND_RESUME);
    out.put_u64(resume.incarnation);
    out.put_u64(resume.known);
    out.put_u64(resume.next);
}

/// Receiver-side limits for [`FrameDecoder`] and [`decode_body`].
///
/// Get the limits matching a sender's configuration from
/// [`BatchConfig::codec_limits`](crate::BatchConfig::codec_limits). Setters
/// take `&mut self` and return `&mut Self`; getters are named `get_*`.
/// Limits of 0 are allowed (they refuse everything they bound).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecLimits {
    max_frame_len: usize,
    max_messages: usize,
    max_message_len: usize,
}

impl Default for CodecLimits {
    /// The limits matching [`BatchConfig::default`](crate::BatchConfig):
    /// frames up to 1 MiB + 37 bytes, 128 messages, messages up to
    /// 1 MiB - 8 bytes.
    fn default() -> Self {
        Self {
            max_frame_len: DEFAULT_MAX_BYTES + FRAME_OVERHEAD,
            max_messages: DEFAULT_MAX_MESSAGES,
            max_message_len: DEFAULT_MAX_BYTES - MIN_MAX_BYTES,
        }
    }
}

impl CodecLimits {
    /// The longest frame accepted, in bytes, counting the whole frame
    /// including its 4-byte length field. A BATCH frame's body may be up to
    /// `max_frame_len - 37` bytes. Default: 1 MiB + 37.
    pub fn max_frame_len(&mut self, n: usize) -> &mut Self {
        self.max_frame_len = n;
        self
    }

    /// The most messages in one batch body. Default: 128.
    pub fn max_messages(&mut self, n: usize) -> &mut Self {
        self.max_messages = n;
        self
    }

    /// The longest message payload in a batch body, in bytes.
    /// Default: 1 MiB - 8.
    pub fn max_message_len(&mut self, n: usize) -> &mut Self {
        self.max_message_len = n;
        self
    }

    /// The configured [`max_frame_len`](Self::max_frame_len).
    pub fn get_max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// The configured [`max_messages`](Self::max_messages).
    pub fn get_max_messages(&self) -> usize {
        self.max_messages
    }

    /// The configured [`max_message_len`](Self::max_message_len).
    pub fn get_max_message_len(&self) -> usize {
        self.max_message_len
    }

    /// The longest batch body accepted: `max_frame_len - 37`.
    pub fn max_body_len(&self) -> usize {
        self.max_frame_len.saturating_sub(FRAME_OVERHEAD)
    }
}

/// Why received bytes are not a valid frame or body.
///
/// Every variant is a protocol violation by the peer: the connection should
/// be closed. Nothing is consumed from the input when decoding fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The length field announces a frame longer than
    /// [`CodecLimits::max_frame_len`]. Detected from the length field
    /// alone, before the rest of the frame is read or buffered.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// The announced frame length, length field included.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The length field announces a frame shorter than its kind requires
    /// (or too short to hold a kind byte).
    #[error("frame of {len} bytes is shorter than the minimum of {min}")]
    FrameTooShort {
        /// The announced frame length, length field included.
        len: usize,
        /// The minimum for the frame's kind.
        min: usize,
    },
    /// The kind byte names no known frame kind.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A body ends before its message count or a message length says it
    /// should.
    #[error("batch body is truncated")]
    Truncated,
    /// A body announces more messages than
    /// [`CodecLimits::max_messages`].
    #[error("batch of {count} messages exceeds the limit of {max}")]
    TooManyMessages {
        /// The announced count.
        count: u32,
        /// The limit.
        max: usize,
    },
    /// A message length prefix exceeds [`CodecLimits::max_message_len`].
    #[error("message of {len} bytes exceeds the limit of {max}")]
    MessageTooLarge {
        /// The announced message length.
        len: u32,
        /// The limit.
        max: usize,
    },
    /// Bytes follow the last message of a body, or the fixed payload of an
    /// ACK frame.
    #[error("{extra} unexpected trailing bytes")]
    TrailingBytes {
        /// How many bytes are left over.
        extra: usize,
    },
    /// A body passed to [`decode_body`] is longer than
    /// [`CodecLimits::max_body_len`].
    #[error("batch body of {len} bytes exceeds the limit of {max}")]
    BodyTooLarge {
        /// The body length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// One decoded frame.
///
/// This enum is exhaustive: a new frame kind is a new protocol version.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A BATCH frame, still sealed.
    Batch(SealedBatch),
    /// An ACK frame: every message numbered below `next` was delivered.
    Ack {
        /// The number of the first message not yet delivered.
        next: u64,
    },
    /// A RESUME frame.
    Resume(Resume),
}

/// A received BATCH frame whose body is still sealed.
///
/// Owns its slice of the receive buffer (split off, not copied). Open the body
/// in place with [`parts_mut`](Self::parts_mut), then take the plaintext
/// with [`into_body`](Self::into_body) and parse it with [`decode_body`].
#[derive(Debug, PartialEq, Eq)]
pub struct SealedBatch {
    seq: u64,
    first: u64,
    /// The frame without its tag: header then body.
    frame: BytesMut,
    tag: [u8; TAG_LEN],
}

impl SealedBatch {
    /// The batch's sequence number (the nonce for opening).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The number of the batch's first message (authenticated: part of the AAD).
    pub fn first(&self) -> u64 {
        self.first
    }

    /// The pieces the opener needs: the 21 header bytes to authenticate as
    /// AAD, the body to open in place, and the tag.
    pub fn parts_mut(&mut self) -> (&[u8], &mut [u8], &[u8; TAG_LEN]) {
        let (aad, body) = self.frame.split_at_mut(BATCH_HEADER_LEN);
        (aad, body, &self.tag)
    }

    /// The sealed (or, after opening in place, plaintext) body.
    pub fn body(&self) -> &[u8] {
        &self.frame[BATCH_HEADER_LEN..]
    }

    /// The whole frame length on the wire, length field and tag included.
    pub fn frame_len(&self) -> usize {
        self.frame.len() + TAG_LEN
    }

    /// The body as [`Bytes`], without copying: call after opening it in
    /// place, then pass it to [`decode_body`].
    pub fn into_body(mut self) -> Bytes {
        let _header = self.frame.split_to(BATCH_HEADER_LEN);
        self.frame.freeze()
    }
}

/// Takes frames off the front of a receive buffer, checking limits.
///
/// Stateless apart from its limits: after an error the stream is out of
/// sync and the connection should be closed.
///
/// # Examples
///
/// ```
/// use bytes::BytesMut;
/// use qudag_batch::{decode_body, encode_batch_frame, CodecLimits, Frame, FrameDecoder};
///
/// let mut wire = BytesMut::new();
/// encode_batch_frame(0, 0, &[&b"a"[..], &b"bc"[..]], &mut wire);
///
/// let limits = CodecLimits::default();
/// let mut decoder = FrameDecoder::new(limits.clone());
/// let mut partial = wire.split_to(10);
/// assert_eq!(decoder.decode(&mut partial)?, None); // needs more bytes
/// partial.unsplit(wire);
/// let Some(Frame::Batch(mut batch)) = decoder.decode(&mut partial)? else { panic!() };
/// let (_aad, _body, _tag) = batch.parts_mut(); // open in place here
/// let messages = decode_body(batch.into_body(), &limits)?;
/// assert_eq!(messages, [&b"a"[..], &b"bc"[..]]);
/// # Ok::<(), qudag_batch::DecodeError>(())
/// ```
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    limits: CodecLimits,
}

impl FrameDecoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: CodecLimits) -> Self {
        Self { limits }
    }

    /// The limits this decoder enforces.
    pub fn limits(&self) -> &CodecLimits {
        &self.limits
    }

    /// How many more bytes `buf` needs before [`decode`](Self::decode) can
    /// return a frame (or an error): 0 if it can make progress now.
    pub fn needed(&self, buf: &[u8]) -> usize {
        match read_u32(buf, 0) {
            None => LEN_FIELD - buf.len(),
            Some(len) => (LEN_FIELD as u64 + u64::from(len))
                .saturating_sub(buf.len() as u64)
                .try_into()
                .unwrap_or(usize::MAX),
        }
    }

    /// Takes one complete frame off the front of `buf` (with
    /// [`BytesMut::split_to`], no copy), or returns `Ok(None)` if more bytes
    /// are needed.
    ///
    /// The length field, and the kind byte when present, are checked against
    /// the limits before waiting for the rest; once the frame is known to be
    /// acceptable, `buf` is reserved to hold all of it.
    ///
    /// # Errors
    ///
    /// [`DecodeError::FrameTooLarge`], [`DecodeError::FrameTooShort`],
    /// [`DecodeError::UnknownKind`], or [`DecodeError::TrailingBytes`] for an
    /// ACK or RESUME frame longer than its fixed size. `buf` is left untouched.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        let Some(length_field) = read_u32(buf, 0) else {
            return Ok(None);
        };
        let frame_len = LEN_FIELD as u64 + u64::from(length_field);
        if frame_len > self.limits.max_frame_len as u64 {
            return Err(DecodeError::FrameTooLarge {
                len: frame_len,
                max: self.limits.max_frame_len,
            });
        }
        // fits usize: it is no larger than a usize limit
        let frame_len = frame_len as usize;
        if frame_len <= LEN_FIELD {
            return Err(DecodeError::FrameTooShort {
                len: frame_len,
                min: LEN_FIELD + 1,
            });
        }
        let Some(&kind) = buf.get(LEN_FIELD) else {
            return Ok(None);
        };
        match kind {
            KIND_BATCH => {
                let min = FRAME_OVERHEAD + BODY_COUNT_LEN;
                if frame_len < min {
                    return Err(DecodeError::FrameTooShort {
                        len: frame_len,
                        min,
                    });
                }
            }
            KIND_ACK | KIND_RESUME => {
                let exact = if kind == KIND_ACK {
                    ACK_FRAME_LEN
                } else {
                    RESUME_FRAME_LEN
                };
                if frame_len < exact {
                    return Err(DecodeError::FrameTooShort {
                        len: frame_len,
                        min: exact,
                    });
                }
                if frame_len > exact {
                    return Err(DecodeError::TrailingBytes {
                        extra: frame_len - exact,
                    });
                }
            }
            other => return Err(DecodeError::UnknownKind(other)),
        }
        if buf.len() < frame_len {
            buf.reserve(frame_len - buf.len());
            return Ok(None);
        }
        let mut frame = buf.split_to(frame_len);
        // lengths checked above: every read below is in bounds
        let word = |i: usize| read_u64(&frame, LEN_FIELD + 1 + 8 * i).unwrap_or_default();
        let seq = word(0);
        if kind == KIND_ACK {
            return Ok(Some(Frame::Ack { next: seq }));
        }
        if kind == KIND_RESUME {
            return Ok(Some(Frame::Resume(Resume {
                incarnation: seq,
                known: word(1),
                next: word(2),
            })));
        }
        let first = word(1);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&frame[frame_len - TAG_LEN..]);
        frame.truncate(frame_len - TAG_LEN);
        Ok(Some(Frame::Batch(SealedBatch {
            seq,
            first,
            frame,
            tag,
        })))
    }
}

/// Parses an opened batch body into its messages, as zero-copy slices of
/// `body`.
///
/// Checks the body length, the message count and every message length
/// against `limits` (and against the bytes actually present) before
/// allocating anything for them.
///
/// # Errors
///
/// [`DecodeError::BodyTooLarge`], [`DecodeError::TooManyMessages`],
/// [`DecodeError::MessageTooLarge`], [`DecodeError::Truncated`] if the body
/// ends early, [`DecodeError::TrailingBytes`] if bytes follow the last
/// message.
///
/// # Examples
///
/// ```
/// use bytes::Bytes;
/// use qudag_batch::{decode_body, CodecLimits, DecodeError};
///
/// let body = Bytes::from_static(&[0, 0, 0, 1, 0, 0, 0, 2, b'h', b'i']);
/// assert_eq!(decode_body(body.clone(), &CodecLimits::default())?, [&b"hi"[..]]);
/// assert_eq!(
///     decode_body(body.slice(..9), &CodecLimits::default()),
///     Err(DecodeError::Truncated)
/// );
/// # Ok::<(), DecodeError>(())
/// ```
pub fn decode_body(body: Bytes, limits: &CodecLimits) -> Result<Vec<Bytes>, DecodeError> {
    let max_body = limits.max_body_len();
    if body.len() > max_body {
        return Err(DecodeError::BodyTooLarge {
            len: body.len(),
            max: max_body,
        });
    }
    let count = read_u32(&body, 0).ok_or(DecodeError::Truncated)?;
    if count as u64 > limits.max_messages as u64 {
        return Err(DecodeError::TooManyMessages {
            count,
            max: limits.max_messages,
        });
    }
    let count = count as usize;
    let mut pos = BODY_COUNT_LEN;
    // each message takes at least its length prefix
    if (body.len() - pos) / BODY_LEN_PREFIX < count {
        return Err(DecodeError::Truncated);
    }
    let mut messages = Vec::with_capacity(count);
    for _ in 0..count {
        let len = read_u32(&body, pos).ok_or(DecodeError::Truncated)?;
        if len as u64 > limits.max_message_len as u64 {
            return Err(DecodeError::MessageTooLarge {
                len,
                max: limits.max_message_len,
            });
        }
        pos += BODY_LEN_PREFIX;
        let len = len as usize;
        if body.len() - pos < len {
            return Err(DecodeError::Truncated);
        }
        messages.push(body.slice(pos..pos + len));
        pos += len;
    }
    if pos != body.len() {
        return Err(DecodeError::TrailingBytes {
            extra: body.len() - pos,
        });
    }
    Ok(messages)
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    let mut array = [0u8; 4];
    array.copy_from_slice(bytes);
    Some(u32::from_be_bytes(array))
}

fn read_u64(buf: &[u8], at: usize) -> Option<u64> {
    let bytes = buf.get(at..at.checked_add(8)?)?;
    let mut array = [0u8; 8];
    array.copy_from_slice(bytes);
    Some(u64::from_be_bytes(array))
}
