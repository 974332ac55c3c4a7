//! HTTP/1.x for herald: request heads ([`head`]), routes and query parameters ([`route`]),
//! strict form decoding ([`form`]), and response bytes ([`answer`]). Everything here is
//! sans-io: bytes in, bytes or errors out.

pub(crate) mod answer;
pub(crate) mod form;
pub(crate) mod head;
pub(crate) mod route;
