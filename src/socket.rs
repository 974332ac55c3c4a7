//! Socket setup with `socket2` (one `SO_REUSEPORT` listener per event loop) and the one
//! place where `io::Result`s are classified, so a failing socket only ever closes itself.

use std::io::{self, ErrorKind};
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Pending connections the kernel queues per listener before accept. Connect storms of
/// thousands are normal for an SSE server after a restart or a proxy reload.
const BACKLOG: i32 = 4096;

/// Binds a non-blocking listener with `SO_REUSEPORT`, so every loop can bind the same
/// address and the kernel spreads new connections across them.
pub(crate) fn listen(addr: SocketAddr) -> io::Result<mio::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}

/// What an I/O call came to, for a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IoOutcome {
    /// Moved this many bytes (never 0).
    Done(usize),
    /// Nothing more until the next readiness event.
    WouldBlock,
    /// The peer closed or reset the connection: an ordinary end.
    PeerClosed,
    /// Any other error; the connection is closed and the kind logged at debug.
    Failed(ErrorKind),
}

/// Classifies one read or write result; `Interrupted` is reported as `WouldBlock`'s
/// sibling by callers retrying, so it never reaches here.
pub(crate) fn classify(result: io::Result<usize>) -> IoOutcome {
    match result {
        Ok(0) => IoOutcome::PeerClosed,
        Ok(n) => IoOutcome::Done(n),
        Err(e) => match e.kind() {
            ErrorKind::WouldBlock => IoOutcome::WouldBlock,
            ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof => IoOutcome::PeerClosed,
            kind => IoOutcome::Failed(kind),
        },
    }
}

/// Runs an I/O call, retrying on `Interrupted`, and classifies the result.
pub(crate) fn io(mut call: impl FnMut() -> io::Result<usize>) -> IoOutcome {
    loop {
        match call() {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            result => return classify(result),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(classify(Ok(0)), IoOutcome::PeerClosed);
        assert_eq!(classify(Ok(5)), IoOutcome::Done(5));
        assert_eq!(
            classify(Err(ErrorKind::WouldBlock.into())),
            IoOutcome::WouldBlock
        );
        assert_eq!(
            classify(Err(ErrorKind::BrokenPipe.into())),
            IoOutcome::PeerClosed
        );
        assert_eq!(
            classify(Err(ErrorKind::PermissionDenied.into())),
            IoOutcome::Failed(ErrorKind::PermissionDenied)
        );
        let mut calls = 0;
        let outcome = io(|| {
            calls += 1;
            if calls == 1 {
                Err(ErrorKind::Interrupted.into())
            } else {
                Ok(3)
            }
        });
        assert_eq!((outcome, calls), (IoOutcome::Done(3), 2));
    }

    #[test]
    fn two_listeners_share_a_port() {
        let first = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let second = listen(addr).unwrap();
        assert_eq!(second.local_addr().unwrap(), addr);
    }
}
