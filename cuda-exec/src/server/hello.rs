//! Before authentication: a connection's hello read within one deadline and a size bound, and why a
//! connection may be turned away before it is read.

use super::*;

/// Why a connection is turned away before its hello is read.
pub(super) enum EarlyRefusal {
    LockedOut(Duration),
    Busy,
}

/// The largest hello a client may send.
pub(super) const MAX_HELLO: usize = std::mem::size_of::<Hello>() + MAX_CREDENTIAL;

/// Sockets whose read timeout can be set (the hello is read under one deadline).
pub(super) trait TimedRead {
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()>;
}
impl TimedRead for TcpStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        TcpStream::set_read_timeout(self, t)
    }
}
impl TimedRead for UnixStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        UnixStream::set_read_timeout(self, t)
    }
}

/// Reads from a socket until a deadline for the whole exchange: each read may wait only for what is left, so
/// a client trickling a byte at a time cannot stretch it.
struct UntilDeadline<'a, S> {
    socket: &'a S,
    deadline: Instant,
}

impl<S: TimedRead> Read for UntilDeadline<'_, S>
where
    for<'b> &'b S: Read,
{
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the hello did not arrive in time",
            ));
        }
        self.socket.set_read_timeout(Some(left))?;
        let mut s = self.socket;
        s.read(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "the hello did not arrive in time")
            }
            _ => e,
        })
    }
}

/// Reads a raw hello under a deadline and clears the socket's timeout again (the worker inherits the socket).
pub(super) fn read_hello_by<S: TimedRead>(socket: &S, deadline: Instant) -> std::io::Result<Vec<u8>>
where
    for<'b> &'b S: Read,
{
    let hello = read_raw_hello(&mut UntilDeadline { socket, deadline }, MAX_HELLO);
    socket.set_read_timeout(None)?;
    hello
}

pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
