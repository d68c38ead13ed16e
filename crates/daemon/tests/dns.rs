//! The `.vm` DNS server over real sockets on loopback: zone answers over
//! UDP and TCP, forwarding to an upstream (a fake one, also on loopback),
//! and REFUSED without one. No privilege needed.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bangerd::dns;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

fn query(name: &str) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(7)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

async fn free_port() -> u16 {
    // Free for both UDP and TCP at the moment of asking.
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A fake upstream that answers every A query with 192.0.2.7.
async fn fake_upstream() -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 512];
        while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
            let q = Message::from_vec(&buf[..n]).unwrap();
            let mut r = Message::new();
            r.set_id(q.id())
                .set_message_type(MessageType::Response)
                .set_op_code(OpCode::Query);
            r.add_queries(q.queries().to_vec());
            let name = q.queries()[0].name().clone();
            r.add_answer(Record::from_rdata(
                name,
                60,
                RData::A(A(Ipv4Addr::new(192, 0, 2, 7))),
            ));
            sock.send_to(&r.to_vec().unwrap(), peer).await.unwrap();
        }
    });
    addr
}

async fn start(upstreams: Vec<SocketAddr>) -> SocketAddr {
    let addr: SocketAddr = ("127.0.0.1".parse::<Ipv4Addr>().unwrap(), free_port().await).into();
    let resolve: dns::Resolver =
        Arc::new(|name: &str| (name == "dev").then(|| Ipv4Addr::new(172, 30, 0, 2)));
    let handle = dns::serve(addr, resolve, upstreams).await.unwrap();
    std::mem::forget(handle); // lives for the test
    addr
}

async fn ask_udp(server: SocketAddr, name: &str) -> Message {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&query(name), server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    Message::from_vec(&buf[..n]).unwrap()
}

fn first_a(m: &Message) -> Option<Ipv4Addr> {
    m.answers().iter().find_map(|r| match r.data() {
        RData::A(a) => Some(a.0),
        _ => None,
    })
}

#[tokio::test]
async fn zone_answers_and_forwards_over_udp() {
    let server = start(vec![fake_upstream().await]).await;
    let r = ask_udp(server, "dev.vm.").await;
    assert_eq!(
        (r.response_code(), first_a(&r)),
        (ResponseCode::NoError, Some(Ipv4Addr::new(172, 30, 0, 2)))
    );
    let r = ask_udp(server, "gone.vm.").await;
    assert_eq!(r.response_code(), ResponseCode::NXDomain);
    let r = ask_udp(server, "example.org.").await;
    assert_eq!(
        first_a(&r),
        Some(Ipv4Addr::new(192, 0, 2, 7)),
        "not forwarded upstream"
    );
    assert_eq!(r.id(), 7);
}

#[tokio::test]
async fn tcp_queries_are_answered() {
    let server = start(vec![]).await;
    let mut s = TcpStream::connect(server).await.unwrap();
    for _ in 0..2 {
        let q = query("dev.vm.");
        s.write_u16(q.len() as u16).await.unwrap();
        s.write_all(&q).await.unwrap();
        let len = s.read_u16().await.unwrap();
        let mut buf = vec![0u8; len as usize];
        s.read_exact(&mut buf).await.unwrap();
        let r = Message::from_vec(&buf).unwrap();
        assert_eq!(first_a(&r), Some(Ipv4Addr::new(172, 30, 0, 2)));
    }
}

#[tokio::test]
async fn without_upstream_other_names_are_refused_and_dead_upstreams_servfail() {
    let server = start(vec![]).await;
    assert_eq!(
        ask_udp(server, "example.org.").await.response_code(),
        ResponseCode::Refused
    );
    // An upstream that never answers (a bound socket nobody reads).
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server = start(vec![silent.local_addr().unwrap()]).await;
    assert_eq!(
        ask_udp(server, "example.org.").await.response_code(),
        ResponseCode::ServFail
    );
}

#[tokio::test]
async fn idle_tcp_clients_cannot_hold_the_server() {
    let server = start(vec![]).await;
    // More idle connections than the server serves at once.
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(TcpStream::connect(server).await.unwrap());
    }
    // Each is closed once idle too long, and a real query then gets through.
    let mut first = idle.remove(0);
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(15), first.read(&mut byte)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "an idle connection was kept: {closed:?}"
    );
    let answered = tokio::time::timeout(Duration::from_secs(20), async {
        let mut s = TcpStream::connect(server).await.unwrap();
        let q = query("dev.vm.");
        s.write_u16(q.len() as u16).await.unwrap();
        s.write_all(&q).await.unwrap();
        s.read_u16().await.is_ok()
    })
    .await;
    assert_eq!(
        answered.ok(),
        Some(true),
        "a query behind idle clients was not answered"
    );
    assert_eq!(
        first_a(&ask_udp(server, "dev.vm.").await),
        Some(Ipv4Addr::new(172, 30, 0, 2))
    );
}
