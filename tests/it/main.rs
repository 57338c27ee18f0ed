//! diskforge's integration suite: one binary, with the tests of every area as a module.
//!
//! Run it with `cargo test --test it`; filters name the module (`-- registry_push::`).
//! How a test is registered and how missing tools make it ignored: [`harness`].

pub mod common;
pub mod harness;

mod base_acquire;
mod base_signature;
mod browser_ttyd;
mod catalog;
mod ci_examples;
mod cli_promises;
mod container_image;
mod desktop;
mod e2e_demo;
mod e2e_uefi;
mod firmware;
mod fleet;
mod guest_build;
mod host_patch;
mod hostile;
mod hostile_files;
mod index_kubevirt;
mod kubevirt_manifests;
mod layout_zoo;
mod oci_pack;
mod openrc_guest;
mod promote;
mod provenance_sbom;
mod provenance_sign;
mod recipe_validate;
mod registry_push;
mod selinux_guest;
mod suite;
mod way_in;

fn main() {
    let tests = [
        base_acquire::tests(),
        base_signature::tests(),
        browser_ttyd::tests(),
        catalog::tests(),
        ci_examples::tests(),
        cli_promises::tests(),
        container_image::tests(),
        desktop::tests(),
        e2e_demo::tests(),
        e2e_uefi::tests(),
        firmware::tests(),
        fleet::tests(),
        guest_build::tests(),
        hostile::tests(),
        host_patch::tests(),
        hostile_files::tests(),
        index_kubevirt::tests(),
        kubevirt_manifests::tests(),
        layout_zoo::tests(),
        oci_pack::tests(),
        openrc_guest::tests(),
        promote::tests(),
        provenance_sbom::tests(),
        provenance_sign::tests(),
        recipe_validate::tests(),
        registry_push::tests(),
        selinux_guest::tests(),
        suite::tests(),
        way_in::tests(),
    ];
    harness::run(tests.into_iter().flatten().collect())
}
