//! The diskforge container image (ci/container/Containerfile), built with buildah from a
//! Debian 12 base made locally with mmdebstrap (no image registry is needed), then used:
//! `diskforge --version`, `diskforge pack` of a disk made with the image's qemu-img (the
//! result checked from outside with skopeo), and a libguestfs appliance launched as a
//! non-root user with no capabilities and no_new_privs, the way the Tekton Task runs it.
//!
//! Slow on a first run (mmdebstrap and the image's package install, several minutes);
//! the base tarball and buildah's layer cache stay under target/tmp between runs.
use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BASE_IMAGE: &str = "localhost/debian:bookworm";
const IMAGE: &str = "localhost/diskforge:test";

/// buildah on a store of this test's own (vfs, no daemon), chroot isolation.
struct Buildah {
    root: PathBuf,
}

impl Buildah {
    fn cmd(&self) -> Command {
        let mut c = Command::new("nice");
        c.args(["-n", "10", "buildah", "--storage-driver", "vfs", "--root"])
            .arg(self.root.join("storage"))
            .arg("--runroot")
            .arg(self.root.join("run"));
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = run(self.cmd().args(args));
        assert!(out.status.success(), "buildah {args:?} failed");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    fn has_image(&self, name: &str) -> bool {
        self.image_id(name).is_some()
    }

    fn image_id(&self, name: &str) -> Option<String> {
        let out = self
            .cmd()
            .args([
                "inspect",
                "--type",
                "image",
                "--format",
                "{{.FromImageID}}",
                name,
            ])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8(out.stdout).unwrap().trim().to_owned())
    }

    /// `buildah run` of a shell command in container `ctr`.
    fn sh(&self, ctr: &str, script: &str) -> Output {
        run(self.cmd().args([
            "run",
            "--isolation",
            "chroot",
            ctr,
            "--",
            "sh",
            "-c",
            script,
        ]))
    }
}

fn run(cmd: &mut Command) -> Output {
    let start = std::time::Instant::now();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let tail = |b: &[u8]| {
        let s = String::from_utf8_lossy(b).into_owned();
        s[s.len().saturating_sub(3000)..].to_owned()
    };
    eprintln!(
        "{cmd:?}: {} in {:.1?}\n{}{}",
        out.status,
        start.elapsed(),
        tail(&out.stdout),
        tail(&out.stderr)
    );
    out
}

/// A Debian 12 minbase root filesystem as a tarball, made once and kept.
fn base_tarball(dir: &Path) -> PathBuf {
    let tar = dir.join("debian-bookworm-minbase.tar");
    if tar.exists() {
        return tar;
    }
    let partial = dir.join("debian-bookworm-minbase.tar.partial");
    let out = run(Command::new("nice")
        .args([
            "-n",
            "10",
            "mmdebstrap",
            "--variant=minbase",
            "--mode=root",
            "--format=tar",
            "--quiet",
            "bookworm",
        ])
        .arg(&partial)
        .arg("http://deb.debian.org/debian"));
    assert!(out.status.success(), "mmdebstrap failed");
    std::fs::rename(&partial, &tar).unwrap();
    tar
}

/// The base image in the store, from the tarball.
fn base_image(b: &Buildah, tar: &Path) {
    if b.has_image(BASE_IMAGE) {
        return;
    }
    let ctr = b.ok(&["from", "scratch"]);
    b.ok(&["add", &ctr, tar.to_str().unwrap(), "/"]);
    b.ok(&["config", "--cmd", "/bin/bash", &ctr]);
    b.ok(&["commit", "--rm", &ctr, BASE_IMAGE]);
}

/// The build context: the Containerfile's only input is the diskforge binary of this
/// test run, stripped of debug information.
fn context(dir: &Path) -> PathBuf {
    let ctx = dir.join("context");
    std::fs::create_dir_all(&ctx).unwrap();
    let bin = ctx.join("diskforge");
    std::fs::copy(env!("CARGO_BIN_EXE_diskforge"), &bin).unwrap();
    assert!(run(Command::new("strip").arg(&bin)).status.success());
    ctx
}

