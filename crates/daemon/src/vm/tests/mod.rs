//! The daemon's core on the fake host (`host::fake`), without VMs or
//! privilege: the fault-injection suite, a guest that never answers, who
//! may see which VM, image versions, images from VMs, lifetimes and
//! create with a repo, templates.

mod bed;
mod callers;
mod copy;
mod faults;
mod fromvm;
mod images;
mod lifetimes;
mod restore;
mod templates;
mod wedge;
