//! What the access log (`--access-log`) keeps of a request, sans-io: the request as its
//! head arrived ([`RequestLine`]) and, once answered, its status and size ([`Answered`]).
//! The exchange records these only when the loop asked it to; the loop logs them (and a
//! stream's line when the stream closes). No logging and no clock here.
//!
//! Only what cannot carry a secret is kept: the client address, the method, the path
//! without its query (tokens travel in the query, headers and cookies, none of which is
//! kept) and the topics.

use std::net::IpAddr;

use crate::http::head::Method;

/// Bytes of a path the access log keeps; a longer (unknown, hostile) path is cut at a
/// character boundary and marked with `...`, so one request cannot make a huge line.
pub(crate) const PATH_LOGGED_BYTES_MAX: usize = 256;

/// A request as its head arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RequestLine {
    /// The client: the peer, or the address a trusted proxy names (the address the
    /// per-address limit counts, before IPv6 grouping).
    pub client: IpAddr,
    /// The method's name, `-` when no head was read.
    pub method: &'static str,
    /// The path without the query (at most [`PATH_LOGGED_BYTES_MAX`]); `-` when no head
    /// was read.
    pub path: Box<str>,
    /// The subscription's or publish's topics, comma-separated; empty for other routes.
    pub topics: Box<str>,
    /// Loop time (ms) the head arrived; `None` for a refusal without a head (its duration
    /// is 0).
    pub started_ms: Option<u64>,
}

impl RequestLine {
    /// The line of a request whose head was read at loop time `now_ms`.
    pub(crate) fn new(client: IpAddr, method: Method, path: &str, now_ms: u64) -> Self {
        RequestLine {
            client,
            method: method.name(),
            path: bounded_path(path),
            topics: Box::from(""),
            started_ms: Some(now_ms),
        }
    }

    /// The line of a refusal that came before any head (a timeout, a malformed head, a
    /// refusal at accept).
    pub(crate) fn headless(client: IpAddr) -> Self {
        RequestLine {
            client,
            method: "-",
            path: Box::from("-"),
            topics: Box::from(""),
            started_ms: None,
        }
    }

    /// Records the topics a request names.
    pub(crate) fn set_topics<'t>(&mut self, topics: impl IntoIterator<Item = &'t str>) {
        let mut joined = String::new();
        for topic in topics {
            if !joined.is_empty() {
                joined.push(',');
            }
            joined.push_str(topic);
        }
        self.topics = joined.into_boxed_str();
    }
}

/// A request answered: its line, the status and the answer's size in bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Answered {
    /// The request.
    pub line: RequestLine,
    /// The status sent.
    pub status: u16,
    /// Bytes of the answer, head included.
    pub bytes: usize,
}

/// `path`, cut to [`PATH_LOGGED_BYTES_MAX`] bytes at a character boundary.
fn bounded_path(path: &str) -> Box<str> {
    if path.len() <= PATH_LOGGED_BYTES_MAX {
        return Box::from(path);
    }
    let mut end = PATH_LOGGED_BYTES_MAX;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &path[..end]).into_boxed_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_paths_are_cut_at_a_character_boundary() {
        assert_eq!(&*bounded_path("/events"), "/events");
        let long = format!("/{}", "é".repeat(200));
        let cut = bounded_path(&long);
        assert!(cut.ends_with("..."));
        assert!(cut.len() <= PATH_LOGGED_BYTES_MAX + 3);
        assert!(long.starts_with(cut.trim_end_matches("...")));
    }

    #[test]
    fn topics_are_comma_separated() {
        let client = IpAddr::from([127, 0, 0, 1]);
        let mut line = RequestLine::new(client, Method::Get, "/events", 5);
        line.set_topics(["a", "b/c"]);
        assert_eq!(&*line.topics, "a,b/c");
        assert_eq!(line.method, "GET");
        assert_eq!(RequestLine::headless(client).started_ms, None);
    }
}
