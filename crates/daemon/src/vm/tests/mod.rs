//! The daemon's core on the fake host (`host::fake`), without VMs or
//! privilege: the fault-injection suite, a guest that never answers, who
//! may see which VM, and image versions.

mod bed;
mod callers;
mod copy;
mod faults;
mod images;
mod wedge;
