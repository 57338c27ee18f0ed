//! diskforge: build KubeVirt containerDisk VM images from declarative recipes.
//!
//! The artifact flow is recipe → plan → base → disk stages → finalize → pack → publish;
//! each arrow is a module below. `main.rs` only parses arguments and calls [`app::run`].

pub mod accel;
pub mod app;
pub mod base;
pub mod build;
pub mod cache;
pub mod cli;
pub mod exec;
pub mod guest;
pub mod interrupt;
pub mod oci;
pub mod plan;
pub mod progress;
pub mod publish;
pub mod qemu_img;
pub mod recipe;
pub mod registry;
pub mod run;
pub mod verify;
