//! The `.vm` zone server: answers `NAME.vm` A queries on the bridge address
//! for VMs that exist, NXDOMAIN for other `.vm` names, and forwards every
//! other name to the host's upstream resolvers (REFUSED when there is none).
//! UDP and TCP, port 53 by default.

pub mod answer;
pub mod resolved;
pub mod upstream;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

pub use answer::{Decision, Lookup};

/// TCP connections served at once; more wait in the kernel's backlog.
const MAX_TCP: usize = 32;
/// Queries in flight at once (answers and forwards); more are dropped, as
/// a busy resolver drops them, and the client retries.
const MAX_IN_FLIGHT: usize = 128;
/// How long a TCP client may take to send a query, or sit idle between two.
const TCP_IDLE: Duration = Duration::from_secs(5);

/// Looks VM names up (the store, in the daemon).
pub type Resolver = Arc<dyn Fn(&str) -> Option<Ipv4Addr> + Send + Sync>;

/// Binds UDP and TCP on `addr` and serves until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    resolve: Resolver,
    upstreams: Vec<SocketAddr>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let udp = Arc::new(UdpSocket::bind(addr).await?);
    let tcp = TcpListener::bind(addr).await?;
    let upstreams = Arc::new(upstreams);
    tracing::info!(%addr, upstreams = ?upstreams, "DNS for .vm ready");
    Ok(tokio::spawn(async move {
        let udp_task = tokio::spawn(serve_udp(udp, resolve.clone(), upstreams.clone()));
        let tcp_task = tokio::spawn(serve_tcp(tcp, resolve, upstreams));
        let _ = tokio::join!(udp_task, tcp_task);
    }))
}

async fn serve_udp(sock: Arc<UdpSocket>, resolve: Resolver, upstreams: Arc<Vec<SocketAddr>>) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
            // Out of descriptors or memory: do not spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            continue; // too many at once: dropped, the client retries
        };
        let query = buf[..n].to_vec();
        let (sock, resolve, upstreams) = (sock.clone(), resolve.clone(), upstreams.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(reply) = respond(&query, &resolve, &upstreams).await {
                let _ = sock.send_to(&reply, peer).await;
            }
        });
    }
}

async fn serve_tcp(listener: TcpListener, resolve: Resolver, upstreams: Arc<Vec<SocketAddr>>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_TCP));
    loop {
        // A slot first: beyond MAX_TCP, clients wait in the backlog.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (resolve, upstreams) = (resolve.clone(), upstreams.clone());
        tokio::spawn(async move {
            let _slot = slot;
            loop {
                let Ok(Ok(len)) = tokio::time::timeout(TCP_IDLE, stream.read_u16()).await else {
                    return;
                };
                let mut query = vec![0u8; usize::from(len)];
                let read = tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query)).await;
                if !matches!(read, Ok(Ok(_))) {
                    return;
                }
                let Some(reply) = respond(&query, &resolve, &upstreams).await else {
                    return;
                };
                let Ok(len) = u16::try_from(reply.len()) else {
                    return;
                };
                if stream.write_u16(len).await.is_err() || stream.write_all(&reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn respond(query: &[u8], resolve: &Resolver, upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    let lookup = |name: &str| resolve(name);
    match answer::decide(query, &lookup, !upstreams.is_empty()) {
        Decision::Reply(bytes) => Some(bytes),
        Decision::Drop => None,
        Decision::Forward => match forward(query, upstreams).await {
            Some(reply) => Some(reply),
            None => answer::servfail(query),
        },
    }
}

/// Sends the query to each upstream in turn; the first answer wins.
async fn forward(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for up in upstreams {
        let bind: SocketAddr = if up.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let Ok(sock) = UdpSocket::bind(bind).await else {
            continue;
        };
        if sock.send_to(query, up).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok((n, from))) =
            tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf)).await
        {
            if from == *up && n >= 2 && buf[..2] == query[..2] {
                return Some(buf[..n].to_vec());
            }
        }
    }
    None
}
