//! The host system: the one door for external commands, signals, qemu-img and the
//! accelerator probe. Everything else reaches the outside world through here.

pub mod accel;
pub mod exec;
pub mod file;
pub mod interrupt;
pub mod qemu_img;
pub mod rt;
