//! The daemon's core on the fake host (`host::fake`), without VMs or
//! privilege: the fault-injection suite, a guest that never answers, and
//! who may see which VM.

mod bed;
mod callers;
mod faults;
mod wedge;
