//! The host side of the `vessel.agent.v1` conversation with vminitd.
//!
//! A connection splits into an [`AgentSender`] (cloneable; writes are
//! serialized by a mutex so the lifecycle and the control socket can both
//! send) and an [`AgentReceiver`] (one reader thread).

use agent_protocol::{
    decode_message, read_frame, write_message, FrameKind, GuestMessage, HostMessage, ProtocolError,
};
use std::io::BufReader;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use vessel_api::types::Stream;

/// Errors on the agent connection.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("Could not split the agent connection")]
    Split(#[source] std::io::Error),
    #[error("Sending to the guest agent failed")]
    Send(#[source] ProtocolError),
    #[error("Reading from the guest agent failed")]
    Receive(#[source] ProtocolError),
    #[error("The guest agent sent a {0:?} frame, which only the host may send")]
    UnexpectedFrame(FrameKind),
}

/// What the guest sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Output(Stream, Vec<u8>),
    Message(GuestMessage),
}

/// The write half; clones share one connection.
#[derive(Debug, Clone)]
pub struct AgentSender {
    stream: Arc<Mutex<UnixStream>>,
}

impl AgentSender {
    /// Send one control message.
    pub fn send(&self, msg: &HostMessage) -> Result<(), AgentError> {
        let mut s = self
            .stream
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        write_message(&mut *s, msg).map_err(AgentError::Send)
    }

    /// Send one data frame (stdin for the process).
    pub fn send_frame(&self, kind: FrameKind, payload: &[u8]) -> Result<(), AgentError> {
        let mut s = self
            .stream
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        agent_protocol::write_frame(&mut *s, kind, payload).map_err(AgentError::Send)
    }

    /// Close the connection both ways; wakes a blocked [`AgentReceiver`].
    pub fn shutdown(&self) {
        let s = self
            .stream
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = s.shutdown(Shutdown::Both);
    }
}

/// The read half.
#[derive(Debug)]
pub struct AgentReceiver {
    reader: BufReader<UnixStream>,
}

impl AgentReceiver {
    /// The next thing the guest sent; `Ok(None)` when it closed the connection.
    pub fn recv(&mut self) -> Result<Option<Incoming>, AgentError> {
        let Some(frame) = read_frame(&mut self.reader).map_err(AgentError::Receive)? else {
            return Ok(None);
        };
        match frame.kind {
            FrameKind::Stdout => Ok(Some(Incoming::Output(Stream::Stdout, frame.payload))),
            FrameKind::Stderr => Ok(Some(Incoming::Output(Stream::Stderr, frame.payload))),
            FrameKind::Control => decode_message(&frame)
                .map(|m| Some(Incoming::Message(m)))
                .map_err(AgentError::Receive),
            kind @ (FrameKind::Stdin | FrameKind::Data) => Err(AgentError::UnexpectedFrame(kind)),
        }
    }
}

/// Split a connected agent stream.
pub fn split(stream: UnixStream) -> Result<(AgentSender, AgentReceiver), AgentError> {
    let read = stream.try_clone().map_err(AgentError::Split)?;
    Ok((
        AgentSender {
            stream: Arc::new(Mutex::new(stream)),
        },
        AgentReceiver {
            reader: BufReader::new(read),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_protocol::write_frame;

    #[test]
    fn receives_output_and_messages_and_rejects_stdin() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let (tx, mut rx) = split(a).unwrap();
        write_frame(&mut b, FrameKind::Stdout, b"out").unwrap();
        write_message(
            &mut b,
            &GuestMessage::Exited {
                exit_code: 3,
                signal: None,
            },
        )
        .unwrap();
        write_frame(&mut b, FrameKind::Stdin, b"x").unwrap();
        assert_eq!(
            rx.recv().unwrap(),
            Some(Incoming::Output(Stream::Stdout, b"out".to_vec()))
        );
        assert!(matches!(
            rx.recv().unwrap(),
            Some(Incoming::Message(GuestMessage::Exited { exit_code: 3, .. }))
        ));
        assert!(rx.recv().is_err());
        tx.send(&HostMessage::Shutdown).unwrap();
        let f = read_frame(&mut b).unwrap().unwrap();
        assert_eq!(
            decode_message::<HostMessage>(&f).unwrap(),
            HostMessage::Shutdown
        );
        tx.shutdown();
        assert!(rx.recv().unwrap().is_none());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let (_tx, mut rx) = split(a).unwrap();
        use std::io::Write;
        b.write_all(&[0, 0, 0, 3, 0, b'{', b'x']).unwrap();
        assert!(rx.recv().is_err());
    }
}
