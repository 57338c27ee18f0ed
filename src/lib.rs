//! diskforge: build KubeVirt containerDisk VM images from declarative recipes.
//!
//! The artifact flow is recipe → plan → base → disk stages → finalize → pack → publish.
//! Layers run one way: `cli` and `commands` at the top, then `pipeline`, then the
//! domain modules (`recipe`, `base`, `guest`, `vm`, `oci`, `registry`, `kubevirt`),
//! then the mechanics (`io`, `sys`, `cache`, `progress`, `redact`). `main.rs` only
//! parses arguments and calls [`commands::run`].

pub mod base;
pub mod cache;
pub mod cli;
pub mod commands;
pub mod guest;
pub mod io;
pub mod kubevirt;
pub mod oci;
pub mod pipeline;
pub mod progress;
pub mod provenance;
pub mod recipe;
pub mod redact;
pub mod registry;
pub mod sys;
pub mod vm;
