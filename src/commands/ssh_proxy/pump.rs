//! The bytes both ways: standard input into `ssh` frames of at most 16 KiB (tbot's senders'
//! `MaxChunkSize`), `ssh` frames out to standard output. Each direction waits for the other end
//! to take what it was given (a full send channel, an unfinished write), so neither buffers
//! more than a few frames. When either direction ends, both are closed, as tbot's
//! `utils.ProxyConn` does: OpenSSH closes the command's input only when it is done with the
//! connection, and once the node is gone there is nothing to send it.

use keybound_proto::teleport::transport::v1::{
    Frame, ProxySshRequest, proxy_ssh_request, proxy_ssh_response,
};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::connect::Stream;

/// The most one frame carries.
pub(super) const MAX_CHUNK: usize = 16 * 1024;

/// How the connection ended.
#[derive(Debug, Eq, PartialEq)]
pub(super) enum Ended {
    /// The input ended (OpenSSH is done) or the output closed (OpenSSH went away).
    Local,
    /// The node closed the connection (the Proxy ended the stream).
    Remote,
    /// The stream failed: the Proxy's message.
    Failed(String),
}

/// Pumps `input` to the stream and the stream to `output` until either ends.
pub(super) async fn pump(
    stream: Stream,
    mut input: impl AsyncRead + Unpin,
    mut output: impl AsyncWrite + Unpin,
) -> Ended {
    let Stream { send, mut receive } = stream;
    let upstream = async move {
        let mut buf = vec![0u8; MAX_CHUNK];
        loop {
            let n = match input.read(&mut buf).await {
                Ok(0) | Err(_) => return Ended::Local,
                Ok(n) => n,
            };
            let frame = ProxySshRequest {
                dial_target: None,
                frame: Some(proxy_ssh_request::Frame::Ssh(Frame {
                    payload: buf[..n].to_vec(),
                })),
            };
            if send.send(frame).await.is_err() {
                return Ended::Remote;
            }
        }
    };
    let downstream = async move {
        loop {
            match receive.message().await {
                Ok(Some(message)) => {
                    // Agent frames come only when the Proxy records sessions itself and asks
                    // for the user's agent, which keybound does not serve: they are dropped,
                    // as tbot's client drops them when it holds no agent.
                    if let Some(proxy_ssh_response::Frame::Ssh(Frame { payload })) = message.frame
                        && (output.write_all(&payload).await.is_err()
                            || output.flush().await.is_err())
                    {
                        return Ended::Local;
                    }
                }
                Ok(None) => return Ended::Remote,
                // A cancelled stream reads as its end (tbot's client: `Canceled` is EOF).
                Err(status) if status.code() == tonic::Code::Cancelled => return Ended::Remote,
                Err(status) => {
                    return Ended::Failed(crate::untrusted::message(status.message()).to_string());
                }
            }
        }
    };
    tokio::select! {
        ended = upstream => ended,
        ended = downstream => ended,
    }
}
