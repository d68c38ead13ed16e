//! `bangerd::vm::ports::parse_ss`: `ss -H -tulnp` output from a guest into
//! `vm ports` rows.
#![no_main]

use banger_fuzz::text;
use bangerd::vm::ports::parse_ss;
use libfuzzer_sys::fuzz_target;

const HOST: &str = "dev.vm";

fuzz_target!(|data: &[u8]| {
    let out = text(data);
    let rows = parse_ss(out, HOST);
    assert!(rows.len() <= out.lines().count());
    for w in rows.windows(2) {
        assert!(
            (w[0].proto.as_str(), w[0].port) < (w[1].proto.as_str(), w[1].port),
            "rows sorted, one per (proto, port): {rows:?}"
        );
    }
    for r in &rows {
        assert!(r.proto == "tcp" || r.proto == "udp", "{r:?}");
        assert_eq!(r.endpoint, format!("{HOST}:{}", r.port));
        assert!(!r.process.contains('"'), "{r:?}");
        assert!(out.contains(&r.proto));
    }
    // A socket bound to loopback only changes nothing.
    let port = rows.first().map_or(22, |r| r.port);
    let more = format!("{out}\ntcp LISTEN 0 128 127.0.0.1:{port} 0.0.0.0:* users:((\"x\",pid=1,fd=3))\nudp UNCONN 0 0 [::1]:{port} [::]:*\n");
    assert_eq!(
        parse_ss(&more, HOST),
        rows,
        "loopback listeners are skipped"
    );
});
