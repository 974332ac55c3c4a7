//! Socket setup with `socket2` (one listening socket per address, shared by every event
//! loop) and the one place where `io::Result`s are classified, so a failing socket only
//! ever closes itself.

use std::io::{self, ErrorKind, IoSlice};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};

/// Pending connections the kernel queues per listener before accept. Connect storms of
/// thousands are normal for an SSE server after a restart or a proxy reload.
const BACKLOG: i32 = 4096;

/// Binds a non-blocking listener and returns one handle to it per event loop (`loops`
/// duplicates of one descriptor; each loop registers its own with its own poller and they
/// race to accept).
///
/// Deliberately without `SO_REUSEPORT`: with it a second process (another herald, or
/// anything else run by the same user) could bind the same address and silently take half
/// the connections and publishes. Without it the bind itself is the check, atomic in the
/// kernel, so there is no window between a probe and the real bind, and port 0 needs no
/// special case. `SO_REUSEADDR` stays: on Linux it only allows binding over connections in
/// `TIME_WAIT` left by a previous run, never over a live listener.
///
/// A bind refused with `AddrInUse` comes back as that error kind, for the caller to name
/// the address.
pub(crate) fn listen(addr: SocketAddr, loops: usize) -> io::Result<Vec<mio::net::TcpListener>> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    let mut handles = Vec::with_capacity(loops);
    for _ in 1..loops {
        handles.push(mio::net::TcpListener::from_std(socket.try_clone()?.into()));
    }
    handles.push(mio::net::TcpListener::from_std(socket.into()));
    Ok(handles)
}

/// Heartbeat intervals that data may stay unacknowledged (or a zero window unopened)
/// before the kernel aborts the connection (`TCP_USER_TIMEOUT`). A stream is sent a
/// heartbeat after one quiet interval, so a peer that vanished without FIN or RST (power
/// loss, a dropped NAT entry) is closed within about this many intervals plus one, instead
/// of the kernel's ~15 minutes of retransmissions. Four leaves room for a lost segment or
/// two on a slow path, and lets the slow-consumer rule (no bytes taken for two intervals
/// while a write is blocked, checked when the stream's timer fires, so up to three) close
/// a blocked stream first, as a slow consumer, not as a failed socket.
const USER_TIMEOUT_HEARTBEATS: u32 = 4;
const _: () = assert!(USER_TIMEOUT_HEARTBEATS as u64 > crate::conn::STALLED_HEARTBEATS + 1);

/// Keepalive probes sent, one every third of a heartbeat interval, after a heartbeat
/// interval with nothing in flight; an idle connection whose peer is gone is closed about
/// two intervals later (with `TCP_USER_TIMEOUT` set, Linux ends it once that much time has
/// passed without an answer).
const KEEPALIVE_PROBES: u32 = 3;

/// The shortest `TCP_USER_TIMEOUT`: with sub-second heartbeats (tests use them; no real
/// deployment does), the timer wheel's 100 ms tick is a large share of an interval, and
/// the kernel could abort a blocked stream before the slow-consumer rule closes it.
const USER_TIMEOUT_MIN: Duration = Duration::from_secs(2);

/// The kernel's keepalive timers count whole seconds.
const KEEPALIVE_SECS_MIN: Duration = Duration::from_secs(1);

// The longest heartbeat must fit the kernel's ranges: `TCP_USER_TIMEOUT` is a `u32` of
// milliseconds, `TCP_KEEPIDLE` at most 32,767 seconds.
const _: () =
    assert!(crate::config::TIMER_MS_MAX * USER_TIMEOUT_HEARTBEATS as u64 <= u32::MAX as u64);
const _: () = assert!(crate::config::TIMER_MS_MAX / 1_000 <= 32_767);

