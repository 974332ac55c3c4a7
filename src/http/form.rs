//! `application/x-www-form-urlencoded` pairs, for query strings and form bodies, decoded
//! strictly: bytes that are not UTF-8 once percent-decoded (`%FF`) are an error, where the
//! URL Standard's parser (and the `form_urlencoded` crate) would turn them into U+FFFD and
//! publish or match something the client never sent. No I/O here.

use std::borrow::Cow;

/// A name or value that is not UTF-8 once percent-decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NotUtf8;

/// One decoded `name=value` pair.
pub(crate) type Pair<'a> = (Cow<'a, str>, Cow<'a, str>);

/// The pairs of `input`, split as the URL Standard does (on `&`, skipping empty pieces; the
/// name ends at the first `=`; `+` is a space; then percent-decoding, where a `%` without two
/// hex digits stays as it is), each decoded strictly.
pub(crate) fn pairs(input: &[u8]) -> impl Iterator<Item = Result<Pair<'_>, NotUtf8>> {
    input
        .split(|&b| b == b'&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| {
            let (name, value) = match piece.iter().position(|&b| b == b'=') {
                Some(at) => (&piece[..at], &piece[at + 1..]),
                None => (piece, &piece[piece.len()..]),
            };
            Ok((decode(name)?, decode(value)?))
        })
}

fn decode(raw: &[u8]) -> Result<Cow<'_, str>, NotUtf8> {
    if !raw.iter().any(|&b| b == b'+' || b == b'%') {
        return std::str::from_utf8(raw)
            .map(Cow::Borrowed)
            .map_err(|_| NotUtf8);
    }
    let spaced: Vec<u8> = raw
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    let decoded: Vec<u8> = percent_encoding::percent_decode(&spaced).collect();
    String::from_utf8(decoded)
        .map(Cow::Owned)
        .map_err(|_| NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(input: &str) -> Result<Vec<(String, String)>, NotUtf8> {
        pairs(input.as_bytes())
            .map(|pair| pair.map(|(n, v)| (n.into_owned(), v.into_owned())))
            .collect()
    }

    #[test]
    fn agrees_with_form_urlencoded_on_utf8() {
        for input in [
            "",
            "a=1&&b=2&",
            "topic=a&topic=b%2Fc&data=x+y%0A%E2%82%AC",
            "novalue&=empty&k=v=w",
            "bad=%zz&half=%4&pct=%",
            "%74opic=a",
            "é=ü",
        ] {
            let expected: Vec<(String, String)> = form_urlencoded::parse(input.as_bytes())
                .map(|(n, v)| (n.into_owned(), v.into_owned()))
                .collect();
            assert_eq!(decoded(input), Ok(expected), "{input:?}");
        }
    }

    #[test]
    fn refuses_what_would_become_u_fffd() {
        for input in [
            "data=%FF",
            "%FF=x",
            "topic=a%C3",
            "event=%C3%28",
            "id=%ED%A0%80",
            "x=%F4%90%80%80",
        ] {
            assert_eq!(decoded(input), Err(NotUtf8), "{input:?}");
        }
        assert_eq!(pairs(b"data=\xff").next(), Some(Err(NotUtf8)));
    }
}
