//! Booting the way KubeVirt boots the common Fedora and RHEL-family preferences: UEFI
//! with Secure Boot (OVMF's Secure Boot build, Microsoft's keys enrolled, q35 with SMM),
//! a cloudInitNoCloud seed, and the guest agent asked for the OS as
//! kubevirt/containerdisks does before promoting an image.
//!
//! The demo recipe on diskforge's own UEFI base (debian-12-minimal-uefi: GPT, BIOS boot
//! partition, ESP with Debian's signed shim and GRUB; built once under
//! target/uefi-cache), with cloud-init and the guest agent from Debian's packages, is
//! built, its boot layout verified for every firmware it claims, and booted once with
//! `run --check --user-data`: Secure Boot enabled in the guest, cloud-init ran the
//! user-data from the NoCloud seed, the agent reports Debian 12. The same disk with an
//! unsigned loader on the ESP is refused by the firmware under Secure Boot, and boots
//! Linux under plain UEFI.
use crate::common;
use common::Run;

use crate::harness::{Need, SYSTEM_SETUP};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::browser::BackgroundRun;

/// Beside [`common::GUEST_TOOLS`].
const TOOLS: &[&str] = &["qemu-system-x86_64", "skopeo", "tar"];
const PASSWORD: &str = "Uefi-Lab-Pass-3318";
/// The password the user-data gives its user, from the environment.
const CLOUDY_PASSWORD: &str = "Cloudy-Seed-Pass-5521";
const OVMF: &[&str] = &[
    "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
    "/usr/share/OVMF/OVMF_VARS_4M.ms.fd",
];

fn ok(out: &Output, what: &str) -> String {
    common::ok_without(out, what, &[PASSWORD, CLOUDY_PASSWORD])
}

fn diskforge(cache: &Path) -> Command {
    let mut c = common::diskforge_cached(cache);
    c.args(["--accel", "tcg"])
        .env("DISKFORGE_LAB_PASSWORD", PASSWORD)
        .env("DISKFORGE_CLOUDY_PASSWORD", CLOUDY_PASSWORD);
    c
}

/// cloud-config as a cluster user would give it: a user, its password from the
/// environment, a command whose trace the test reads back.
const USER_DATA: &str = "#cloud-config
users:
  - default
  - name: cloudy
    shell: /bin/bash
    lock_passwd: false
chpasswd:
  expire: false
  users:
    - {name: cloudy, password: \"${env:DISKFORGE_CLOUDY_PASSWORD}\", type: text}
runcmd:
  - echo user-data-applied > /var/tmp/cloud-init-marker
";

/// OVMF's Secure Boot images (Debian package `ovmf`): needed like a tool.
fn ovmf() -> Need {
    Need::check(format!("OVMF {}", OVMF.join(" ")), SYSTEM_SETUP, || {
        OVMF.iter().all(|p| Path::new(p).is_file())
    })
}

/// The disk file of the layout's image `tag` (its one layer unpacked with tar).
fn disk_of(layout: &Path, tag: &str, into: &Path) -> PathBuf {
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    // The image's manifest, not the SBOM and provenance the layout also indexes.
    let image = idx["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no manifest tagged {tag} in {idx}"));
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(image["digest"].as_str().unwrap())).unwrap())
            .unwrap();
    std::fs::create_dir_all(into).unwrap();
    Command::new("tar")
        .arg("-xf")
        .arg(blob(m["layers"][0]["digest"].as_str().unwrap()))
        .arg("-C")
        .arg(into)
        .succeeds();
    into.join("disk/disk.qcow2")
}

/// The path `run` prints for its serial console log.
fn serial_log(stderr: &str) -> Option<PathBuf> {
    stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("serial console log: "))
        .map(PathBuf::from)
}

