//! The network benchmarks' backend (mesh_bench, overlay_bench): a sink
//! that counts what it receives and answers the count when the client
//! closes its side, and an echo server for round trips.

use std::net::IpAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves a sink on `ip:sink` and an echo on `ip:echo` until the runtime
/// stops.
pub async fn sink_and_echo(ip: IpAddr, sink: u16, echo: u16) -> std::io::Result<()> {
    let sink = tokio::net::TcpListener::bind((ip, sink)).await?;
    let echo = tokio::net::TcpListener::bind((ip, echo)).await?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = sink.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 20];
                let mut total = 0u64;
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                let _ = s.write_all(&total.to_be_bytes()).await;
            });
        }
    });
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(())
}
