#![allow(clippy::unwrap_used)]
//! The process around the server (issue 10 items 4, 5 and 14): one process per address, the
//! open-file limit raised and reported, and logging that never stops serving.

mod common;

use common::*;

use herald::{Error, Server};

#[test]
fn issue_10_the_library_refuses_an_address_another_server_holds() {
    let first = start(|_| {});
    let taken = first.local_addr();
    let mut config = test_config();
    config.listen = taken;
    match Server::start(config) {
        Err(Error::AddressInUse(addr)) => assert_eq!(addr, taken),
        Err(other) => panic!("expected AddressInUse({taken}), got {other}"),
        Ok(second) => panic!("a second server started on {}", second.local_addr()),
    }
    let mut config = test_config();
    config.publish_listen = Some(taken);
    match Server::start(config) {
        Err(Error::AddressInUse(addr)) => assert_eq!(addr, taken),
        Err(other) => panic!("expected AddressInUse({taken}) for publish_listen, got {other}"),
        Ok(_) => panic!("a publish listener shared {taken}"),
    }
    assert_healthy(taken, "after the second server was refused");
}
