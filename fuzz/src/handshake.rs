//! The handshake both ways: the server reading a raw hello (length prefix, then payload) and decoding it, and the
//! client decoding a hostile server's welcome and the device facts after it.
//!
//! Asserts: a hello longer than the server's limit is refused before its payload is read; an accepted hello's
//! credential is exactly the bytes sent and within `MAX_CREDENTIAL`, and re-encodes to the same payload; an
//! accepted welcome tail has the announced number of devices, each readable as text without panicking.

use arbitrary::{Arbitrary, Unstructured};
use vgpu_dataplane::handshake::*;
use zerocopy::FromBytes;

/// The server's limit on a raw hello: the fixed part and the largest credential.
const MAX_HELLO: usize = std::mem::size_of::<Hello>() + MAX_CREDENTIAL;

#[derive(Debug, Arbitrary)]
struct Input {
    hello_stream: Vec<u8>,
    welcome: Vec<u8>,
}

pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    server_reads_hello(&input.hello_stream);
    client_reads_welcome(&input.welcome);
}

fn server_reads_hello(stream: &[u8]) {
    let mut reader = std::io::Cursor::new(stream);
    let payload = match vgpu_transports::read_raw_hello(&mut reader, MAX_HELLO) {
        Ok(p) => p,
        Err(_) => {
            // Refused or cut short: never more than the length prefix and a bounded payload were consumed.
            assert!(reader.position() as usize <= 4 + MAX_HELLO);
            return;
        }
    };
    assert!(payload.len() <= MAX_HELLO);
    assert_eq!(reader.position() as usize, 4 + payload.len(), "read past the hello");
    let Ok((hello, credential)) = decode_hello(&payload) else {
        return;
    };
    assert!(credential.len() <= MAX_CREDENTIAL);
    assert_eq!(credential.len(), hello.credential_len as usize);
    let framed = encode_hello(&hello, &credential);
    assert_eq!(
        &framed[4..],
        &payload[..],
        "an accepted hello re-encodes to other bytes"
    );
}

fn client_reads_welcome(bytes: &[u8]) {
    let Ok((welcome, tail)) = Welcome::read_from_prefix(bytes) else {
        return;
    };
    let Ok(len) = welcome_tail_len(&welcome) else {
        return;
    };
    let max = MAX_DEVICES as usize * std::mem::size_of::<DeviceFacts>() + MAX_MESSAGE as usize;
    assert!(len <= max, "welcome announces {len} bytes");
    let Ok((devices, message)) = decode_welcome_tail(&welcome, tail) else {
        return;
    };
    assert_eq!(devices.len(), welcome.device_count as usize);
    assert!(message.len() <= 3 * MAX_MESSAGE as usize);
    for d in &devices {
        let _ = (d.name_str(), d.uuid_string());
        for attr in 0..DEVICE_ATTR_SLOTS + 2 {
            let _ = d.attr(attr);
        }
    }
}