fn secure_boot_boots_the_signed_chain_and_refuses_an_unsigned_loader() {
    let root = common::repo_root();
    // The built base is cached across runs under target/ (one UEFI base for every test).
    let cache = root.join("target/uefi-cache");
    let t = tempfile::tempdir().unwrap();
    let demo = std::fs::read_to_string(root.join("recipes/demo.yaml")).unwrap();
    // The demo with cloud-init and the guest agent instead of tmux and htop.
    let recipe_text =
        demo.replace(
            "  catalog: debian-12-minimal\n",
            "  catalog: debian-12-minimal-uefi\n",
        )
        .replace(
            "  packages: [tmux, htop]\n",
            "  packages: [cloud-init]\n  guest-agent: true\n",
        ) + "boot:\n  firmware: uefi-secure-boot\n";
    assert!(recipe_text.contains("guest-agent: true"));
    assert_ne!(recipe_text, demo);
    let recipe = t.path().join("demo-uefi.yaml");
    std::fs::write(&recipe, &recipe_text).unwrap();
    let layout = t.path().join("layout");
    let image = format!("oci:{}:uefi", layout.display());

    // 1. Build the demo on the UEFI base: the image records its firmware.
    let started = Instant::now();
    let out = diskforge(&cache)
        .arg("build")
        .arg(&recipe)
        .args(["--output", &image])
        .output()
        .unwrap();
    ok(&out, "diskforge build");
    eprintln!("build: {:?}", started.elapsed());
    let config = ok(
        &Command::new("skopeo")
            .args(["inspect", "--config", &image])
            .output()
            .unwrap(),
        "skopeo inspect --config",
    );
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(
        config["config"]["Labels"]["io.diskforge.firmware"], "uefi-secure-boot",
        "{config}"
    );

    // 2. The disk has what each firmware the catalog claims needs: an ESP with a shim
    //    for Secure Boot, GRUB's boot code for BIOS.
    for (firmware, want) in [
        ("uefi-secure-boot", "shim: yes"),
        ("bios", "MBR boot code: yes"),
    ] {
        let out = diskforge(&cache)
            .args(["verify", "--firmware", firmware, &image])
            .output()
            .unwrap();
        let report = ok(&out, &format!("diskforge verify --firmware {firmware}"));
        assert!(
            report.contains(&format!("boots with {firmware}"))
                && report.contains(want)
                && report.contains("efi/boot/bootx64.efi"),
            "{report}"
        );
    }

    // 3. Boot it with the firmware its label names (Secure Boot) and the user-data on a
    //    NoCloud seed; log in over ttyd and ask the guest: booted through UEFI, Secure
    //    Boot enforced, cloud-init applied the user-data; the agent answers.
    let user_data = t.path().join("user-data.yaml");
    std::fs::write(&user_data, USER_DATA).unwrap();
    let started = Instant::now();
    let out = diskforge(&cache)
        .args(["run", "--check", "--timeout", "1200", "--memory", "1024"])
        .arg(&image)
        .arg("--user-data")
        .arg(&user_data)
        .args(["--login", &format!("lab:{PASSWORD}")])
        .args([
            "--command",
            "test -d /sys/firmware/efi && echo booted-by-uefi; mokutil --sb-state; for i in $(seq 150); do [ -e /var/tmp/cloud-init-marker ] && break; sleep 2; done; cat /var/tmp/cloud-init-marker; id -un cloudy; echo diskforge-$((6*7))",
        ])
        .output()
        .unwrap();
    let report = ok(&out, "diskforge run --check (Secure Boot)");
    eprintln!("Secure Boot boot and check: {:?}", started.elapsed());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("firmware: uefi-secure-boot"), "{stderr}");
    for want in [
        "booted-by-uefi",
        "SecureBoot enabled",
        "user-data-applied",
        "cloudy",
        "diskforge-42",
        "cloud-init ran: Cloud-init v. ",
        "DataSourceNoCloud",
        "guest agent: answers guest-ping; guest-get-osinfo: Debian GNU/Linux 12",
    ] {
        assert!(report.contains(want), "{want} not in:\n{report}");
    }

    // 4. The same disk with an unsigned loader (the guest's own unsigned GRUB) as
    //    EFI/BOOT/BOOTX64.EFI: the firmware refuses to start it, Linux never runs.
    // The unpacked copy itself: `run` refuses a disk with a backing file.
    let unsigned = disk_of(&layout, "uefi", &t.path().join("unpacked"));
    common::guest::fish(
        &["-a", unsigned.to_str().unwrap()],
        "run\nmount /dev/sda3 /\nmount /dev/sda2 /boot/efi\ncp /usr/lib/grub/x86_64-efi/monolithic/grubx64.efi /boot/efi/EFI/BOOT/BOOTX64.EFI\numount-all\n",
    );
    // Boots `disk` with `firmware` until the serial console shows `until`; the console.
    let watch = |firmware: &str, until: &str| -> String {
        let started = Instant::now();
        let mut run = diskforge(&cache);
        run.args(["run", "--ttyd-port", "0", "--memory", "1024"])
            .args(["--firmware", firmware])
            .arg(&unsigned);
        let mut vm = BackgroundRun::start(run);
        let mut log_text = String::new();
        while started.elapsed() < Duration::from_secs(600) {
            assert!(vm.running(), "diskforge run exited:\n{}", vm.stderr());
            if let Some(log) = serial_log(&vm.stderr()) {
                // GRUB draws its menu in bytes that are not UTF-8.
                log_text =
                    String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
                if log_text.contains(until) {
                    break;
                }
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        let (_, stderr) = vm.stop();
        eprintln!("{firmware}: {until:?} after {:?}", started.elapsed());
        assert!(
            log_text.contains(until),
            "{firmware}: no {until:?} on the console:\n{log_text}\n{stderr}"
        );
        log_text
    };
    let refused = watch("uefi-secure-boot", "Access Denied");
    assert!(!refused.contains("Linux version"), "{refused}");

    // 5. The same disk with plain UEFI (OVMF without Secure Boot, as KubeVirt's
    //    `efi: {secureBoot: false}`): the unsigned GRUB starts and Linux boots, so the
    //    refusal above was Secure Boot's, and plain `uefi` boots for real.
    let booted = watch("uefi", "Linux version");
    assert!(!booted.contains("Access Denied"), "{booted}");
    // OVMF's boot manager started the loader.
    assert!(booted.contains("BdsDxe"), "{booted}");

    // 6. And with BIOS, which the catalog entry also claims: GRUB's BIOS boot code in
    //    the MBR and the BIOS boot partition start the same kernel.
    let bios = watch("bios", "Linux version");
    // SeaBIOS, not OVMF, started it (GRUB's BIOS menu draws on the VGA console only).
    assert!(!bios.contains("BdsDxe"), "{bios}");
}

crate::tests! {
    fn secure_boot_boots_the_signed_chain_and_refuses_an_unsigned_loader [common::GUEST_TOOLS, TOOLS, ovmf()];
}