fn container_image_builds_and_runs_diskforge_and_libguestfs_unprivileged() {
    let started = std::time::Instant::now();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("container-image");
    std::fs::create_dir_all(&dir).unwrap();
    let b = Buildah {
        root: dir.join("buildah"),
    };
    // Working containers an earlier, failed run left in this test's own store.
    b.ok(&["rm", "--all"]);
    let tar = base_tarball(&dir);
    base_image(&b, &tar);
    let previous = b.image_id(IMAGE);
    let ctx = context(&dir);
    let containerfile = common::repo_root().join("ci/container/Containerfile");
    let build_arg = format!("BASE={BASE_IMAGE}");
    // On a developer's machine the package layer is kept between runs (--layers). CI
    // starts from nothing: there every step runs in one container committed once, as
    // under vfs each committed layer is a full copy of the tree (1.2 GB).
    let in_ci = common::in_ci();
    let layers = if in_ci { "--layers=false" } else { "--layers" };
    b.ok(&[
        "bud",
        "--isolation",
        "chroot",
        "--pull=never",
        layers,
        "--build-arg",
        &build_arg,
        "-f",
        containerfile.to_str().unwrap(),
        "-t",
        IMAGE,
        ctx.to_str().unwrap(),
    ]);
    eprintln!("image built {:.0?} after the start", started.elapsed());
    // The previous run's image goes once the new one is built on its cached package
    // layer: under vfs every image's top layer is a full copy of its tree (1.2 GB).
    if let Some(old) = previous.filter(|old| Some(old) != b.image_id(IMAGE).as_ref()) {
        b.ok(&["rmi", &old]);
    }

    let ctr = b.ok(&["from", "--pull=never", IMAGE]);
    let out = b.sh(&ctr, "diskforge --version");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("diskforge {}", env!("CARGO_PKG_VERSION"))
    );

    // The image's qemu-img makes a disk; diskforge packs it into an OCI layout.
    let out = b.sh(
        &ctr,
        "set -e; qemu-img create -q -f qcow2 /tmp/d.qcow2 64M; \
         diskforge pack /tmp/d.qcow2 --output oci:/tmp/x:t; \
         diskforge verify oci:/tmp/x:t --size 64M",
    );
    assert!(
        out.status.success(),
        "pack or verify failed in the container"
    );

    // Checked from outside, with skopeo, through the container's root filesystem.
    let mnt = b.ok(&["mount", &ctr]);
    let layout = format!("oci:{mnt}/tmp/x:t");
    let out = run(Command::new("skopeo").args(["inspect", "--config", &layout]));
    assert!(out.status.success());
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 1);
    b.ok(&["umount", &ctr]);

    // libguestfs with the direct backend under TCG as UID 65532, no capabilities at all
    // and no_new_privs: what the Tekton Task's securityContext allows. The kernel for the
    // appliance is the image's own. (force_tcg: this machine's /dev/kvm is unusable.)
    let out = b.sh(
        &ctr,
        "set -e; mkdir -m 1777 -p /var/tmp/unpriv; \
         exec setpriv --reuid=65532 --regid=65532 --clear-groups \
           --inh-caps=-all --ambient-caps=-all --bounding-set=-all --no-new-privs \
           env HOME=/var/tmp/unpriv TMPDIR=/var/tmp/unpriv LIBGUESTFS_BACKEND=direct \
               LIBGUESTFS_BACKEND_SETTINGS=force_tcg \
           sh -c 'grep -E \"^(Uid|CapEff|CapBnd|NoNewPrivs)\" /proc/self/status; \
                  guestfish --ro -a /tmp/d.qcow2 run : list-devices'",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "libguestfs failed unprivileged");
    assert!(stdout.contains("/dev/sda"), "{stdout}");
    assert!(stdout.contains("CapEff:\t0000000000000000"), "{stdout}");
    assert!(stdout.contains("NoNewPrivs:\t1"), "{stdout}");
    assert!(stdout.contains("Uid:\t65532"), "{stdout}");

    b.ok(&["rm", &ctr]);
    eprintln!("container image test took {:.0?}", started.elapsed());
    if in_ci {
        // Gigabytes the rest of the run needs more.
        b.ok(&["rmi", "--all", "--force"]);
        let _ = std::fs::remove_dir_all(&b.root);
    }
}

crate::tests! {
    fn container_image_builds_and_runs_diskforge_and_libguestfs_unprivileged [&["buildah", "mmdebstrap", "strip", "skopeo"]];
}
