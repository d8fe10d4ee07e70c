//! A client that stops reading is released within seconds, whatever the pace of the
//! room: the gateway never keeps a connection it cannot write to. (Its own test binary,
//! so the process-wide connection gauge counts only this test's sockets.)

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use huddle_e2e::{eventually, sign_up, Stack, StackOptions, Ws};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Opens a room socket by hand on a TCP socket with a tiny receive buffer, reads the
/// 101 response and nothing after it.
async fn silent_socket(addr: std::net::SocketAddr, room: &str, token: &str) -> Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut stream = socket.connect(addr).await?;
    let request = format!(
        "GET /ws/rooms/{room}?token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await?);
    }
    let head = String::from_utf8_lossy(&head);
    if !head.starts_with("HTTP/1.1 101") {
        bail!("upgrade refused: {head}");
    }
    Ok(stream)
}

async fn open_connections(base: &str) -> Result<i64> {
    Ok(huddle_e2e::metric(base, "huddle_gateway_connections").await? as i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_never_reads_is_released_within_seconds_at_a_steady_pace() -> Result<()> {
    let stack = Stack::start_with(StackOptions {
        gateways: 1,
        gateway_args: &["--write-timeout-ms", "2000"],
        ..Default::default()
    })
    .await?;
    let base = stack.url(0);
    let (ada, bob) = (sign_up(&base, "ada").await?, sign_up(&base, "bob").await?);
    let mut silent = silent_socket(stack.gateways[0].addr(), "flooded", &bob.token).await?;
    let mut sender = Ws::join(&base, "flooded", &ada.token, "").await?;
    sender.expect("history").await?;
    assert_eq!(open_connections(&stack.ops_url(0)).await?, 2);

    // ~5.9 MB: more than the kernel buffers take, less than the 1,024-frame queue would
    // need to overflow, so only a write deadline can notice that the socket is stuck.
    let body = "x".repeat(3900);
    for i in 1..=1500u64 {
        assert_eq!(sender.say(&body, &format!("s{i}")).await?, i);
        assert_eq!(sender.expect("message").await?["seq"], i);
    }
    let flooded = Instant::now();
    eventually(Duration::from_secs(15), || async {
        Ok((open_connections(&stack.ops_url(0)).await? == 1).then_some(()))
    })
    .await
    .context("the gateway still holds the silent connection")?;
    eprintln!("silent socket released {:?} after the flood", flooded.elapsed());

    // Its TCP connection is gone too: reading now reaches the end (or a reset) at once,
    // instead of the rest of the flood followed by an open connection.
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match silent.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the silent socket's TCP connection is still open");

    // The room keeps working for the reader that reads.
    assert_eq!(sender.say("still going", "after").await?, 1501);
    sender.leave().await?;
    stack.shutdown().await
}
