//! What to do with one DNS query: answer it from the `.vm` zone, forward
//! it, or refuse it. Pure, so it is tested without sockets.

use std::net::Ipv4Addr;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};

/// Answers last a few seconds: a deleted VM disappears quickly.
pub const TTL: u32 = 5;

/// Looks a VM name up.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<Ipv4Addr>;

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Reply(Vec<u8>),
    Forward,
    /// Not a DNS query at all.
    Drop,
}

/// The VM label of `name` if it is in the `.vm` zone (`dev.vm.` -> `dev`).
/// `Some(None)` is a `.vm` name that cannot be a VM (e.g. `a.b.vm`).
fn vm_label(name: &str) -> Option<Option<String>> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name == "vm" {
        return Some(None);
    }
    let label = name.strip_suffix(".vm")?;
    Some((!label.contains('.')).then(|| label.to_string()))
}

pub fn decide(query: &[u8], lookup: Lookup<'_>, have_upstream: bool) -> Decision {
    let Ok(msg) = Message::from_vec(query) else {
        return Decision::Drop;
    };
    if msg.message_type() != MessageType::Query {
        return Decision::Drop;
    }
    let mut reply = Message::new();
    reply
        .set_id(msg.id())
        .set_message_type(MessageType::Response)
        .set_op_code(msg.op_code())
        .set_recursion_desired(msg.recursion_desired())
        .set_recursion_available(have_upstream);
    reply.add_queries(msg.queries().to_vec());
    let Some(q) = msg
        .queries()
        .first()
        .filter(|_| msg.op_code() == OpCode::Query)
    else {
        reply.set_response_code(ResponseCode::NotImp);
        return encode(reply);
    };
    match vm_label(&q.name().to_ascii()) {
        Some(label) => {
            reply.set_authoritative(true);
            match label.and_then(|l| lookup(&l)) {
                Some(ip) => {
                    if matches!(q.query_type(), RecordType::A | RecordType::ANY) {
                        reply.add_answer(Record::from_rdata(
                            q.name().clone(),
                            TTL,
                            RData::A(A(ip)),
                        ));
                    }
                    reply.set_response_code(ResponseCode::NoError);
                }
                None => {
                    reply.set_response_code(ResponseCode::NXDomain);
                }
            }
            encode(reply)
        }
        None if have_upstream => Decision::Forward,
        None => {
            reply.set_response_code(ResponseCode::Refused);
            encode(reply)
        }
    }
}

fn encode(msg: Message) -> Decision {
    msg.to_vec().map(Decision::Reply).unwrap_or(Decision::Drop)
}

/// A SERVFAIL for `query` (every upstream failed).
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    let mut reply = Message::new();
    reply
        .set_id(msg.id())
        .set_message_type(MessageType::Response)
        .set_op_code(msg.op_code())
        .set_response_code(ResponseCode::ServFail);
    reply.add_queries(msg.queries().to_vec());
    reply.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(4242)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    fn lookup(name: &str) -> Option<Ipv4Addr> {
        (name == "dev").then(|| Ipv4Addr::new(172, 30, 0, 2))
    }

    fn reply(d: Decision) -> Message {
        match d {
            Decision::Reply(b) => Message::from_vec(&b).unwrap(),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn known_vm_gets_its_address() {
        let r = reply(decide(&query("dev.vm.", RecordType::A), &lookup, true));
        assert_eq!(r.id(), 4242);
        assert_eq!(r.response_code(), ResponseCode::NoError);
        assert!(r.authoritative());
        assert_eq!(r.answers().len(), 1);
        assert_eq!(
            r.answers()[0].data(),
            &RData::A(A(Ipv4Addr::new(172, 30, 0, 2)))
        );
        let r = reply(decide(&query("DEV.VM", RecordType::A), &lookup, true));
        assert_eq!(r.answers().len(), 1, "names are case-insensitive");
    }

    #[test]
    fn known_vm_has_no_aaaa_and_unknown_vm_is_nxdomain() {
        let r = reply(decide(&query("dev.vm.", RecordType::AAAA), &lookup, false));
        assert_eq!(
            (r.response_code(), r.answers().len()),
            (ResponseCode::NoError, 0)
        );
        for name in ["nope.vm.", "a.dev.vm.", "vm."] {
            let r = reply(decide(&query(name, RecordType::A), &lookup, true));
            assert_eq!(r.response_code(), ResponseCode::NXDomain, "{name}");
        }
    }

    #[test]
    fn other_names_are_forwarded_or_refused() {
        assert_eq!(
            decide(&query("example.org.", RecordType::A), &lookup, true),
            Decision::Forward
        );
        let r = reply(decide(
            &query("example.org.", RecordType::A),
            &lookup,
            false,
        ));
        assert_eq!(r.response_code(), ResponseCode::Refused);
        assert_eq!(decide(b"garbage", &lookup, true), Decision::Drop);
        let sf =
            Message::from_vec(&servfail(&query("example.org.", RecordType::A)).unwrap()).unwrap();
        assert_eq!(sf.response_code(), ResponseCode::ServFail);
    }
}
