//! The WebSocket framing of Teleport's ALPN connection upgrade (`/webapi/connectionupgrade`,
//! `api/client/alpn_conn_upgrade.go` and `lib/web/conn_upgrade.go`): after the `101`, every
//! write travels as one unfragmented binary frame (the server drops text, continuation and ping
//! frames), client frames are masked, and a ping from the server is answered with a pong.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;

/// The GUID RFC 6455 appends to `Sec-WebSocket-Key` before hashing it into
/// `Sec-WebSocket-Accept`.
pub const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

const OP_CONTINUATION: u8 = 0;
const OP_BINARY: u8 = 2;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;
const OP_PONG: u8 = 10;
/// Largest payload accepted in one frame: far above what a TLS record needs.
const MAX_FRAME: u64 = 1 << 20;

/// One FIN frame. A client masks with the zero key (as Go's client does; the server unmasks
/// whatever the key), so the payload goes out unchanged.
fn frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&[0; 4]);
    }
    out.extend_from_slice(payload);
    out
}

/// Carries bytes between `plain` and the framed stream `ws` until either side ends; `client`
/// says which end of the WebSocket this is (it masks its frames).
pub async fn pump<W, P>(ws: W, plain: P, client: bool) -> std::io::Result<()>
where
    W: AsyncRead + AsyncWrite + Send + 'static,
    P: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut ws_read, ws_write) = tokio::io::split(ws);
    let (mut plain_read, mut plain_write) = tokio::io::split(plain);
    let ws_write = Arc::new(Mutex::new(ws_write));
    let outgoing = {
        let ws_write = ws_write.clone();
        async move {
            let mut buf = vec![0; 16 * 1024];
            loop {
                let n = plain_read.read(&mut buf).await?;
                let mut w = ws_write.lock().await;
                if n == 0 {
                    let _ = w.write_all(&frame(OP_CLOSE, &[], client)).await;
                    let _ = w.flush().await;
                    return Ok(());
                }
                w.write_all(&frame(OP_BINARY, &buf[..n], client)).await?;
                w.flush().await?;
            }
        }
    };
    let incoming = async move {
        loop {
            let mut head = [0; 2];
            match ws_read.read_exact(&mut head).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
            let opcode = head[0] & 0x0f;
            let masked = head[1] & 0x80 != 0;
            let len = match head[1] & 0x7f {
                126 => u64::from(ws_read.read_u16().await?),
                127 => ws_read.read_u64().await?,
                n => u64::from(n),
            };
            if len > MAX_FRAME {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("a WebSocket frame of {len} bytes is over the {MAX_FRAME} allowed"),
                ));
            }
            let mut key = [0; 4];
            if masked {
                ws_read.read_exact(&mut key).await?;
            }
            let mut payload = vec![0; len as usize];
            ws_read.read_exact(&mut payload).await?;
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
            match opcode {
                OP_BINARY | OP_CONTINUATION => plain_write.write_all(&payload).await?,
                OP_CLOSE => break,
                OP_PING => {
                    let mut w = ws_write.lock().await;
                    w.write_all(&frame(OP_PONG, &payload, client)).await?;
                    w.flush().await?;
                }
                // Pongs, and text frames Teleport's server drops as well.
                _ => {}
            }
        }
        plain_write.shutdown().await
    };
    tokio::select! {
        r = outgoing => r,
        r = incoming => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_cross_both_ways_and_pings_get_pongs() {
        let (client_ws, server_ws) = tokio::io::duplex(1 << 16);
        let (client_app, client_plain) = tokio::io::duplex(1 << 16);
        let (server_app, server_plain) = tokio::io::duplex(1 << 16);
        tokio::spawn(pump(client_ws, client_plain, true));
        tokio::spawn(pump(server_ws, server_plain, false));
        let (mut ca, mut sa) = (client_app, server_app);
        let big = vec![7u8; 70_000];
        ca.write_all(&big).await.unwrap();
        let mut got = vec![0; big.len()];
        sa.read_exact(&mut got).await.unwrap();
        assert_eq!(got, big);
        sa.write_all(b"back").await.unwrap();
        let mut back = [0; 4];
        ca.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
    }

    #[tokio::test]
    async fn a_server_ping_is_answered_with_a_masked_pong() {
        let (client_ws, mut server_ws) = tokio::io::duplex(1 << 16);
        let (_app, plain) = tokio::io::duplex(1 << 16);
        tokio::spawn(pump(client_ws, plain, true));
        server_ws
            .write_all(&frame(OP_PING, b"teleport", false))
            .await
            .unwrap();
        let mut got = vec![0; 2 + 4 + 8];
        server_ws.read_exact(&mut got).await.unwrap();
        assert_eq!(got, frame(OP_PONG, b"teleport", true));
    }
}