/// Sets up an accepted connection: `TCP_NODELAY` (frames are small and should leave at
/// once), and dead-peer detection scaled to `heartbeat`: `TCP_USER_TIMEOUT` of
/// [`USER_TIMEOUT_HEARTBEATS`] intervals (at least [`USER_TIMEOUT_MIN`]) and TCP keepalive (idle one interval, then
/// [`KEEPALIVE_PROBES`] probes a third of an interval apart, at least a second each).
/// Options that cannot be set are returned as an error for the caller to log; the
/// connection stays usable without them.
pub(crate) fn tune(stream: &mio::net::TcpStream, heartbeat: Duration) -> io::Result<()> {
    let socket = SockRef::from(stream);
    socket.set_nodelay(true)?;
    socket.set_tcp_user_timeout(Some(
        (heartbeat * USER_TIMEOUT_HEARTBEATS).max(USER_TIMEOUT_MIN),
    ))?;
    let keepalive = TcpKeepalive::new()
        .with_time(heartbeat.max(KEEPALIVE_SECS_MIN))
        .with_interval((heartbeat / 3).max(KEEPALIVE_SECS_MIN))
        .with_retries(KEEPALIVE_PROBES);
    socket.set_tcp_keepalive(&keepalive)
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

/// Writes `slices` to a connected socket with `send` (one slice) or `sendmsg` (several),
/// with `MSG_NOSIGNAL`, so a peer gone away is `EPIPE` and never `SIGPIPE`, whatever the
/// embedding program does with that signal. The socket calls skip the file layer that
/// `writev` goes through (`vfs_writev`, `fdget_pos`), which cost about a microsecond per
/// delivery on loopback (BENCHMARKS.md, "Writing with send").
pub(crate) fn send_slices<S: AsFd>(socket: &S, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    let socket = SockRef::from(socket);
    match slices {
        [one] => socket.send_with_flags(one, libc::MSG_NOSIGNAL),
        _ => socket.send_vectored_with_flags(slices, libc::MSG_NOSIGNAL),
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

    /// One slice goes by `send`, several by `sendmsg`; both arrive whole and in order, and
    /// a peer that closed is an error (`EPIPE` or a reset), not a signal.
    #[test]
    fn slices_are_sent_whole_and_in_order() {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sender = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut receiver, _) = listener.accept().unwrap();
        let one = [IoSlice::new(b"id: 1\n\n")];
        assert_eq!(send_slices(&sender, &one).unwrap(), 7);
        let several = [IoSlice::new(b"id: 2\n\n"), IoSlice::new(b"id: 3\n\n")];
        assert_eq!(send_slices(&sender, &several).unwrap(), 14);
        let mut received = [0; 21];
        receiver.read_exact(&mut received).unwrap();
        assert_eq!(&received, b"id: 1\n\nid: 2\n\nid: 3\n\n");
        drop(receiver);
        let gone = (0..100).find_map(|_| send_slices(&sender, &one).err());
        let kind = gone.expect("writes to a closed peer fail").kind();
        assert!(
            matches!(kind, ErrorKind::BrokenPipe | ErrorKind::ConnectionReset),
            "{kind:?}"
        );
    }

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
    fn accepted_connections_get_dead_peer_detection_scaled_to_the_heartbeat() {
        let listener = listen("127.0.0.1:0".parse().unwrap(), 1).unwrap().remove(0);
        let addr = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let accepted = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("accept: {e}"),
            }
        };
        tune(&accepted, Duration::from_secs(15)).unwrap();
        let socket = SockRef::from(&accepted);
        assert!(socket.nodelay().unwrap());
        assert_eq!(
            socket.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(60))
        );
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.keepalive_time().unwrap(), Duration::from_secs(15));
        assert_eq!(socket.keepalive_interval().unwrap(), Duration::from_secs(5));
        assert_eq!(socket.keepalive_retries().unwrap(), KEEPALIVE_PROBES);
        // Short heartbeats keep the kernel's whole-second minimum for keepalive.
        tune(&accepted, Duration::from_millis(200)).unwrap();
        assert_eq!(socket.tcp_user_timeout().unwrap(), Some(USER_TIMEOUT_MIN));
        assert_eq!(socket.keepalive_time().unwrap(), KEEPALIVE_SECS_MIN);
        assert_eq!(socket.keepalive_interval().unwrap(), KEEPALIVE_SECS_MIN);
    }

    #[test]
    fn every_loop_gets_a_handle_to_one_socket_and_a_second_bind_is_refused() {
        let handles = listen("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        assert_eq!(handles.len(), 3);
        let addr = handles[0].local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        for handle in &handles {
            assert_eq!(handle.local_addr().unwrap(), addr);
        }
        let second = listen(addr, 1).map(|_| ());
        assert_eq!(
            second.map_err(|e| e.kind()),
            Err(ErrorKind::AddrInUse),
            "a second listener on {addr}"
        );
    }
}
