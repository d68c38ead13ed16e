//! The time port: what "now" is for lifetimes (`vm create --ttl`). The
//! daemon reads the system clock; tests move a fake one.

/// Seconds since the Unix epoch.
pub trait Clock: Send + Sync {
    fn now(&self) -> i64;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        crate::store::now()
    }
}
