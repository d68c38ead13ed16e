//! `bangerd::dns::answer::{decide, servfail}`: a DNS query as the `.vm`
//! zone server receives it (one UDP datagram or one TCP frame).
#![no_main]

use std::net::Ipv4Addr;

use bangerd::dns::answer::{decide, servfail, Decision};
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, RecordType};
use libfuzzer_sys::fuzz_target;

/// Every valid VM name of even length exists.
fn lookup(label: &str) -> Option<Ipv4Addr> {
    assert!(!label.contains('.'), "a VM label has no dot: {label:?}");
    assert!(
        !label.chars().any(|c| c.is_ascii_uppercase()),
        "labels are looked up in lower case: {label:?}"
    );
    (banger_api::validate_vm_name(label).is_ok() && label.len().is_multiple_of(2))
        .then(|| Ipv4Addr::new(172, 30, 0, 2))
}

fuzz_target!(|query: &[u8]| {
    let parsed = Message::from_vec(query).ok();
    for have_upstream in [false, true] {
        match decide(query, &lookup, have_upstream) {
            Decision::Drop => {
                if let Some(m) = &parsed {
                    assert_ne!(
                        m.message_type(),
                        MessageType::Query,
                        "a query that parses is answered, forwarded or refused"
                    );
                }
            }
            Decision::Forward => {
                assert!(have_upstream, "forwarded without an upstream");
                let m = parsed.as_ref().expect("only a parsed query is forwarded");
                assert_eq!(m.op_code(), OpCode::Query);
            }
            Decision::Reply(bytes) => {
                let q = parsed.as_ref().expect("only a parsed query is answered");
                let r = Message::from_vec(&bytes).expect("a reply parses");
                assert_eq!(r.id(), q.id());
                assert_eq!(r.message_type(), MessageType::Response);
                assert_eq!(r.queries(), q.queries());
                for a in r.answers() {
                    assert_eq!(a.record_type(), RecordType::A);
                    assert_eq!(a.data(), &RData::A(A(Ipv4Addr::new(172, 30, 0, 2))));
                }
                assert!(r.answers().len() <= 1);
                if !have_upstream {
                    assert!(!r.recursion_available());
                }
            }
        }
    }
    if let Some(bytes) = servfail(query) {
        let q = parsed.as_ref().expect("servfail only for a parsed query");
        let r = Message::from_vec(&bytes).expect("a SERVFAIL parses");
        assert_eq!(r.id(), q.id());
        assert_eq!(r.response_code(), ResponseCode::ServFail);
    }
});
