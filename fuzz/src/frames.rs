//! Frames both ways: request headers as the server checks them, function tables as the client decodes them, and
//! the client's channel reading a hostile server's reply stream (results, pushed copies, printed output).
//!
//! Asserts: an accepted header names an operation whose body fits inside the frame; a decoded function table
//! re-encodes to an identical table and keeps every parameter inside the argument buffer; the client's channel
//! never commits memory a reply only announced, never writes outside the landing places the app registered, and
//! once it reports the server lost it stays lost.

use arbitrary::{Arbitrary, Unstructured};
use bytes::BytesMut;
use cuda::fuzzing::{pending_clear, pending_register, Channel, Landing, Server};
use vgpu_dataplane::cuerr::CUDA_ERROR_DEVICE_UNAVAILABLE;
use vgpu_dataplane::wire::*;
use zerocopy::FromBytes;

use crate::script::{ServerFrame, ServerScript};

#[derive(Debug, Arbitrary)]
enum ClientAction {
    /// A synchronous call whose reply has a fixed body (`cuMemAlloc`), with or without room for a reply tail.
    Call { with_tail: bool },
    /// `cuMemcpyDtoH` into a buffer of this many bytes.
    CopyToHost(u16),
    /// Registers where an async copy's bytes land: `rows` rows of `width` bytes, `pitch` = width + extra.
    Landing { width: u16, rows: u8, pitch_extra: u8 },
}

#[derive(Debug, Arbitrary)]
struct Input {
    header: [u8; 16],
    table: Vec<u8>,
    actions: Vec<ClientAction>,
    frames: Vec<ServerFrame>,
}

pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    request_header(&input.header);
    function_table(&input.table);
    client_channel(input.actions, input.frames);
}

fn request_header(bytes: &[u8; 16]) {
    let Ok(header) = RequestHeader::read_from_bytes(&bytes[..]) else {
        unreachable!("a request header is 16 bytes of integers");
    };
    if let Ok(op) = check_request_header(&header) {
        assert_eq!(header.body_len as usize, op.body_len());
        assert!(header.body_len <= header.len, "accepted a body longer than its frame");
        assert!(op.body_len() <= MAX_BODY);
    }
}

fn function_table(bytes: &[u8]) {
    let Ok(table) = decode_function_table(bytes) else {
        return;
    };
    for f in &table {
        assert!(
            f.args_size() <= MAX_ARGS,
            "{}: parameters reach byte {}",
            f.name,
            f.args_size()
        );
    }
    let mut again = BytesMut::new();
    encode_function_table(&mut again, &table);
    assert_eq!(&again[..], bytes, "a decoded table re-encodes to other bytes");
}

fn client_channel(actions: Vec<ClientAction>, frames: Vec<ServerFrame>) {
    let mut channel = Channel::new(Box::new(ServerScript::new(frames)));
    // The server record a call is numbered against; its own channel is never used here.
    let server = Server::for_fuzzing(Channel::new(Box::new(ServerScript::new(Vec::new()))));
    // Landing places stay alive (and are only ever written within) until the run ends.
    let mut landings: Vec<(Vec<u8>, usize)> = Vec::new();
    let mut lost = false;
    for action in actions.into_iter().take(64) {
        let outcome = match action {
            ClientAction::Call { with_tail } => {
                let mut tail = Vec::new();
                let r = channel.call(
                    &server,
                    0,
                    &MemAlloc { size: 4096 },
                    &[],
                    with_tail.then_some(&mut tail),
                );
                assert!(tail.len() <= 256 << 20, "reply tail of {} bytes accepted", tail.len());
                Some(r.map(|_| ()))
            }
            ClientAction::CopyToHost(len) => {
                let mut dst = vec![0u8; usize::from(len)];
                let call = MemcpyDtoH {
                    src: DevicePtr(0x1000),
                    size: u64::from(len),
                };
                Some(channel.copy_to_host(&server, 0, &call, &mut dst))
            }
            ClientAction::Landing {
                width,
                rows,
                pitch_extra,
            } => {
                let (width, rows) = (usize::from(width), usize::from(rows.min(16)));
                let pitch = width + usize::from(pitch_extra);
                // Guard bytes after the last row: a write past the landing shows up there.
                let span = pitch * rows.saturating_sub(1) + width;
                let mut buf = vec![0u8; span + 64];
                pending_register(Landing {
                    addr: buf.as_mut_ptr() as usize,
                    pitch,
                    width,
                    rows,
                    server: 0,
                });
                landings.push((buf, span));
                None
            }
        };
        let Some(outcome) = outcome else { continue };
        if lost {
            assert_eq!(outcome, Err(CUDA_ERROR_DEVICE_UNAVAILABLE), "a lost channel answered");
        }
        // A hostile server may answer DEVICE_UNAVAILABLE as an ordinary status: lost is the channel's own verdict.
        lost |= channel.is_lost();
    }
    pending_clear();
    for (buf, span) in &landings {
        assert!(
            buf[*span..].iter().all(|&b| b == 0),
            "a pushed copy wrote past its landing place"
        );
    }
}
