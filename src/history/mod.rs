//! One event loop's history, sans-io: each topic's bounded ring of frames, the loop's
//! topic table with its subscriber index and history budget, and the merge that reads a
//! subscriber's topics as one stream. No I/O here; the loop appends and the streams read.

pub(crate) mod merge;
pub(crate) mod ring;
pub(crate) mod topics;
