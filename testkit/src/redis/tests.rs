//! The launcher against a real redis-server (Debian's, at [`REDIS_SERVER_BIN`]) and against a
//! stand-in that fails its first connections, and the client's stream commands.

use std::io::{Read, Write};
use std::path::Path;

use super::*;

#[test]
fn a_durable_server_keeps_acknowledged_entries_across_a_crash() {
    let mut server = RedisServer::start("testkit-durable");
    assert!(!server.version.is_empty());
    let mut client = server.client();
    let first = client.xadd("s", &[("topic", "t"), ("data", "one")]);
    let second = client.xadd_bytes("s", &[(b"topic", b"t"), (b"data", b"\xfftwo")]);
    server.kill();
    assert!(!server.ping());
    server.restart();
    let mut client = server.client();
    assert_eq!(client.xlen("s"), 2);
    let entries = client.xrange("s", "-", "+");
    assert_eq!(entries[0].id, first);
    assert_eq!(entries[0].field("data"), Some("one"));
    assert_eq!(entries[0].field("nope"), None);
    assert_eq!(client.xrevrange_count("s", "+", "-", 1)[0].id, second);
    assert_eq!(entries[1].field("data"), Some("\u{fffd}two"));
    assert_eq!(client.xrange_count("s", "-", "+", 1).len(), 1);
    let first_entry: Option<(String, Value)> = client.xinfo_stream("s", "first-entry");
    assert_eq!(first_entry.map(|(id, _)| id), Some(first));
    let answered: String = client.command(&["XADD", "s2", "9-9", "data", "x"]);
    assert_eq!(answered, "9-9");
    assert!(client
        .try_command::<String>(&[b"XADD", b"s2", b"1-1", b"a", b"b"])
        .is_err());
    let (pid, dir) = (server.pid(), server.dir.clone());
    drop(server);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert!(!dir.exists());
}

#[test]
fn start_up_retries_after_io_errors() {
    // A stand-in redis that hangs up on the first connection, answers garbage on the second,
    // and only then behaves (the `redis` crate opens with two `CLIENT SETINFO`, then PING and
    // INFO follow).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let fake = std::thread::spawn(move || {
        let mut request = [0u8; 1024];
        drop(listener.accept().unwrap());
        let (mut conn, _) = listener.accept().unwrap();
        let _ = conn.read(&mut request);
        conn.write_all(b"?\r\n").unwrap();
        drop(conn);
        let (mut conn, _) = listener.accept().unwrap();
        let _ = conn.read(&mut request);
        conn.write_all(b"+OK\r\n+OK\r\n").unwrap();
        let _ = conn.read(&mut request);
        conn.write_all(b"+PONG\r\n").unwrap();
        let _ = conn.read(&mut request);
        let info = "# Server\r\nredis_version:7.0.15\r\n";
        write!(conn, "${}\r\n{info}\r\n", info.len()).unwrap();
    });
    let dir = std::env::temp_dir().join(format!("testkit-redis-fake-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let child = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = child.id();
    let mut server = RedisServer {
        child: Some(child),
        options: Options::new("fake"),
        port,
        dir: dir.clone(),
        version: String::new(),
    };
    server.wait_ready().unwrap();
    assert_eq!(server.version, "7.0.15");
    fake.join().unwrap();
    drop(server);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert!(!dir.exists());
}

#[test]
fn info_fields() {
    let info = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n";
    assert_eq!(info_field(info, "redis_version").as_deref(), Some("7.0.15"));
    assert_eq!(info_field(info, "nope"), None);
}
